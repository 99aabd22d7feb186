"""Voxelisation of point coordinates."""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from torchsparse.tensor import as_tensor

__all__ = ["sparse_quantize"]

Array = np.ndarray | Tensor


def sparse_quantize(
    coords: Array,
    voxel_size: float | Sequence[float] = 1.0,
    return_index: bool = False,
    return_inverse: bool = False,
):
    """Voxelises points and keeps one point per occupied voxel.

    Args:
        coords: (N, D) point coordinates (numpy array, torch tensor or any array with ``__dlpack__`` such as a
            CuPy array, viewed without a copy; float or integer), finite.
        voxel_size: edge length, one value or one per column, > 0.
        return_index: also return, per voxel, the row of its first point.
        return_inverse: also return, per point, the row of its voxel.

    Returns:
        voxels int32 (M, D) = unique(floor(coords / voxel_size)) sorted lexicographically, numpy for numpy
        input and torch (on the input's device) otherwise; then int64 indices (M,) if requested, with coords[indices] landing in
        voxels; then int64 inverse (N,) if requested, with voxels[inverse] the voxel of every point.
    """
    is_numpy = isinstance(coords, np.ndarray)
    points = torch.from_numpy(np.ascontiguousarray(coords)) if is_numpy else as_tensor(coords, "coords")
    if points.dim() != 2:
        raise ValueError(f"coords must be (N, D), got shape {tuple(points.shape)}")
    if points.dtype == torch.bool or points.is_complex():
        raise TypeError(f"coords must be real numbers, got {points.dtype}")
    sizes = torch.as_tensor(voxel_size, dtype=torch.float64, device=points.device).reshape(-1)
    if sizes.numel() not in (1, points.shape[1]) or not bool((sizes > 0).all()) or not bool(sizes.isfinite().all()):
        raise ValueError(f"voxel_size must be one positive number or {points.shape[1]} of them, got {voxel_size!r}")
    scaled = points.double() / sizes
    if not bool(torch.isfinite(scaled).all()):
        raise ValueError("coords contain NaN or inf")
    voxel = torch.floor(scaled)
    if voxel.numel() and (voxel.min() < -(2**31) or voxel.max() >= 2**31):
        raise ValueError("coords / voxel_size does not fit in int32")
    voxels, inverse = torch.unique(voxel.to(torch.int64), dim=0, return_inverse=True)
    voxels = voxels.to(torch.int32)
    outputs: list[Array] = [voxels]
    if return_index:
        rows = torch.arange(points.shape[0], device=points.device)
        index = torch.full((voxels.shape[0],), points.shape[0], dtype=torch.int64, device=points.device)
        outputs.append(index.scatter_reduce(0, inverse, rows, "amin"))
    if return_inverse:
        outputs.append(inverse)
    if is_numpy:
        outputs = [o.numpy() for o in outputs]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
