"""torch.compile(fullgraph=True) with the default inductor backend: empty inputs, dynamic shapes, and the value
checks of eager mode, which must survive inductor's dead-code elimination (they return nothing)."""

import math

import pytest
import torch

import torchsparse
import torchsparse.nn as spnn
from torchsparse import PointTensor, SparseTensor
from torchsparse.testing import random_sparse_tensor


def _every_layer_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        spnn.Conv3d(4, 8, 3), spnn.ReLU(),  # submanifold
        spnn.Conv3d(8, 8, 2, stride=2),  # strided, minkowski: stride 2
        spnn.Conv3d(8, 8, 3, stride=2, padding=1, downsample_mode="spconv"),  # strided, spconv: stride 4
        spnn.MaxPool3d(2),  # stride 8
        spnn.Conv3d(8, 8, 2, stride=2, transposed=True),  # back onto the stride-4 sites
        spnn.Conv3d(8, 4, 2, stride=2, generative=True),  # new sites at stride 2
        spnn.AvgPool3d(3, stride=1),
    ).eval()


def test_empty_then_non_empty_input():
    torch._dynamo.reset()
    net = _every_layer_net()

    def run(feats, coords):
        out = net(SparseTensor(feats, coords))
        return out.feats, out.coords

    compiled = torch.compile(run, fullgraph=True)
    x = random_sparse_tensor(300, 4, extent=(12, 12, 12), batch_size=2)
    empty = (x.feats[:0], x.coords[:0])
    with torch.no_grad():
        # Empty first (a graph specialised to 0 rows), then two sizes (one graph with a dynamic row count).
        for feats, coords in (empty, (x.feats, x.coords), (x.feats[:200], x.coords[:200]), empty):
            (got_feats, got_coords), (feats_eager, coords_eager) = compiled(feats, coords), run(feats, coords)
            assert torch.equal(got_coords, coords_eager)
            torch.testing.assert_close(got_feats, feats_eager, atol=1e-5, rtol=1e-5)
            assert got_feats.shape[1] == 4 and (len(got_feats) > 0) == (len(feats) > 0)


def _bad_nan(feats, coords):
    feats[3, 1] = math.nan


def _bad_inf(feats, coords):
    feats[0, 2] = -math.inf


def _bad_duplicate(feats, coords):
    coords[5] = coords[6]


def _bad_batch(feats, coords):
    coords[5, 0] = -1


def _bad_range(feats, coords):
    coords[5, 1] = 40000


@pytest.fixture(scope="module")
def compiled_conv():
    """A compiled conv net and its eager version; every bad input has the shapes of the first, so the graph
    compiled once serves all cases."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(spnn.Conv3d(4, 8, 3), spnn.ReLU()).eval()

    def run(feats, coords):
        return net(SparseTensor(feats, coords)).feats

    x = random_sparse_tensor(300, 4, extent=(10, 10, 10), batch_size=2)
    compiled = torch.compile(run, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x.feats, x.coords), run(x.feats, x.coords))
    return compiled, run, x


@pytest.mark.parametrize("corrupt,message", [
    (_bad_nan, "feats contain NaN or inf"),
    (_bad_inf, "feats contain NaN or inf"),
    (_bad_duplicate, "coords contain 1 duplicate rows"),
    (_bad_batch, "batch index must be >= 0, got -1"),
    (_bad_range, "coords out of range"),
])
def test_value_checks_hold_when_compiled(compiled_conv, corrupt, message):
    compiled, run, x = compiled_conv
    feats, coords = x.feats.clone(), x.coords.clone()
    corrupt(feats, coords)
    with torch.no_grad():
        with pytest.raises(ValueError, match=message) as eager:
            run(feats, coords)
        with pytest.raises(ValueError, match=message) as graph:
            compiled(feats, coords)
    assert str(graph.value) == str(eager.value)


def test_site_and_range_checks_hold_when_compiled():
    torch._dynamo.reset()

    def add_dense(feats, coords, other_coords):
        x = SparseTensor(feats, coords, spatial_range=(2, 10, 10, 10))
        y = torchsparse.cat([x, SparseTensor(feats, other_coords)])
        return y.replace(y.feats[:, :4]).dense()

    compiled = torch.compile(add_dense, fullgraph=True)
    x = random_sparse_tensor(200, 4, extent=(10, 10, 10), batch_size=2)
    assert torch.equal(compiled(x.feats, x.coords, x.coords.clone()), add_dense(x.feats, x.coords, x.coords.clone()))
    with pytest.raises(ValueError, match="cat needs identical coordinates"):
        compiled(x.feats, x.coords, x.coords.flip(0))
    outside = x.coords.clone()
    outside[7, 3] = 10
    with pytest.raises(ValueError, match=r"outside spatial_range \(2, 10, 10, 10\)"):
        compiled(x.feats, outside, outside)


def test_point_tensor_when_compiled():
    torch._dynamo.reset()

    def points(feats, coords):
        z = PointTensor(feats, coords)
        return z.feats.relu(), z.coords

    compiled = torch.compile(points, fullgraph=True)
    coords = torch.tensor([[2049.0, 0.5, 1.25, -3.0], [0.0, 1.0, 2.0, 3.0], [7.0, 0.0, 0.0, 0.0]])
    feats = torch.randn(3, 2, dtype=torch.float16)
    _, got = compiled(feats, coords)
    assert got.dtype == torch.float32 and torch.equal(got, coords)
    with pytest.raises(ValueError, match="batch column must hold integers"):
        compiled(feats, coords.index_fill(1, torch.tensor([0]), 0.5))
    with pytest.raises(ValueError, match="feats contain NaN"):
        compiled(feats.index_fill(1, torch.tensor([1]), math.nan), coords)
