// Schema of the hard_voxelize family: mmdet3d's hard voxelization as BEVFusion's LiDAR branch uses it (the points
// of each voxel gathered into a zero-padded buffer, with caps on points per voxel and on voxels).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // points float32/float64 (N, F), F >= 3, columns 0..2 = x, y, z (no NaN); voxel_size (3,) > 0; point_range
  // (6,) = (x_min, y_min, z_min, x_max, y_max, z_max). Both are rounded to float32 first, as mmdet3d does. The
  // grid has round((max - min) / size) voxels per axis; a point's voxel is floor((p - min) / size), computed in
  // the points' dtype, and points whose voxel falls outside the grid are dropped. Voxels are numbered in the
  // order of their first point; a new voxel beyond max_voxels (>= 0) is dropped with all its points, and a voxel
  // keeps its first max_points (>= 1) points in input order. Returns voxels (M, max_points, F) of the points'
  // dtype, zero padded; coords int32 (M, 3) as (x, y, z) voxel indices; num_points int32 (M,) in [1, max_points].
  m.def("hard_voxelize(Tensor points, float[] voxel_size, float[] point_range, int max_points, int max_voxels) "
        "-> (Tensor voxels, Tensor coords, Tensor num_points)");
  // The portable formulation of hard_voxelize_kernels.h (what the CUDA kernel runs), on the CPU too: same schema and
  // exactly the same result, for tests and benchmarks.
  m.def("hard_voxelize_portable(Tensor points, float[] voxel_size, float[] point_range, int max_points, "
        "int max_voxels) -> (Tensor voxels, Tensor coords, Tensor num_points)");
}
