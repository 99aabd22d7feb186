"""Reference implementations and input generators shared by tests and benchmarks."""

from torchsparse.testing.bev_pool_references import cumsum_bev_pool, frustum_bev_coords, reference_bev_pool
from torchsparse.testing.generators import lidar_scan, quantize_scan, random_coords, random_sparse_tensor
from torchsparse.testing.references import (
    brute_force_generative_coords,
    brute_force_kernel_map,
    brute_force_point_voxel_query,
    brute_force_strided_coords,
    dense_conv,
    dense_pool,
    kernel_indices,
    reference_devoxelize,
    reference_voxelize,
)

__all__ = [
    "brute_force_generative_coords",
    "brute_force_kernel_map",
    "brute_force_point_voxel_query",
    "brute_force_strided_coords",
    "cumsum_bev_pool",
    "dense_conv",
    "dense_pool",
    "frustum_bev_coords",
    "kernel_indices",
    "lidar_scan",
    "quantize_scan",
    "random_coords",
    "random_sparse_tensor",
    "reference_bev_pool",
    "reference_devoxelize",
    "reference_voxelize",
]
