"""Moving features between points and voxels (SPVConv), with TorchSparse v2.1 semantics by default."""

from typing import Literal

import torch
from torch import Tensor

from torchsparse import ops
from torchsparse.tensor import PointTensor, SparseTensor

__all__ = ["initial_voxelize", "point_to_voxel", "voxel_to_point"]

Orphans = Literal["clamp", "drop"]


def initial_voxelize(
    z: PointTensor, init_res: float = 1.0, after_res: float = 1.0
) -> tuple[SparseTensor, PointTensor]:
    """Voxelises points: one voxel per occupied cell, features averaged over its points.

    Args:
        z: points with coordinates in units of `init_res`.
        init_res, after_res: the points' resolution and the voxel size, both > 0; coordinates are scaled by
            init_res / after_res before flooring.

    Returns:
        The voxels (stride 1, coordinates floor(scaled), sorted in (batch, x, y, z) order, features the mean of
        their points) and the points with scaled coordinates, whose cache already holds every point's voxel.
    """
    if not (init_res > 0 and after_res > 0):
        raise ValueError(f"init_res and after_res must be > 0, got {init_res} and {after_res}")
    scale = init_res / after_res
    coords = z.coords if scale == 1 else torch.cat([z.coords[:, :1], z.coords[:, 1:] * scale], 1)
    cells = torch.floor(coords).to(torch.int64)
    voxel_coords, inverse = torch.unique(cells, dim=0, return_inverse=True)
    counts = ops.point_voxel_count(inverse, voxel_coords.shape[0])
    x = SparseTensor(_voxelize(z.feats, inverse, counts), voxel_coords)
    points = PointTensor(z.feats, coords)
    points.cache.queries[((1, 1, 1), 1)] = (x.coords, inverse.unsqueeze(1), torch.ones_like(coords[:, :1]))
    return x, points


def _query(x: SparseTensor, z: PointTensor, neighbours: int) -> tuple[Tensor, Tensor]:
    key = (x.stride, neighbours)
    entry = z.cache.queries.get(key)
    if entry is not None and entry[0] is x.coords:
        return entry[1], entry[2]
    if z.coords.device != x.coords.device:
        raise ValueError(
            f"points and voxels must be on the same device, got {z.coords.device} and {x.device}"
        )
    with torch.profiler.record_function("torchsparse.kernel_map"):
        table, _ = ops.hash_build(ops.pack_coords(x.coords))
        idx, weights = ops.point_voxel_query(z.coords, table, x.stride, neighbours)
    z.cache.queries[key] = (x.coords, idx, weights)
    return idx, weights


def point_to_voxel(x: SparseTensor, z: PointTensor, orphans: Orphans = "clamp") -> SparseTensor:
    """Averages point features into the voxels of `x` (each point into the voxel floor(p / x.stride)).

    Args:
        x: voxels; only their sites, stride and cache are used.
        z: points with features (N, C) of x's dtype (float16 / bfloat16 are averaged in float32).
        orphans: what happens to a point whose voxel is not among x's sites. "clamp" (default) reproduces
            TorchSparse v2.1, which SPVCNN / SPVNAS checkpoints were trained with: the point is counted into
            voxel row 0. "drop" leaves it out (TorchSparse v1.4). Voxels without points get zero features.

    Returns:
        SparseTensor on x's sites with features (M, C).
    """
    if orphans not in ("clamp", "drop"):
        raise ValueError(f"orphans must be 'clamp' or 'drop', got {orphans!r}")
    idx = _query(x, z, 1)[0][:, 0]
    if orphans == "clamp" and len(x) > 0:
        idx = idx.clamp(min=0)
    counts = ops.point_voxel_count(idx, len(x))
    return x.replace(_voxelize(z.feats, idx, counts))


def voxel_to_point(x: SparseTensor, z: PointTensor, neighbours: int = 8) -> PointTensor:
    """Interpolates voxel features at the points.

    Args:
        x: voxels with features (M, C) (float16 / bfloat16 are interpolated in float32).
        z: points; their features are not used.
        neighbours: 8 for trilinear interpolation over the voxels at {0, 1}^3 around floor(p / x.stride) with
            renormalised weights (TorchSparse v2.1); 1 to copy the features of the voxel floor(p / x.stride).
            Points without any present neighbour get zero features.

    Returns:
        PointTensor with z's coordinates and cache and features (N, C).
    """
    if neighbours not in (1, 8):
        raise ValueError(f"neighbours must be 1 or 8, got {neighbours}")
    idx, weights = _query(x, z, neighbours)
    dtype = _accumulation_dtype(x.feats)
    return z.replace(ops.devoxelize(x.feats.to(dtype), idx, weights.to(dtype)).to(x.feats.dtype))


# The point-voxel kernels sum in their features' dtype: float16 / bfloat16 features (torch.autocast) are averaged
# and interpolated in float32 and the result is rounded back once.


def _accumulation_dtype(feats: Tensor) -> torch.dtype:
    return torch.float32 if feats.dtype in (torch.float16, torch.bfloat16) else feats.dtype


def _voxelize(feats: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
    return ops.voxelize(feats.to(_accumulation_dtype(feats)), idx, counts).to(feats.dtype)
