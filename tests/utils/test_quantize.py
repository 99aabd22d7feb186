import numpy as np
import pytest
import torch

from torchsparse.utils import sparse_quantize


def _reference(points, voxel):
    keys = {}
    for i, p in enumerate(points):
        keys.setdefault(tuple(int(v) for v in np.floor(p / voxel)), i)
    return keys


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_quantize_matches_reference(kind):
    rng = np.random.default_rng(0)
    points = rng.uniform(-3, 3, (500, 3))
    data = points if kind == "numpy" else torch.from_numpy(points)
    voxels, index, inverse = sparse_quantize(data, 0.5, return_index=True, return_inverse=True)
    voxels, index, inverse = (np.asarray(v) for v in (voxels, index, inverse))
    expected = _reference(points, 0.5)
    assert sorted(map(tuple, voxels.tolist())) == sorted(expected) and voxels.dtype == np.int32
    assert [expected[tuple(v)] for v in voxels.tolist()] == index.tolist()
    assert np.array_equal(voxels[inverse], np.floor(points / 0.5).astype(np.int32))


def test_quantize_per_axis_voxel_and_plain_output():
    points = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.3, 0.1], [1.1, 0.1, 0.1]])
    voxels = sparse_quantize(points, (1.0, 0.25, 1.0))
    assert isinstance(voxels, torch.Tensor) and voxels.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("points,voxel,error,match", [
    (np.array([[np.nan, 0, 0]]), 1.0, ValueError, "NaN"),
    (np.array([[np.inf, 0, 0]]), 1.0, ValueError, "NaN or inf"),
    (np.zeros((2, 3)), 0.0, ValueError, "voxel_size"),
    (np.zeros((2, 3)), (1.0, 1.0), ValueError, "voxel_size"),
    (np.zeros(3), 1.0, ValueError, r"\(N, D\)"),
    ([[0.0, 0.0, 0.0]], 1.0, TypeError, "a torch.Tensor or an array with __dlpack__"),
    (np.array([[1e12, 0, 0]]), 1e-3, ValueError, "int32"),
])
def test_quantize_errors(points, voxel, error, match):
    with pytest.raises(error, match=match):
        sparse_quantize(points, voxel)


def test_quantize_empty():
    voxels, index, inverse = sparse_quantize(np.zeros((0, 3)), 0.1, return_index=True, return_inverse=True)
    assert voxels.shape == (0, 3) and index.shape == (0,) and inverse.shape == (0,)
