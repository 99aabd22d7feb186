import pytest
import torch
from torch.nn import functional as F

from torchsparse.models.bevfusion.seg import (
    MAP_CLASSES,
    BEVGridTransform,
    BEVSegmentationHead,
    sigmoid_focal_loss,
)


def test_grid_transform_resamples_the_bev_map_onto_the_label_grid():
    transform = BEVGridTransform()  # configs/nuscenes/seg/default.yaml: +-51.2 m at 0.8 -> +-50 m at 0.5
    out = transform(torch.randn(2, 5, 128, 128))
    assert out.shape == (2, 5, 200, 200)
    # A map that is a linear function of the metric position keeps it at the output cell centres (bilinear
    # interpolation is exact on linear functions inside the input's sample range).
    centres = torch.arange(128) * 0.8 - 51.2 + 0.4
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    out = transform(torch.stack([x, y])[None])
    expected = torch.arange(200) * 0.5 - 50 + 0.25
    torch.testing.assert_close(out[0, 0], expected[:, None].expand(200, 200), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 1], expected[None, :].expand(200, 200), atol=1e-4, rtol=0)


def test_grid_transform_prescale_and_other_scopes():
    transform = BEVGridTransform(
        input_scope=[[-54.0, 54.0, 0.6], [-54.0, 54.0, 0.6]],
        output_scope=[[-50, 50, 0.5], [-25, 25, 0.25]],
        prescale_factor=2,
    )
    assert transform(torch.randn(1, 3, 180, 180)).shape == (1, 3, 200, 200)
    with pytest.raises(ValueError, match="x must be"):
        transform(torch.randn(3, 180, 180))


@pytest.mark.parametrize("in_channels, size", [(256, 128), (512, 180)])
def test_segmentation_head_shapes_and_keys(in_channels, size):
    head = BEVSegmentationHead(in_channels=in_channels, classes=MAP_CLASSES, loss="focal")
    assert MAP_CLASSES == ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == [
        ("classifier.0.weight", (in_channels, in_channels, 3, 3)),
        ("classifier.1.weight", (in_channels,)),
        ("classifier.1.bias", (in_channels,)),
        ("classifier.1.running_mean", (in_channels,)),
        ("classifier.1.running_var", (in_channels,)),
        ("classifier.1.num_batches_tracked", ()),
        ("classifier.3.weight", (in_channels, in_channels, 3, 3)),
        ("classifier.4.weight", (in_channels,)),
        ("classifier.4.bias", (in_channels,)),
        ("classifier.4.running_mean", (in_channels,)),
        ("classifier.4.running_var", (in_channels,)),
        ("classifier.4.num_batches_tracked", ()),
        ("classifier.6.weight", (6, in_channels, 1, 1)),
        ("classifier.6.bias", (6,)),
    ]
    x = torch.randn(1, in_channels, size, size)
    with torch.no_grad():
        probs = head.eval()([x])  # a neck's list of outputs: the first is used
    assert probs.shape == (1, 6, 200, 200) and ((probs > 0) & (probs < 1)).all()


def test_segmentation_head_training_returns_one_loss_per_class():
    torch.manual_seed(0)
    head = BEVSegmentationHead(in_channels=16, loss="focal").train()
    x = torch.randn(2, 16, 128, 128)
    target = (torch.rand(2, 6, 200, 200) > 0.7).float()
    losses = head(x, target)
    assert list(losses) == [f"{name}/focal" for name in MAP_CLASSES]
    assert all(v.dim() == 0 and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert head.classifier[0].weight.grad is not None
    with pytest.raises(ValueError, match="target"):
        head(x)
    xent = BEVSegmentationHead(in_channels=16, loss="xent").train()
    assert list(xent(x, target)) == [f"{name}/xent" for name in MAP_CLASSES]


def test_focal_loss_reduces_to_weighted_cross_entropy():
    logits, targets = torch.randn(50), (torch.rand(50) > 0.5).float()
    p_t = torch.where(targets > 0, torch.sigmoid(logits), 1 - torch.sigmoid(logits))
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, gamma=0), ce.mean())
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="none"), ce * (1 - p_t) ** 2)
    alpha_t = torch.where(targets > 0, 0.25, 0.75)
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, alpha=0.25, reduction="sum"),
        (alpha_t * ce * (1 - p_t) ** 2).sum(),
    )
