import pytest
import torch

import torchsparse.nn.functional as F
from torchsparse import PointTensor, SparseTensor
from torchsparse.testing import brute_force_point_voxel_query, reference_devoxelize, reference_voxelize


def _points(device, n=400, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat(
        [torch.randint(0, 2, (n, 1), generator=g).double(), torch.rand(n, 3, generator=g) * 9 - 3], 1
    )
    feats = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return PointTensor(feats.to(device, dtype), coords.to(device))


def test_initial_voxelize_means_points_per_cell(device):
    z = _points(device)
    x, z1 = F.initial_voxelize(z, init_res=0.05, after_res=0.1)
    scaled = z.coords.clone()
    scaled[:, 1:] *= 0.5
    cells = torch.floor(scaled).long()
    expected_coords, inverse = torch.unique(cells, dim=0, return_inverse=True)
    assert torch.equal(x.coords.long(), expected_coords) and x.stride == (1, 1, 1)
    counts = torch.bincount(inverse, minlength=len(expected_coords))
    torch.testing.assert_close(x.feats.cpu(), reference_voxelize(z.feats.cpu(), inverse.cpu(), counts.cpu()))
    torch.testing.assert_close(z1.coords, scaled)
    assert torch.equal(z1.feats, z.feats)


@pytest.mark.parametrize("orphans", ["clamp", "drop"])
def test_point_to_voxel_orphan_policies(device, orphans):
    z = _points(device)
    cells = torch.unique(torch.floor(z.coords / torch.tensor([1, 2, 2, 2], device=device)).int(), dim=0)
    kept = cells[::2]  # half of the occupied stride-2 voxels: the points of the others are orphans
    x = SparseTensor(torch.zeros(len(kept), 3, dtype=torch.float64, device=device), kept, stride=2)
    out = F.point_to_voxel(x, z, orphans=orphans)
    idx, _ = brute_force_point_voxel_query(z.coords.cpu(), kept.cpu(), (2, 2, 2), 1)
    idx = idx[:, 0]
    assert bool((idx < 0).any())
    if orphans == "clamp":  # TorchSparse v2.1: orphans are averaged into voxel row 0
        idx = idx.clamp(min=0)
    counts = torch.bincount(idx[idx >= 0], minlength=len(kept))
    torch.testing.assert_close(out.feats.cpu(), reference_voxelize(z.feats.cpu(), idx, counts))
    assert out.coords is x.coords and out.stride == (2, 2, 2) and out.cache is x.cache


@pytest.mark.parametrize("neighbours", [1, 8])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_voxel_to_point_matches_reference(device, neighbours, stride):
    z = _points(device)
    cells = torch.unique(
        torch.floor(z.coords / torch.tensor([1, stride, stride, stride], device=device)).int(), dim=0
    )
    g = torch.Generator().manual_seed(1)
    x = SparseTensor(
        torch.randn(len(cells), 5, generator=g, dtype=torch.float64).to(device), cells, stride=stride
    )
    out = F.voxel_to_point(x, z, neighbours=neighbours)
    idx, weights = brute_force_point_voxel_query(z.coords.cpu(), cells.cpu(), (stride,) * 3, neighbours)
    torch.testing.assert_close(out.feats.cpu(), reference_devoxelize(x.feats.cpu(), idx, weights))
    assert out.coords is z.coords and out.cache is z.cache
    # The query is cached per (stride, neighbours) and reused for the same voxel coordinates.
    cached = z.cache.queries[((stride,) * 3, neighbours)]
    F.voxel_to_point(x, out, neighbours=neighbours)
    assert z.cache.queries[((stride,) * 3, neighbours)] is cached


def test_round_trip_gradcheck(device):
    z = _points(device, n=40)
    x, z = F.initial_voxelize(z)
    feats = torch.randn(len(x), 2, dtype=torch.float64, device=device, requires_grad=True)
    point_feats = torch.randn(len(z), 2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(voxel_feats, pf):
        zz = F.voxel_to_point(x.replace(voxel_feats), z.replace(pf))
        return F.point_to_voxel(x, zz.replace(zz.feats + pf)).feats

    torch.autograd.gradcheck(fn, (feats, point_feats))


def test_point_tensor_rejects_bad_input(device):
    feats = torch.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match=r"coords must be \(N, 4\)"):
        PointTensor(feats, torch.zeros(2, 3, device=device))
    with pytest.raises(ValueError, match="NaN or inf"):
        PointTensor(feats, torch.tensor([[0, float("nan"), 0, 0], [0, 0, 0, 0]], device=device))
    with pytest.raises(ValueError, match="batch column"):
        PointTensor(feats, torch.tensor([[0.5, 0, 0, 0], [0, 0, 0, 0]], device=device))
    with pytest.raises(ValueError, match="feats must be"):
        PointTensor(feats[:1], torch.zeros(2, 4, device=device))
    z = PointTensor(feats, torch.zeros(2, 4, device=device))
    x = SparseTensor(feats, torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="orphans"):
        F.point_to_voxel(x, z, orphans="ignore")
    with pytest.raises(ValueError, match="neighbours"):
        F.voxel_to_point(x, z, neighbours=4)
    with pytest.raises(ValueError, match="init_res"):
        F.initial_voxelize(z, init_res=0.0)


def test_empty(device):
    z = PointTensor(torch.zeros(0, 3, device=device), torch.zeros(0, 4, device=device))
    x, z = F.initial_voxelize(z)
    assert len(x) == 0
    assert F.voxel_to_point(x, z).feats.shape == (0, 3)
    assert F.point_to_voxel(x, z).feats.shape == (0, 3)
