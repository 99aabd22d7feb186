"""Inputs and states shared by the model tests: the bundled scan voxelised as SPVNAS does at test time, and
BatchNorm layers with non-trivial statistics (so that eval-mode outputs and BatchNorm folding depend on them)."""

import numpy as np
import torch
from torch import nn

from torchsparse.assets import sample_scan
from torchsparse.tensor import SparseTensor
from torchsparse.utils import sparse_quantize

__all__ = ["randomise_batchnorm", "rounded_scan"]


def rounded_scan(num_voxels: int | None = None) -> SparseTensor:
    """The first `num_voxels` voxels (all when None) of the bundled scan at 5 cm: round(xyz / 0.05) shifted to 0,
    one voxel per cell holding its first point's (x, y, z, remission), batch 0, as SPVNAS feeds it at test time."""
    points = np.fromfile(sample_scan(), dtype=np.float32).reshape(-1, 4)
    grid = np.round(points[:, :3] / 0.05).astype(np.int32)
    grid -= grid.min(0)
    _, index = sparse_quantize(grid, 1, return_index=True)
    index = index[:num_voxels]
    coords = np.concatenate([np.zeros((len(index), 1), np.int32), grid[index]], 1)
    return SparseTensor(torch.from_numpy(points[index]), torch.from_numpy(coords))


def randomise_batchnorm(model: nn.Module, seed: int = 1, scale: float = 0.2, affine: bool = True) -> None:
    """Draws every BatchNorm1d's running mean (N(0, scale^2)) and variance (U[0.5, 1.5)), and with `affine` its
    weight (U[0.5, 1.5)) and bias (N(0, scale^2)), from one generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * scale)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * scale)
