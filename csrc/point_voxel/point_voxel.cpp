// Schemas of the point-voxel family (SPVConv): queries of float points against voxels, and the scatter-mean /
// trilinear-gather pair that moves features between points and voxels (TorchSparse v2.1 semantics).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // points float (N, 4) as (batch, x, y, z) in stride-1 voxel units, batch integral; table_keys / table_values
  // a hash table over the packed voxel coordinates of a tensor at `stride` (hash_build). With q = xyz / stride
  // and f = floor(q): neighbours == 1 gives idx int64 (N, 1), the row of voxel f or -1, and weights (N, 1) of
  // the points' dtype, 1 where found. neighbours == 8 gives the rows of the voxels f + d for d in {0, 1}^3 in
  // the order (0,0,0), (0,0,1), (0,1,0), ..., (1,1,1) (x slowest, z fastest) and trilinear weights
  // prod_a (d_a ? q_a - f_a : f_a + 1 - q_a), set to 0 for absent voxels and renormalised by (sum + 1e-8).
  // Voxels outside the packable range count as absent.
  m.def(
      "point_voxel_query(Tensor points, Tensor table_keys, Tensor table_values, int[] stride, int neighbours) "
      "-> (Tensor idx, Tensor weights)");
  // idx int64 (N,) with values in [-1, num_voxels) -> int64 (num_voxels,): how many entries equal each voxel.
  m.def("point_voxel_count(Tensor idx, SymInt num_voxels) -> Tensor");
  // feats float (N, C), idx int64 (N,) in [-1, M), counts int64 (M,) -> (M, C): out[m] = sum of feats[n] with
  // idx[n] == m, divided by counts[m] (rows with counts[m] == 0 are zero). Rows with idx -1 are dropped.
  m.def("voxelize(Tensor feats, Tensor idx, Tensor counts) -> Tensor");
  // feats float (M, C), idx int64 (N, K) in [-1, M), weights (N, K) of feats' dtype ->
  // (N, C): out[n] = sum over k with idx[n, k] >= 0 of weights[n, k] * feats[idx[n, k]].
  m.def("devoxelize(Tensor feats, Tensor idx, Tensor weights) -> Tensor");
  // Gradient of devoxelize with respect to feats: grad_output (N, C) -> (num_voxels, C), the scatter-add of
  // weights[n, k] * grad_output[n] into row idx[n, k]. Deterministic: no atomics.
  m.def("devoxelize_backward(Tensor grad_output, Tensor idx, Tensor weights, SymInt num_voxels) -> Tensor");
  // The portable kernels of point_voxel_kernels.h (the bodies the CUDA kernels run), on the CPU too: same schemas and
  // results as the ops above (bit for bit), for tests and benchmarks.
  m.def("point_voxel_count_portable(Tensor idx, SymInt num_voxels) -> Tensor");
  m.def("voxelize_portable(Tensor feats, Tensor idx, Tensor counts) -> Tensor");
  m.def("devoxelize_portable(Tensor feats, Tensor idx, Tensor weights) -> Tensor");
  m.def("devoxelize_backward_portable(Tensor grad_output, Tensor idx, Tensor weights, SymInt num_voxels) -> Tensor");
}
