import math

import pytest
import torch

import torchsparse
from torchsparse import SparseTensor
from torchsparse.testing import random_sparse_tensor


def _coords(rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_construction_and_conversions(device):
    x = random_sparse_tensor(40, 3, batch_size=2, device=device, with_range=True)
    assert x.coords.dtype == torch.int32 and x.stride == (1, 1, 1) and len(x) == x.feats.shape[0]
    assert x.double().dtype == torch.float64 and x.half().dtype == torch.float16
    assert x.double().cache is x.cache and x.double().coords is x.coords
    assert x.cpu().device.type == "cpu" and x.to(torch.float64).dtype == torch.float64
    assert not x.detach().feats.requires_grad
    assert SparseTensor(x.feats, x.coords.long()).coords.dtype == torch.int32


def test_arithmetic_and_cat(device):
    x = random_sparse_tensor(40, 3, device=device)
    y = x.replace(torch.ones_like(x.feats))
    assert torch.equal((x + y).feats, x.feats + 1) and torch.equal((x + 2.0).feats, x.feats + 2)
    z = torchsparse.cat([x, y])
    assert z.feats.shape == (len(x), 6) and z.coords is x.coords
    other = random_sparse_tensor(40, 3, device=device, seed=7)
    with pytest.raises(ValueError, match="identical coordinates"):
        x + other
    with pytest.raises(ValueError, match="identical coordinates"):
        torchsparse.cat([x, other])
    with pytest.raises(ValueError, match="at least one"):
        torchsparse.cat([])


@pytest.mark.parametrize("feats,coords,error,match", [
    (torch.zeros(2, 3), torch.zeros(2, 4), TypeError, "integer"),
    (torch.zeros(2, 3), _coords([[0, 1, 2], [0, 1, 3]]), ValueError, "batch column"),
    (torch.zeros(2, 3), _coords([[-1, 0, 0, 0], [0, 0, 0, 1]]), ValueError, "batch index"),
    (torch.zeros(2, 3), _coords([[0, 40000, 0, 0], [0, 0, 0, 1]]), ValueError, "out of range"),
    (torch.zeros(2, 3), _coords([[40000, 0, 0, 0], [0, 0, 0, 1]]), ValueError, "out of range"),
    (torch.zeros(3, 3), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]), ValueError, "N = 2"),
    (torch.zeros(2, 3, dtype=torch.int64), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]), TypeError, "floating"),
    (torch.tensor([[math.nan], [0.0]]), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]), ValueError, "NaN"),
    (torch.tensor([[math.inf], [0.0]]), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]), ValueError, "inf"),
    ([[0.0]], _coords([[0, 0, 0, 0]]), TypeError, "feats"),
])
def test_validation(feats, coords, error, match):
    with pytest.raises(error, match=match):
        SparseTensor(feats, coords)


def test_bad_stride_and_range():
    coords = _coords([[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="stride"):
        SparseTensor(torch.zeros(1, 1), coords, stride=0)
    with pytest.raises(ValueError, match="spatial_range"):
        SparseTensor(torch.zeros(1, 1), coords, spatial_range=(1, 2, 3))


def test_empty_tensor(device):
    x = SparseTensor(torch.zeros(0, 2, device=device), torch.zeros(0, 4, dtype=torch.int32, device=device),
                     spatial_range=(1, 2, 2, 2))
    assert len(x) == 0 and x.dense().shape == (1, 2, 2, 2, 2)


def test_cuda_move_keeps_values(device):
    x = random_sparse_tensor(30, 2)
    y = x.to(device)
    assert y.device.type == device and torch.equal(y.coords.cpu(), x.coords) and torch.equal(y.feats.cpu(), x.feats)


@pytest.mark.parametrize("feats_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_point_coords_stay_exact(device, feats_dtype):
    coords = torch.tensor([[2049.0, 0.1, -7.3, 1000.5], [0.0, 3.0, 2.0, 1.0]], dtype=torch.float64, device=device)
    feats = torch.ones(2, 3, dtype=feats_dtype, device=device)
    z = torchsparse.PointTensor(feats, coords)
    assert z.coords.dtype == torch.float64 and torch.equal(z.coords, coords)
    z = torchsparse.PointTensor(feats, coords.float())
    assert z.coords.dtype == torch.promote_types(feats_dtype, torch.float32)
    assert torch.equal(z.coords, coords.float().to(z.coords.dtype)) and z.coords[0, 0] == 2049
    z = torchsparse.PointTensor(feats, coords.int())
    assert z.coords.dtype == torch.promote_types(feats_dtype, torch.float32) and z.coords[0, 0] == 2049


def test_validation_of_empty_tensors(device):
    coords = torch.zeros(0, 4, dtype=torch.int32, device=device)
    x = SparseTensor(torch.zeros(0, 3, device=device), coords)
    assert (x + SparseTensor(x.feats, coords.clone())).feats.shape == (0, 3)
    assert len(torchsparse.PointTensor(x.feats, coords.float())) == 0
    with pytest.raises(ValueError, match="N = 0"):
        SparseTensor(torch.zeros(1, 3, device=device), coords)
