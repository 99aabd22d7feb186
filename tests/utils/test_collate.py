import numpy as np
import pytest
import torch

from torchsparse import SparseTensor
from torchsparse.utils import sparse_collate, sparse_collate_fn


def _sample(n, seed):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.zeros(n, 1, dtype=torch.int32), torch.randperm(1000, generator=gen)[:n, None].int().repeat(1, 3)], 1)
    return SparseTensor(torch.randn(n, 2, generator=gen), coords, spatial_range=(1, 1000, 1000, 1000))


def test_sparse_collate():
    samples = [_sample(5, 0), _sample(0, 1), _sample(7, 2)]
    batch = sparse_collate(samples)
    assert batch.coords[:, 0].tolist() == [0] * 5 + [2] * 7
    assert torch.equal(batch.coords[:, 1:], torch.cat([s.coords[:, 1:] for s in samples]))
    assert torch.equal(batch.feats, torch.cat([s.feats for s in samples]))
    assert batch.spatial_range == (3, 1000, 1000, 1000)


def test_sparse_collate_errors():
    with pytest.raises(ValueError, match="at least one"):
        sparse_collate([])
    batched = sparse_collate([_sample(3, 0), _sample(3, 1)])
    with pytest.raises(ValueError, match="batch index 0"):
        sparse_collate([batched])
    with pytest.raises(TypeError, match="SparseTensor"):
        sparse_collate([torch.zeros(3)])


def test_collate_fn():
    samples = [{"input": _sample(4, k), "label": np.array([k, k]), "name": f"s{k}", "meta": {"id": torch.tensor(k)}}
               for k in range(3)]
    batch = sparse_collate_fn(samples)
    assert len(batch["input"]) == 12 and batch["input"].coords[:, 0].max() == 2
    assert batch["label"].shape == (3, 2) and batch["name"] == ["s0", "s1", "s2"]
    assert batch["meta"]["id"].tolist() == [0, 1, 2]
