"""Thin typed wrappers over the torchsparse:: operators, with their fake kernels and autograd formulas.

The Triton kernels (`torchsparse.ops.triton`: implicit_gemm, implicit_gemm_orders) are imported when triton is
installed (it comes with torch's CUDA wheels); HAS_TRITON says whether they are.
"""

import importlib.util

from torchsparse.ops.bev_pool import BEVPoolPlan, bev_pool, bev_pool_apply, bev_pool_plan
from torchsparse.ops.convolution import (
    FP16_CHANNELS_PER_SUM,
    conv3d,
    conv3d_fused,
    conv3d_grouped,
    conv3d_weight_grad,
    conv3d_weight_grad_grouped,
    cpu_has_avx512fp16,
)
from torchsparse.ops.hard_voxelize import hard_voxelize, voxelize_mean
from torchsparse.ops.hashing import (
    BATCH_MAX,
    COORD_MAX,
    COORD_MIN,
    HashTable,
    hash_build,
    hash_capacity,
    hash_query,
    pack_coords,
    unpack_coords,
)
from torchsparse.ops.kernel_map import (
    SortedIndex,
    generative_coords,
    kernel_indices,
    kernel_map,
    kernel_map_pairs,
    sorted_index,
    strided_coords,
)
from torchsparse.ops.point_voxel import devoxelize, point_voxel_count, point_voxel_query, voxelize

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    from torchsparse.ops import triton
    from torchsparse.ops.triton import implicit_gemm, implicit_gemm_orders

__all__ = [
    "BATCH_MAX",
    "COORD_MAX",
    "COORD_MIN",
    "FP16_CHANNELS_PER_SUM",
    "HAS_TRITON",
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
    "cpu_has_avx512fp16",
    "devoxelize",
    "generative_coords",
    "hard_voxelize",
    "hash_build",
    "hash_capacity",
    "hash_query",
    "kernel_indices",
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
if HAS_TRITON:
    __all__ += ["implicit_gemm", "implicit_gemm_orders", "triton"]
