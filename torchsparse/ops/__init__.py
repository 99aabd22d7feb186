"""Thin typed wrappers over the torchsparse:: operators, with their fake kernels and autograd formulas."""

from torchsparse.ops.bev_pool import BEVPoolCache, BEVPoolPlan, bev_pool, bev_pool_apply, bev_pool_plan
from torchsparse.ops.convolution import (
    conv3d,
    conv3d_fused,
    conv3d_grouped,
    conv3d_weight_grad,
    conv3d_weight_grad_grouped,
)
from torchsparse.ops.hard_voxelize import hard_voxelize, voxelize_mean
from torchsparse.ops.hashing import HashTable, hash_build, hash_query, pack_coords, unpack_coords
from torchsparse.ops.kernel_map import (
    SortedIndex,
    generative_coords,
    kernel_map,
    kernel_map_pairs,
    sorted_index,
    strided_coords,
)
from torchsparse.ops.point_voxel import devoxelize, point_voxel_count, point_voxel_query, voxelize

__all__ = [
    "BEVPoolCache",
    "BEVPoolPlan",
    "HashTable",
    "SortedIndex",
    "bev_pool",
    "bev_pool_apply",
    "bev_pool_plan",
    "conv3d",
    "conv3d_fused",
    "conv3d_grouped",
    "conv3d_weight_grad",
    "conv3d_weight_grad_grouped",
    "devoxelize",
    "generative_coords",
    "hard_voxelize",
    "hash_build",
    "hash_query",
    "kernel_map",
    "kernel_map_pairs",
    "pack_coords",
    "point_voxel_count",
    "point_voxel_query",
    "sorted_index",
    "strided_coords",
    "unpack_coords",
    "voxelize",
    "voxelize_mean",
]
