import numpy as np
import pytest
import torch
from torch import nn

from torchsparse import SparseTensor
from torchsparse.models.bevfusion.lidar import (
    SparseBasicBlock,
    SparseEncoder,
    SpconvLayoutConv3d,
    from_spconv_layout,
    to_spconv_layout,
)
from torchsparse.testing import lidar_scan
from torchsparse.testing.benchmark import to_spconv_weight
from torchsparse.testing.bevfusion import official_dump, official_keys, random_official_state_dict
from torchsparse.testing.references import kernel_indices

PREFIX = "encoders.lidar.backbone."
DUMP = official_dump()
REFERENCE = official_keys(PREFIX)
# BEVFusion's voxelization: point cloud range [-54, -54, -5, 54, 54, 3], voxel [0.075, 0.075, 0.2].
RANGE_LOW, VOXEL = np.array([-54.0, -54.0, -5.0]), np.array([0.075, 0.075, 0.2])
GRID = (1440, 1440, 41)


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in the official layout (5-D conv weights, BN statistics that keep activations O(1))."""
    return random_official_state_dict(PREFIX, seed, scalar=3)


def _scan(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic 64-beam scan voxelised on BEVFusion's grid (~61k voxels) plus 4k uniform voxels and the grid's
    corners, so that the strided convs meet the grid borders. Returns feats float32 (N, 5), coords int32 (N, 4)."""
    rng = np.random.default_rng(seed)
    points = lidar_scan(seed=seed)
    cells = np.floor((points[:, :3] - RANGE_LOW) / VOXEL).astype(np.int64)
    cells = cells[((cells >= 0) & (cells < GRID)).all(1)]
    corners = np.array(
        [[x, y, z] for x in (0, GRID[0] - 1) for y in (0, GRID[1] - 1) for z in (0, GRID[2] - 1)]
    )
    uniform = rng.integers(0, GRID, size=(4000, 3))
    cells = np.unique(np.concatenate([cells, uniform, corners]), axis=0)
    cells = cells[rng.permutation(len(cells))]  # no sorted-input assumption
    coords = np.concatenate([np.zeros((len(cells), 1), np.int64), cells], 1)
    feats = rng.standard_normal((len(cells), 5)).astype(np.float32)
    return torch.from_numpy(feats), torch.from_numpy(coords).int()


def test_keys_shapes_and_order_equal_the_release():
    encoder = SparseEncoder()
    assert [(k, list(v.shape)) for k, v in encoder.state_dict().items()] == REFERENCE
    assert len(REFERENCE) == DUMP["prefix_key_counts"][PREFIX[:-1]] == 126
    assert sum(p.numel() for p in encoder.parameters()) == DUMP["prefix_param_counts"][PREFIX[:-1]]
    assert encoder.output_shape == (180, 180, 2) and encoder.bev_channels == 256
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm1d):
            assert (module.eps, module.momentum) == (1e-3, 0.01)


def test_official_state_dict_loads_and_round_trips():
    state = _official_state_dict()
    encoder = SparseEncoder()
    encoder.load_state_dict(state, strict=True)
    saved = encoder.state_dict()
    assert list(saved) == list(state)
    for key, value in state.items():
        assert torch.equal(saved[key], value), key
    # Our own layout loads too.
    own = {k.replace(".weight", ".kernel") if v.dim() == 5 else k: v for k, v in saved.items()}
    own = {k: from_spconv_layout(v) if v.dim() == 5 else v for k, v in own.items()}
    other = SparseEncoder()
    other.load_state_dict(own, strict=True)
    assert torch.equal(other.conv_out[0].kernel, encoder.conv_out[0].kernel)


def test_wrong_weight_shape_is_reported():
    encoder = SparseEncoder()
    state = encoder.state_dict()
    state["conv_input.0.weight"] = torch.zeros(16, 3, 3, 3, 5)  # spconv 2.x layout, not the checkpoint's
    with pytest.raises(RuntimeError, match="conv_input.0.weight"):
        encoder.load_state_dict(state)


@pytest.mark.parametrize("kernel_size", [(3, 3, 3), (1, 1, 3), (3, 1, 2), (2, 2, 2), (1, 1, 1)])
def test_weight_layout_round_trip_and_offsets(kernel_size):
    volume = int(np.prod(kernel_size))
    kernel = torch.randn(volume, 4, 6)
    weight = to_spconv_layout(kernel, kernel_size)
    assert weight.shape == (*kernel_size, 4, 6)
    assert torch.equal(from_spconv_layout(weight), kernel)
    # Row k of our kernel is offset kernel_indices(kernel_size)[k] (docs/conventions.md §1).
    for k, (ix, iy, iz) in enumerate(kernel_indices(kernel_size)):
        assert torch.equal(weight[ix, iy, iz], kernel[k])
    # spconv 2.x keeps (C_out, kx, ky, kz, C_in): the RSCK -> KRSC permutation of its legacy-layout loader.
    if volume > 1:
        assert torch.equal(weight.permute(4, 0, 1, 2, 3), to_spconv_weight(kernel, kernel_size))


def test_module_state_dict_presents_the_spconv_weight():
    conv = SpconvLayoutConv3d(3, 5, (1, 1, 3), stride=(1, 1, 2), downsample_mode="spconv")
    assert [(k, tuple(v.shape)) for k, v in conv.state_dict().items()] == [("weight", (1, 1, 3, 3, 5))]
    assert [name for name, _ in conv.named_parameters()] == ["kernel"]
    with pytest.raises(ValueError, match="bias"):
        SpconvLayoutConv3d(3, 5, 3, bias=True)


