"""References and inputs for bev_pool: the index_add_ oracle, the LSS cumsum trick, and a camera-frustum geometry.

`reference_bev_pool` sums with ``index_add_`` over the flat cell id in input order, which is the order in which
`torchsparse.ops.bev_pool` sums each cell, so the two agree bit for bit (forward and, through autograd, backward).
`cumsum_bev_pool` is the "cumsum trick" of Lift-Splat-Shoot (sort by rank, cumulative sum, differences at the
ends of the runs): the baseline BEVFusion reports its >40x speed-up against; it is exact only up to rounding.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["cumsum_bev_pool", "frustum_bev_coords", "random_bev_points", "reference_bev_pool"]


def _flat_cells(coords: Tensor, batch_size: int, grid: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(kept bool (N,), rank int64 (N,)) for coords (x, y, z, b) in a (batch_size, Z, X, Y) grid."""
    nz, nx, ny = grid
    x, y, z, b = coords.long().unbind(1)
    kept = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz) & (b >= 0) & (b < batch_size)
    return kept, ((b * nz + z) * nx + x) * ny + y


def _to_grid(flat: Tensor, batch_size: int, grid: Sequence[int]) -> Tensor:
    """(B * Z * X * Y, C) -> contiguous (B, C, Z, X, Y)."""
    nz, nx, ny = grid
    return flat.view(batch_size, nz, nx, ny, flat.shape[1]).permute(0, 4, 1, 2, 3).contiguous()


def reference_bev_pool(feats: Tensor, coords: Tensor, batch_size: int, grid: Sequence[int]) -> Tensor:
    """The oracle: float (N, C), int (N, 4) as (x, y, z, b) -> (B, C, Z, X, Y) by index_add_ over the cell id.

    Points outside the grid are dropped. Differentiable in feats through PyTorch's own autograd.
    """
    kept, rank = _flat_cells(coords, batch_size, grid)
    flat = feats.new_zeros((batch_size * math.prod(grid), feats.shape[1]))
    flat = flat.index_add(0, rank[kept], feats[kept])
    return _to_grid(flat, batch_size, grid)


def cumsum_bev_pool(feats: Tensor, coords: Tensor, batch_size: int, grid: Sequence[int]) -> Tensor:
    """The LSS cumsum trick: sort by rank, cumsum, keep the last row of every run and take differences.

    Same arguments and result as `reference_bev_pool`, up to the rounding of the running sums.
    """
    kept, rank = _flat_cells(coords, batch_size, grid)
    x, rank = feats[kept], rank[kept]
    rank, order = torch.sort(rank, stable=True)
    x = x[order].cumsum(0)
    last = torch.ones_like(rank, dtype=torch.bool)
    last[:-1] = rank[1:] != rank[:-1]
    x, rank = x[last], rank[last]
    x = torch.cat([x[:1], x[1:] - x[:-1]])
    flat = feats.new_zeros((batch_size * math.prod(grid), feats.shape[1]))
    flat[rank] = x
    return _to_grid(flat, batch_size, grid)


def frustum_bev_coords(
    batch_size: int = 1,
    cameras: int = 6,
    depth_bound: tuple[float, float, float] = (1.0, 60.0, 0.5),
    feature_size: tuple[int, int] = (32, 88),
    image_size: tuple[int, int] = (256, 704),
    xy_bound: tuple[float, float, float] = (-54.0, 54.0, 0.3),
    z_bound: tuple[float, float, float] = (-10.0, 10.0, 20.0),
) -> tuple[Tensor, int, tuple[int, int, int]]:
    """BEV cells of the camera-frustum points of a nuScenes-like 6-camera ring with BEVFusion's settings.

    Cameras are pinholes (focal length 560 px on the 256 x 704 input, principal point at the centre) at 1.6 m
    height, 0.5-1.5 m from the LiDAR origin, looking horizontally at yaws 0, +-55, +-110 and 180 degrees. Each
    camera's frustum has depth_bound[0] .. depth_bound[1] step depth_bound[2] (118 depths) times the feature grid
    (32 x 88) points, ordered (batch, camera, depth, row, column) as BEVFusion flattens them. Cells are
    floor((p - lower) / step) per axis.

    Returns:
        coords int32 (batch_size * cameras * D * H * W, 4) as (x, y, z, b), many outside the grid (as in the
        model); batch_size; grid (Z, X, Y) = (1, 360, 360) by default.
    """
    fh, fw = feature_size
    ih, iw = image_size
    depth = torch.arange(*depth_bound, dtype=torch.float64)
    v = torch.linspace(0, ih - 1, fh, dtype=torch.float64)
    u = torch.linspace(0, iw - 1, fw, dtype=torch.float64)
    d, vv, uu = torch.meshgrid(depth, v, u, indexing="ij")
    focal = 560.0
    # Camera frame: x right, y down, z forward.
    cam = torch.stack([(uu - iw / 2) * d / focal, (vv - ih / 2) * d / focal, d], -1)
    yaws = [0.0, 55.0, -55.0, 110.0, -110.0, 180.0][:cameras]
    offsets = [1.5, 0.8, 0.8, 0.5, 0.5, 1.0][:cameras]
    points = []
    for yaw, offset in zip(yaws, offsets):
        t = math.radians(yaw)
        forward = torch.tensor([math.cos(t), math.sin(t), 0.0], dtype=torch.float64)
        right = torch.tensor([math.sin(t), -math.cos(t), 0.0], dtype=torch.float64)
        down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
        origin = offset * forward + torch.tensor([0.0, 0.0, 1.6], dtype=torch.float64)
        points.append(origin + cam[..., :1] * right + cam[..., 1:2] * down + cam[..., 2:] * forward)
    xyz = torch.stack(points).reshape(-1, 3)
    lower = torch.tensor([xy_bound[0], xy_bound[0], z_bound[0]], dtype=torch.float64)
    step = torch.tensor([xy_bound[2], xy_bound[2], z_bound[2]], dtype=torch.float64)
    cells = torch.floor((xyz - lower) / step).to(torch.int32)
    grid = (
        round((z_bound[1] - z_bound[0]) / z_bound[2]),
        round((xy_bound[1] - xy_bound[0]) / xy_bound[2]),
        round((xy_bound[1] - xy_bound[0]) / xy_bound[2]),
    )
    coords = torch.cat(
        [torch.cat([cells, torch.full((len(cells), 1), b, dtype=torch.int32)], 1) for b in range(batch_size)]
    )
    return coords, batch_size, grid


def random_bev_points(device="cpu", n=600, channels=5, batch_size=2, grid=(2, 5, 4), dtype=torch.float64, seed=0):
    """Random points for bev_pool, many sharing a cell, some outside the grid on every axis and in the batch.

    Returns:
        feats (n, channels) of `dtype` and int32 coords (n, 4) as (x, y, z, b), on `device`.
    """
    g = torch.Generator().manual_seed(seed)
    z, x, y = grid
    coords = torch.stack(
        [
            torch.randint(-1, x + 1, (n,), generator=g),
            torch.randint(-1, y + 1, (n,), generator=g),
            torch.randint(-1, z + 1, (n,), generator=g),
            torch.randint(-1, batch_size + 1, (n,), generator=g),
        ],
        1,
    ).int()
    feats = torch.randn(n, channels, generator=g, dtype=dtype)
    return feats.to(device), coords.to(device)
