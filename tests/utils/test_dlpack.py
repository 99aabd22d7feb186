"""SparseTensor, sparse_quantize and sparse_collate_fn accept any array with __dlpack__ without copying it."""

import numpy as np
import pytest
import torch

from torchsparse import SparseTensor
from torchsparse.utils import sparse_collate_fn, sparse_quantize


class Exporter:
    """A DLPack producer that is neither a tensor nor a NumPy array (as a CuPy or JAX array is)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_sparse_tensor_views_dlpack_arrays():
    coords = np.array([[0, 1, 2, 3], [0, 2, 2, 3], [1, 0, 0, 0]], dtype=np.int32)
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    x = SparseTensor(Exporter(feats), Exporter(coords))
    assert x.feats.data_ptr() == feats.ctypes.data and x.coords.data_ptr() == coords.ctypes.data
    feats[0, 0] = 42.0
    assert x.feats[0, 0].item() == 42.0
    assert x.coords.tolist() == coords.tolist()


def test_quantize_and_collate_take_dlpack_arrays():
    points = np.random.default_rng(0).random((50, 3))
    voxels = sparse_quantize(Exporter(points), 0.25)
    assert isinstance(voxels, torch.Tensor)
    assert np.array_equal(voxels.numpy(), sparse_quantize(points, 0.25))
    batch = sparse_collate_fn([{"a": Exporter(points)}, {"a": points}])
    assert batch["a"].shape == (2, 50, 3) and torch.equal(batch["a"][0], torch.from_numpy(points))


def test_objects_without_dlpack_are_type_errors():
    with pytest.raises(TypeError, match="coords must be a torch.Tensor or an array with __dlpack__"):
        SparseTensor(torch.zeros(1, 2), [[0, 0, 0, 0]])
    with pytest.raises(TypeError, match="coords must be a torch.Tensor or an array with __dlpack__"):
        sparse_quantize([[0.0, 1.0, 2.0]])
