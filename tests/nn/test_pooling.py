import pytest
import torch

import torchsparse.nn as spnn
import torchsparse.nn.functional as F
from torchsparse import SparseTensor
from torchsparse.conv_output import centred_base, conv_output
from torchsparse.tensor import to_triple
from torchsparse.testing import dense_pool, random_sparse_tensor

TOL = 1e-12


def _input(device, batch_size=2, seed=0):
    return random_sparse_tensor(80, 3, extent=(7, 6, 8), batch_size=batch_size, low=(-3, -2, -4), dtype=torch.float64,
                                device=device, seed=seed)


@pytest.mark.parametrize("kernel,stride,dilation", [(2, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 2), ((1, 1, 3), (1, 1, 2), 1), (3, 3, 1)])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_local_pool_matches_dense(kernel, stride, dilation, reduce, device):
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    x = _input(device, seed=sum(ks) + sum(st))
    pool = F.max_pool3d if reduce == "max" else F.avg_pool3d
    y = pool(x, ks, st, dilation=dl)
    expected = dense_pool(x.coords.cpu(), x.feats.cpu(), y.coords.cpu(), ks, st, dl, centred_base(ks, dl), reduce)
    assert (y.feats.cpu() - expected).abs().max() <= TOL
    assert y.stride == st


@pytest.mark.parametrize("module", [spnn.MaxPool3d(2), spnn.AvgPool3d(3, stride=1), spnn.MaxPool3d(3, 2, padding=1, downsample_mode="spconv")])
def test_pool_gradcheck(module, device):
    x = random_sparse_tensor(25, 2, extent=(4, 4, 4), batch_size=2, dtype=torch.float64, device=device)
    feats = x.feats.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: module(x.replace(f)).feats, (feats,))


def test_global_pool(device):
    x = _input(device, batch_size=3)
    batch = x.coords[:, 0].long()
    means = torch.stack([x.feats[batch == b].mean(0) for b in range(3)])
    maxes = torch.stack([x.feats[batch == b].amax(0) for b in range(3)])
    assert (spnn.GlobalAvgPool()(x) - means).abs().max() <= TOL
    assert torch.equal(spnn.GlobalMaxPool()(x), maxes)
    feats = x.feats.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: F.global_avg_pool(x.replace(f)), (feats,))
    assert torch.autograd.gradcheck(lambda f: F.global_max_pool(x.replace(f)), (feats,))


def test_global_pool_uses_spatial_range_for_empty_samples(device):
    x = random_sparse_tensor(20, 2, batch_size=1, dtype=torch.float64, device=device)
    x.spatial_range = (3, 8, 8, 8)
    out = F.global_avg_pool(x)
    assert out.shape == (3, 2) and torch.equal(out[1:], torch.zeros(2, 2, dtype=torch.float64, device=device))


def test_empty(device):
    empty = SparseTensor(torch.zeros(0, 3, device=device), torch.zeros(0, 4, dtype=torch.int32, device=device))
    assert F.max_pool3d(empty, 2).feats.shape == (0, 3)
    assert F.avg_pool3d(empty, 3, 1).feats.shape == (0, 3)
    assert F.global_avg_pool(empty).shape == (0, 3)


def test_avg_pool_sums_windows_in_offset_order(device):
    # Float32, so that a different order of additions would show in the last bits.
    x = random_sparse_tensor(300, 16, extent=(9, 9, 9), batch_size=2, low=(-4, -4, -4), device=device, seed=4)
    y = F.avg_pool3d(x, 3, 2)
    nbmap = conv_output(x, (3, 3, 3), (2, 2, 2), (1, 1, 1), (0, 0, 0), False, False, "minkowski").kmap.nbmap.cpu()
    feats = x.feats.cpu()
    expected = torch.zeros(len(nbmap), 16)
    for o, row in enumerate(nbmap.tolist()):
        total = torch.zeros(16)
        for i in row:
            if i >= 0:
                total = total + feats[i]
        expected[o] = total / max(sum(i >= 0 for i in row), 1)
    assert torch.equal(y.feats.cpu(), expected)
    assert torch.equal(F.avg_pool3d(x, 3, 2).feats, y.feats)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_avg_pool_cuda_equals_cpu(dtype):
    x = random_sparse_tensor(3000, 32, extent=(20, 20, 20), batch_size=2, dtype=dtype, seed=5)
    grad = torch.randn(len(F.avg_pool3d(x, 2).feats), 32, dtype=dtype)
    outs = []
    for device in ("cpu", "cuda"):
        feats = x.feats.to(device).requires_grad_()
        y = F.avg_pool3d(SparseTensor(feats, x.coords.to(device)), 2)
        y.feats.backward(grad.to(device))
        outs.append((y.feats.detach().cpu(), feats.grad.cpu()))
    # Elementwise additions in one order and one division: bitwise equal, forward and backward.
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
