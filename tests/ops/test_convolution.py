import pytest
import torch

from torchsparse import ops
from torchsparse.testing import random_coords


def _map(device, kernel=(3, 3, 3), seed=0):
    coords = random_coords(150, (7, 7, 7), batch_size=2, low=(-3, -3, -3), seed=seed).to(device)
    index, _ = ops.sorted_index(coords)
    nbmap = ops.kernel_map(index, coords, kernel, (1, 1, 1), (1, 1, 1), tuple(-k // 2 + 1 for k in kernel))
    return coords, nbmap, *ops.kernel_map_pairs(nbmap)


def _reference(feats, weight, nbmap):
    """out[o] = sum_k feats[nbmap[o, k]] @ weight[k], one row at a time."""
    out = feats.new_zeros((nbmap.shape[0], weight.shape[2]))
    for o, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                out[o] += feats[i] @ weight[k]
    return out


@pytest.mark.parametrize("dataflow,tile", [("gather_scatter", 0), ("fused", 1), ("fused", 7), ("fused", 64), ("fused", 4096)])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (2, 2, 2)])
def test_conv_matches_reference(dataflow, tile, kernel, device):
    # (3, 3, 3) has an identity centre offset (run without gather/scatter); (2, 2, 2) has none.
    coords, nbmap, in_rows, out_rows, sizes = _map(device, kernel)
    feats = torch.randn(len(coords), 5, dtype=torch.float64, device=device)
    weight = torch.randn(nbmap.shape[1], 5, 3, dtype=torch.float64, device=device)
    if dataflow == "fused":
        out = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, tile)
    else:
        out = ops.conv3d(feats, weight, in_rows, out_rows, sizes, len(coords))
    assert (out - _reference(feats, weight, nbmap)).abs().max() <= 1e-12


def test_weight_grad_matches_reference(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, device=device)
    grad = torch.randn(len(coords), 3, dtype=torch.float64, device=device)
    expected = torch.zeros(27, 4, 3, dtype=torch.float64, device=device)
    for o, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                expected[k] += torch.outer(feats[i], grad[o])
    out = ops.conv3d_weight_grad(feats, grad, in_rows, out_rows, sizes)
    assert (out - expected).abs().max() <= 1e-12


@pytest.mark.parametrize("dataflow", ["gather_scatter", "fused"])
def test_gradcheck(dataflow, device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=3)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    if dataflow == "fused":
        fn = lambda f, w: ops.conv3d_fused(f, w, nbmap, in_rows, out_rows, sizes, 16)  # noqa: E731
    else:
        fn = lambda f, w: ops.conv3d(f, w, in_rows, out_rows, sizes, len(coords))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (feats, weight))


@pytest.mark.parametrize("dataflow", ["gather_scatter", "fused"])
def test_bitwise_repeatable_across_runs_and_threads(dataflow, device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=5)
    feats = torch.randn(len(coords), 64, device=device)
    weight = torch.randn(27, 64, 64, device=device)

    def run():
        if dataflow == "fused":
            return ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 32)
        return ops.conv3d(feats, weight, in_rows, out_rows, sizes, len(coords))

    threads = torch.get_num_threads()
    first = run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, run()) and torch.equal(first, single)


def test_bad_arguments(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, device=device)
    weight = torch.randn(27, 4, 3, device=device)
    with pytest.raises(TypeError, match="same dtype"):
        ops.conv3d(feats.double(), weight, in_rows, out_rows, sizes, len(coords))
    with pytest.raises(ValueError, match="channels"):
        ops.conv3d_fused(feats[:, :3], weight, nbmap, in_rows, out_rows, sizes, 8)
    with pytest.raises(IndexError, match=r"in_rows values must be in"):
        ops.conv3d(feats[:5], weight, in_rows, out_rows, sizes, len(coords))
    with pytest.raises(IndexError, match=r"out_rows values must be in"):
        ops.conv3d(feats, weight, in_rows, out_rows, sizes, 3)
    with pytest.raises(IndexError, match=r"nbmap values must be in"):
        ops.conv3d_fused(feats[:5], weight, nbmap, in_rows, out_rows, sizes, 8)
    with pytest.raises(ValueError, match="tile"):
        ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 0)
    with pytest.raises(ValueError, match="sizes has"):
        ops.conv3d(feats, weight[:8], in_rows, out_rows, sizes, len(coords))


def test_empty(device):
    empty = torch.zeros(0, 4, dtype=torch.int32, device=device)
    index, _ = ops.sorted_index(empty)
    nbmap = ops.kernel_map(index, empty, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    pairs = ops.kernel_map_pairs(nbmap)
    weight = torch.randn(27, 4, 3, device=device)
    assert ops.conv3d_fused(torch.zeros(0, 4, device=device), weight, nbmap, *pairs, 8).shape == (0, 3)
    assert ops.conv3d(torch.zeros(0, 4, device=device), weight, *pairs, 0).shape == (0, 3)


def test_opcheck(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(len(coords), 3, dtype=torch.float64, device=device)
    T = torch.ops.torchsparse
    torch.library.opcheck(T.conv3d, (feats, weight, in_rows, out_rows, sizes, len(coords)))
    torch.library.opcheck(T.conv3d_fused, (feats, weight, nbmap, in_rows, out_rows, sizes, 16))
    torch.library.opcheck(T.conv3d_weight_grad, (feats.detach(), grad, in_rows, out_rows, sizes))
