"""Reading a point cloud file of any supported format: a SemanticKITTI / KITTI ``.bin``, or ``.pcd`` / ``.ply``
through open3d (the ``[io]`` extra: ``pip install "torchsparse[io]"``, open3d-cpu, which needs the system library
libusb-1.0, Debian's libusb-1.0-0)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from torchsparse.datasets.semantic_kitti import read_scan

__all__ = ["read_points"]


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Reads a point cloud.

    Args:
        path: a ``.bin`` (float32 x, y, z, remission rows), ``.pcd`` or ``.ply`` file.

    Returns:
        float32 (N, 4) x, y, z, intensity; intensity 0 for .pcd / .ply (open3d reads positions only).

    Raises:
        ValueError: an unsupported suffix, a corrupt or empty file, or a .pcd / .ply without open3d installed.
    """
    path = Path(path)
    if path.suffix == ".bin":
        return read_scan(path)
    if path.suffix not in (".pcd", ".ply"):
        raise ValueError(f"{path}: unsupported point-cloud format {path.suffix!r}; use .bin, .pcd or .ply")
    try:
        import open3d
    except ImportError:
        raise ValueError(f'reading {path.suffix} files needs open3d: pip install "torchsparse[io]"') from None
    cloud = open3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points, dtype=np.float32)
    if len(xyz) == 0:
        raise ValueError(f"{path}: no points read (missing, empty or corrupt file)")
    return np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], 1)
