"""Hard voxelization of raw LiDAR points (csrc/hard_voxelize/), as mmdet3d's `Voxelization` in BEVFusion.

Semantics (mmdet3d's deterministic CPU/CUDA kernels, BEVFusion's (x, y, z) coordinate order): voxel_size and
point_range are rounded to float32; the grid has round((max - min) / size) voxels per axis; a point lies in voxel
floor((p - min) / size), computed in the points' dtype, and is dropped when that is outside the grid. Voxels are
numbered in the order of their first point; at most max_voxels voxels (a later new voxel is dropped with all its
points) and at most max_points points per voxel (the first ones in input order) are kept. Not differentiable.

The module name differs from the family of `torchsparse.ops.voxelize` (the SPVConv scatter mean): a submodule
``torchsparse.ops.voxelize`` would replace that function on the package as soon as it was imported.

The CUDA kernel is a portable formulation (csrc/hard_voxelize/hard_voxelize_kernels.h: voxel keys per point, a stable
sort, runs numbered by their first point) with exactly the CPU result; `hard_voxelize_portable` runs it on the CPU,
where the serial kernel is faster, so that tests check the GPU's logic without a GPU.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

import torchsparse._C  # noqa: F401

__all__ = ["hard_voxelize", "hard_voxelize_portable", "voxelize_mean"]


def _floats(values: Sequence[float], count: int, name: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != count:
        raise ValueError(f"{name} must have {count} values, got {len(values)}")
    return values


def _arguments(points, voxel_size, point_range, max_points, max_voxels) -> tuple:
    """The op's arguments in the schema's types: 3 and 6 floats, two ints."""
    return (
        points,
        _floats(voxel_size, 3, "voxel_size"),
        _floats(point_range, 6, "point_range"),
        int(max_points),
        int(max_voxels),
    )


def hard_voxelize(
    points: Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gathers points into voxels with caps, as mmdet3d's hard voxelization.

    Args:
        points: float32/float64 (N, F), F >= 3, columns x, y, z first; NaN in x, y, z is an error.
        voxel_size: (x, y, z) sizes, > 0.
        point_range: (x_min, y_min, z_min, x_max, y_max, z_max).
        max_points: points kept per voxel, >= 1.
        max_voxels: voxels kept, >= 0.

    Returns:
        voxels (M, max_points, F) of the points' dtype, each voxel's points in input order, zero padded;
        coords int32 (M, 3) as (x, y, z) voxel indices, distinct; num_points int32 (M,) in [1, max_points].
        Voxels are in the order of their first point.
    """
    return torch.ops.torchsparse.hard_voxelize(
        *_arguments(points, voxel_size, point_range, max_points, max_voxels)
    )


def hard_voxelize_portable(
    points: Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """`hard_voxelize` through the portable formulation that the CUDA op runs: exactly the same result."""
    return torch.ops.torchsparse.hard_voxelize_portable(
        *_arguments(points, voxel_size, point_range, max_points, max_voxels)
    )


def voxelize_mean(
    points: Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard voxelization followed by the mean of each voxel's kept points (mmdet3d's HardSimpleVFE).

    Args:
        points, voxel_size, point_range, max_points, max_voxels: as in `hard_voxelize`.

    Returns:
        feats (M, F) of the points' dtype, the mean over each voxel's kept points; coords int32 (M, 3) as
        (x, y, z); num_points int32 (M,).
    """
    voxels, coords, num_points = hard_voxelize(points, voxel_size, point_range, max_points, max_voxels)
    feats = voxels.sum(1) / num_points.to(voxels.dtype).unsqueeze(1)
    return feats, coords, num_points


@torch.library.register_fake("torchsparse::hard_voxelize")
@torch.library.register_fake("torchsparse::hard_voxelize_portable")
def _(points, voxel_size, point_range, max_points, max_voxels):
    torch._check_value(
        points.dim() == 2 and points.shape[1] >= 3, lambda: "points must be (N, F) with F >= 3"
    )
    torch._check_value(len(voxel_size) == 3, lambda: "voxel_size must have 3 values")
    torch._check_value(len(point_range) == 6, lambda: "point_range must have 6 values")
    torch._check_value(max_points >= 1, lambda: "max_points must be >= 1")
    torch._check_value(max_voxels >= 0, lambda: "max_voxels must be >= 0")
    voxels = torch.library.get_ctx().new_dynamic_size()
    return (
        points.new_empty((voxels, max_points, points.shape[1])),
        points.new_empty((voxels, 3), dtype=torch.int32),
        points.new_empty((voxels,), dtype=torch.int32),
    )
