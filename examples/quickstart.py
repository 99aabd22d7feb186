"""Quickstart: voxelise a real SemanticKITTI scan and run a 3-layer sparse network on it.

Usage:
    python examples/quickstart.py [path/to/scan.bin]
"""

import argparse
import pathlib
import time

import numpy as np
import torch

import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.utils import sparse_quantize

SCAN = pathlib.Path(__file__).resolve().parent.parent / "assets" / "semantickitti" / "000000.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", nargs="?", default=SCAN, type=pathlib.Path, help="KITTI .bin, float32 (N, 4)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="voxel edge in metres")
    args = parser.parse_args()

    points = np.fromfile(args.scan, dtype=np.float32).reshape(-1, 4)  # x, y, z, remission
    voxels, index = sparse_quantize(points[:, :3], args.voxel_size, return_index=True)
    voxels -= voxels.min(0)
    coords = torch.from_numpy(np.concatenate([np.zeros((len(voxels), 1), np.int32), voxels], 1))
    x = SparseTensor(torch.from_numpy(points[index]), coords)
    print(f"{len(points)} points -> {len(x)} voxels of {args.voxel_size} m")

    net = torch.nn.Sequential(
        spnn.Conv3d(4, 32, 3), spnn.BatchNorm(32), spnn.ReLU(),
        spnn.Conv3d(32, 64, 2, stride=2), spnn.BatchNorm(64), spnn.ReLU(),
        spnn.Conv3d(64, 32, 2, stride=2, transposed=True),
    ).eval()
    with torch.inference_mode():
        start = time.perf_counter()
        y = net(x)
        elapsed = time.perf_counter() - start
    print(f"output: {y}")
    print(f"forward (including kernel maps): {elapsed * 1e3:.1f} ms on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