def test_forward_validates_inputs():
    encoder = SparseEncoder().eval()
    feats, coords = torch.randn(2, 5), torch.tensor([[0, 1, 2, 3], [0, 1440, 2, 3]], dtype=torch.int32)
    with pytest.raises(ValueError, match="coords span"):
        encoder(feats, coords, 1)
    with pytest.raises(ValueError, match="feats"):
        encoder(torch.randn(2, 4), coords, 1)


# spconv twin ---------------------------------------------------------------------------------------------------


def spconv_twin(encoder: SparseEncoder) -> nn.Module:
    """The same network from spconv 2.x layers (as BEVFusion builds it), holding `encoder`'s weights.

    Its state dict has the official keys; its conv weights are spconv 2.x's (C_out, kx, ky, kz, C_in), loaded
    from `encoder.state_dict()` (the checkpoint layout) with spconv's own RSCK -> KRSC permutation.
    """
    spconv = pytest.importorskip("spconv.pytorch")

    def conv(module: SpconvLayoutConv3d):
        if module.stride == (1, 1, 1):
            return spconv.SubMConv3d(module.in_channels, module.out_channels, module.kernel_size, bias=False)
        return spconv.SparseConv3d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            bias=False,
        )

    def norm(module: nn.BatchNorm1d):
        return nn.BatchNorm1d(module.num_features, eps=module.eps, momentum=module.momentum)

    def conv_module(seq: nn.Sequential):
        return spconv.SparseSequential(conv(seq[0]), norm(seq[1]), nn.ReLU(inplace=True))

    class BasicBlock(spconv.SparseModule):
        def __init__(self, block: SparseBasicBlock) -> None:
            super().__init__()
            self.conv1, self.bn1 = conv(block.conv1), norm(block.bn1)
            self.conv2, self.bn2 = conv(block.conv2), norm(block.bn2)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            identity = x.features
            out = self.conv1(x)
            out = out.replace_feature(self.relu(self.bn1(out.features)))
            out = self.conv2(out)
            return out.replace_feature(self.relu(self.bn2(out.features) + identity))

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sparse_shape = list(encoder.sparse_shape)
            self.conv_input = conv_module(encoder.conv_input)
            self.encoder_layers = spconv.SparseSequential()
            for name, stage in encoder.encoder_layers.named_children():
                blocks = [BasicBlock(b) if isinstance(b, SparseBasicBlock) else conv_module(b) for b in stage]
                self.encoder_layers.add_module(name, spconv.SparseSequential(*blocks))
            self.conv_out = conv_module(encoder.conv_out)

        def forward(self, feats, coords, batch_size):
            x = spconv.SparseConvTensor(feats, coords, self.sparse_shape, batch_size)
            x = self.conv_out(self.encoder_layers(self.conv_input(x)))
            dense = x.dense()  # (N, C, x, y, z): the reference's (N, C, H, W, D)
            n, c, h, w, d = dense.shape
            return dense.permute(0, 1, 4, 2, 3).contiguous().view(n, c * d, h, w)

    twin = Twin()
    state = {k: v.permute(4, 0, 1, 2, 3) if v.dim() == 5 else v for k, v in encoder.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin


def _record(model: nn.Module, kinds: tuple[type, ...], store: dict) -> list:
    """Forward hooks storing (coords, feats) of every output of type `kinds`, by module name."""

    def hook(name):
        def save(module, args, output):
            if isinstance(output, SparseTensor):
                store[name] = (output.coords.clone(), output.feats.detach().clone())
            elif isinstance(output, kinds):
                store[name] = (output.indices.clone(), output.features.detach().clone())

        return save

    return [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if n and not isinstance(m, (nn.BatchNorm1d, nn.ReLU))
    ]


def _aligned(coords: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = coords.long()
    order = torch.argsort(((c[:, 0] * 2048 + c[:, 1]) * 2048 + c[:, 2]) * 64 + c[:, 3])
    return c[order], feats[order]


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # inside spconv's dense()
@torch.no_grad()
def test_encoder_equals_spconv_layer_by_layer():
    spconv = pytest.importorskip("spconv.pytorch")
    encoder = SparseEncoder()
    encoder.load_state_dict(_official_state_dict(seed=1))
    encoder.eval()
    twin = spconv_twin(encoder).eval()
    feats, coords = _scan()
    assert len(feats) > 60_000

    ours, theirs = {}, {}
    handles = _record(encoder, (), ours) + _record(twin, (spconv.SparseConvTensor,), theirs)
    try:
        bev = encoder(feats, coords, 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # spconv's CPU gather/scatter races with more threads (docs/conventions.md §5)
        try:
            reference = twin(feats, coords, 1)
        finally:
            torch.set_num_threads(threads)
    finally:
        for handle in handles:
            handle.remove()

    convs = [n for n, m in encoder.named_modules() if isinstance(m, SpconvLayoutConv3d)]
    assert len(convs) == 21 and set(convs) <= set(ours) and set(convs) <= set(theirs)
    assert set(ours) == set(theirs)
    errors = {}
    for name, output in ours.items():
        our_coords, our_feats = _aligned(*output)
        their_coords, their_feats = _aligned(*theirs[name])
        assert torch.equal(our_coords, their_coords), f"{name}: output sites differ"
        errors[name] = (our_feats - their_feats).abs().max().item()
    assert max(errors.values()) < 1e-4, errors  # activations are O(1)-O(10) here; observed ~5e-6
    assert len(ours["conv_out.0"][0]) > 1000  # the deepest level still has work to compare

    assert bev.shape == reference.shape == (1, 256, 180, 180)
    assert (bev - reference).abs().max().item() < 1e-4
    assert bool((bev != 0).any())
