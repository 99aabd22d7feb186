"""Functional sparse layers."""

from torchsparse.nn.functional.bev import to_bev
from torchsparse.nn.functional.bev_pool import bev_pool
from torchsparse.nn.functional.conv import conv3d
from torchsparse.nn.functional.norm import group_norm
from torchsparse.nn.functional.point_voxel import initial_voxelize, point_to_voxel, voxel_to_point
from torchsparse.nn.functional.pooling import avg_pool3d, global_avg_pool, global_max_pool, max_pool3d

__all__ = [
    "avg_pool3d", "bev_pool", "conv3d", "global_avg_pool", "global_max_pool", "group_norm", "initial_voxelize", "max_pool3d",
    "point_to_voxel", "to_bev", "voxel_to_point",
]
