"""Input generators shared by tests and benchmarks: random clouds and LiDAR-like scans."""

import numpy as np
import torch
from torch import Tensor

from torchsparse.tensor import SparseTensor

__all__ = ["lidar_scan", "quantize_scan", "random_coords", "random_sparse_tensor"]


def random_coords(
    num_points: int,
    extent=(8, 8, 8),
    batch_size: int = 1,
    low=(0, 0, 0),
    seed: int = 0,
) -> Tensor:
    """Unique random voxel coordinates.

    Args:
        num_points: points drawn per sample before removing duplicates (at most this many remain).
        extent: per-axis number of voxels; coordinates lie in [low, low + extent).
        batch_size: number of samples.
        low: per-axis smallest coordinate (may be negative).
        seed: generator seed.

    Returns:
        int32 (N, 4) unique (batch, x, y, z), sorted.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch_size):
        xyz = torch.stack([torch.randint(lo, lo + e, (num_points,), generator=gen) for lo, e in zip(low, extent)], 1)
        rows.append(torch.cat([torch.full((num_points, 1), b), xyz], 1))
    return torch.unique(torch.cat(rows), dim=0).to(torch.int32)


def random_sparse_tensor(
    num_points: int,
    channels: int,
    extent=(8, 8, 8),
    batch_size: int = 1,
    low=(0, 0, 0),
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    with_range: bool = False,
) -> SparseTensor:
    """SparseTensor on `random_coords` with standard-normal features (N, channels)."""
    coords = random_coords(num_points, extent, batch_size, low, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    feats = torch.randn((coords.shape[0], channels), generator=gen, dtype=dtype)
    spatial_range = (batch_size, *(lo + e for lo, e in zip(low, extent))) if with_range else None
    return SparseTensor(feats.to(device), coords.to(device), spatial_range=spatial_range)


def lidar_scan(num_beams: int = 64, points_per_beam: int = 2048, seed: int = 0) -> np.ndarray:
    """A synthetic spinning-LiDAR scan: rings on a ground plane plus a few box-shaped obstacles.

    Returns:
        float32 (num_beams * points_per_beam, 4) as x, y, z (metres), intensity in [0, 1], like a KITTI .bin.
    """
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(-24.8, 2.0, num_beams))[:, None]
    azimuth = np.linspace(-np.pi, np.pi, points_per_beam, endpoint=False)[None, :]
    height = 1.73
    with np.errstate(divide="ignore"):
        ground = np.where(elevation < 0, height / np.tan(-elevation), 80.0)
    rng_dist = np.minimum(ground, 80.0) + np.zeros_like(azimuth)
    for _ in range(12):
        centre = rng.uniform(-np.pi, np.pi)
        width = rng.uniform(0.05, 0.3)
        distance = rng.uniform(5, 40)
        hit = (np.abs(np.angle(np.exp(1j * (azimuth - centre)))) < width) & (distance * np.tan(elevation) > -height)
        rng_dist = np.where(hit, np.minimum(rng_dist, distance), rng_dist)
    rng_dist = rng_dist + rng.normal(0, 0.02, rng_dist.shape)
    x = rng_dist * np.cos(elevation) * np.cos(azimuth)
    y = rng_dist * np.cos(elevation) * np.sin(azimuth)
    z = rng_dist * np.sin(elevation)
    intensity = rng.uniform(0, 1, rng_dist.shape)
    return np.stack([x, y, z, intensity], -1).reshape(-1, 4).astype(np.float32)


def quantize_scan(points: np.ndarray, voxel_size: float = 0.05, batch: int = 0) -> SparseTensor:
    """One voxel per occupied floor(xyz / voxel_size) cell of a LiDAR scan (`sparse_quantize`), holding the
    features of its first point. Not SemanticKITTI's voxelisation, which rounds (`torchsparse.datasets.voxelize_scan`).

    Args:
        points: float32 (N, 4) x, y, z, intensity (a KITTI .bin, or `lidar_scan()`).
        voxel_size: voxel edge in metres.
        batch: batch index written into the coordinates.

    Returns:
        SparseTensor with coords int32 (M, 4) sorted, shifted so that min x, y, z = 0, and feats float32 (M, 4).
    """
    from torchsparse.utils.quantize import sparse_quantize

    voxels, index = sparse_quantize(points[:, :3], voxel_size, return_index=True)
    voxels = voxels - voxels.min(0) if len(voxels) else voxels
    coords = np.concatenate([np.full((len(voxels), 1), batch, np.int32), voxels], 1)
    return SparseTensor(torch.from_numpy(np.ascontiguousarray(points[index])), torch.from_numpy(coords))
