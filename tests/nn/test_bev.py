import pytest
import torch

import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.testing import random_sparse_tensor


def _input(device):
    return random_sparse_tensor(50, 3, extent=(5, 6, 4), batch_size=2, dtype=torch.float64, device=device,
                                with_range=True)


def test_dense_matches_loop(device):
    x = _input(device)
    dense = spnn.ToDense()(x)
    assert dense.shape == (2, 3, 5, 6, 4)
    expected = torch.zeros(2, 3, 5, 6, 4, dtype=torch.float64, device=device)
    for (b, i, j, k), f in zip(x.coords.tolist(), x.feats):
        expected[b, :, i, j, k] = f
    assert torch.equal(dense, expected)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_bev_layout(axis, device):
    x = _input(device)
    bev = spnn.ToBEV(axis)(x)
    dense = x.dense()
    d = {"x": 2, "y": 3, "z": 4}[axis]
    height = dense.shape[d]
    rest = [a for a in (2, 3, 4) if a != d]
    assert bev.shape == (2, 3 * height, dense.shape[rest[0]], dense.shape[rest[1]])
    for c in range(3):
        for h in range(height):
            assert torch.equal(bev[:, c * height + h], dense[:, c].select(d - 1, h))


def test_bev_gradcheck(device):
    x = _input(device)
    feats = x.feats.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: spnn.ToBEV()(x.replace(f)), (feats,))


def test_dense_errors(device):
    x = random_sparse_tensor(20, 2, device=device)
    with pytest.raises(ValueError, match="spatial_range"):
        x.dense()
    outside = SparseTensor(x.feats, x.coords, spatial_range=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="outside spatial_range"):
        outside.dense()
    with pytest.raises(ValueError, match="axis"):
        spnn.ToBEV("w")(x)
