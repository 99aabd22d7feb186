"""Batching of samples holding SparseTensors."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torchsparse.tensor import SparseTensor, as_tensor

__all__ = ["sparse_collate", "sparse_collate_fn"]


def sparse_collate(inputs: Sequence[SparseTensor]) -> SparseTensor:
    """Merges single-sample tensors into one batch.

    Args:
        inputs: B tensors with batch index 0 everywhere, equal strides and channel counts.

    Returns:
        SparseTensor whose sample k carries batch index k; features and coordinates concatenated in order.
        spatial_range is (B, max X, max Y, max Z) when every input has one, else None.
    """
    if not inputs:
        raise ValueError("sparse_collate needs at least one SparseTensor")
    for k, x in enumerate(inputs):
        if not isinstance(x, SparseTensor):
            raise TypeError(f"inputs[{k}] must be a SparseTensor, got {type(x).__name__}")
        if x.stride != inputs[0].stride:
            raise ValueError(f"inputs[{k}] has stride {x.stride}, inputs[0] has {inputs[0].stride}")
        if len(x) and bool((x.coords[:, 0] != 0).any()):
            raise ValueError(f"inputs[{k}] must be a single sample with batch index 0")
    coords = torch.cat([x.coords for x in inputs])
    coords[:, 0] = torch.repeat_interleave(
        torch.arange(len(inputs), dtype=torch.int32, device=coords.device),
        torch.tensor([len(x) for x in inputs], device=coords.device),
    )
    ranges = [x.spatial_range for x in inputs]
    spatial_range = None
    if all(r is not None for r in ranges):
        spatial_range = (len(inputs), *(max(r[a] for r in ranges) for a in (1, 2, 3)))
    return SparseTensor(torch.cat([x.feats for x in inputs]), coords, inputs[0].stride, spatial_range)


def sparse_collate_fn(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate_fn for dict samples.

    SparseTensors are merged with `sparse_collate`, equally shaped tensors and arrays (NumPy, or any with
    ``__dlpack__`` such as CuPy, read without an intermediate copy) are stacked into a new first dimension, nested dicts are collated recursively, and anything else is returned as a list.
    """
    if not samples:
        raise ValueError("sparse_collate_fn needs at least one sample")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        first = values[0]
        if isinstance(first, SparseTensor):
            out[key] = sparse_collate(values)
        elif isinstance(first, dict):
            out[key] = sparse_collate_fn(values)
        elif _is_array(first) and all(_is_array(v) and tuple(v.shape) == tuple(first.shape) for v in values):
            out[key] = torch.stack(
                [torch.from_numpy(v) if isinstance(v, np.ndarray) else as_tensor(v, key) for v in values]
            )
        else:
            out[key] = values
    return out


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) or hasattr(value, "__dlpack__")
