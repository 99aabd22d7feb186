import pytest
import torch
from torch import nn

from torchsparse.models.bevfusion.decoder import SECOND, SECONDFPN, ConvFuser
from torchsparse.testing.bevfusion import official_dump, official_keys

DUMP = official_dump()


def _shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize(
    "prefix, build", [("fuser", ConvFuser), ("decoder.backbone", SECOND), ("decoder.neck", SECONDFPN)]
)
def test_keys_shapes_and_order_equal_the_release(prefix, build):
    model = build()
    assert _shapes(model) == official_keys(prefix + ".")
    params = sum(p.numel() for p in model.parameters())
    assert params == DUMP["prefix_param_counts"][prefix]
    state = {k: torch.randn(v) if v else torch.tensor(7) for k, v in official_keys(prefix + ".")}
    model.load_state_dict(state, strict=True)


def test_norms_and_layer_types_follow_the_config():
    fuser, backbone, neck = ConvFuser(), SECOND(), SECONDFPN()
    assert (fuser[1].eps, fuser[1].momentum) == (1e-5, 0.1)  # plain nn.BatchNorm2d in fusers/conv.py
    for module in [*backbone.modules(), *neck.modules()]:
        if isinstance(module, nn.BatchNorm2d):
            assert (module.eps, module.momentum) == (1e-3, 0.01)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            assert module.bias is None
    assert isinstance(neck.deblocks[1][0], nn.ConvTranspose2d)  # weight (in, out, kH, kW) = (256, 256, 2, 2)
    assert type(neck.deblocks[0][0]) is nn.Conv2d and neck.deblocks[0][0].kernel_size == (1, 1)
    assert [backbone.blocks[i][0].stride for i in range(2)] == [(1, 1), (2, 2)]


@torch.no_grad()
def test_output_shapes():
    fuser, backbone, neck = ConvFuser().eval(), SECOND().eval(), SECONDFPN().eval()
    camera, lidar = torch.randn(1, 80, 180, 180), torch.randn(1, 256, 180, 180)
    fused = fuser([camera, lidar])
    assert fused.shape == (1, 256, 180, 180)
    levels = backbone(fused)
    assert [tuple(x.shape) for x in levels] == [(1, 128, 180, 180), (1, 256, 90, 90)]
    out = neck(levels)
    assert out.shape == (1, 512, 180, 180)
    assert bool(torch.isfinite(out).all()) and bool((out >= 0).all())  # ends in ReLU


def test_fuser_rejects_inputs_in_the_wrong_order():
    with pytest.raises(ValueError, match="inputs"):
        ConvFuser()([torch.randn(1, 256, 8, 8), torch.randn(1, 80, 8, 8)])
