// Schemas of the convolution family: sparse convolution by gather-GEMM-scatter over a kernel map.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // input float (N_in, C_in), weight (K, C_in, C_out) of the same dtype; in_rows / out_rows int32 (P,) grouped
  // by offset with sizes int64 (K,) on the CPU (kernel_map_pairs); within one offset every row appears at
  // most once. Returns (num_out, C_out): out[o] = sum over pairs (i, o) at offset k of input[i] @ weight[k].
  // An offset whose pairs are the identity (the centre of a submanifold conv) runs as one GEMM on the input
  // without gather or scatter.
  m.def(
      "conv3d(Tensor input, Tensor weight, Tensor in_rows, Tensor out_rows, Tensor sizes, SymInt num_out) "
      "-> Tensor");
  // The same convolution by output-stationary tiles over M output rows. nbmap int32 (M, K) gives the input row of
  // (output m, offset k) or -1 (kernel_map); it is checked and fixes M, but the kernels read the same map as pairs
  // (in_rows / out_rows / sizes, which also serve the backward pass), whose out_rows must ascend strictly within
  // each offset (kernel_map_pairs' order; ValueError otherwise). Output rows are split into tiles of `tile` rows
  // processed in parallel; per tile and offset, the offset's pairs within the tile (one run of its pairs) are
  // multiplied with weight[k] by one GEMM whose result is added into the tile, which stays in cache. No atomics:
  // the result does not depend on the thread count. Returns (M, C_out).
  // Epilogue on each finished tile: out = conv + bias + residual, then max(., 0) when relu; bias (C_out,) and
  // residual (M, C_out) of input's dtype, each optional. Every floating dtype on the CPU: float32 tiles are
  // accumulated in the output (an AVX-512 micro-kernel, else MKL), float64 by MKL; bfloat16 / float16 rows are
  // widened to float32 on gather, summed in a float32 tile and rounded once by the epilogue. With
  // reduced_precision_reduction, float16 on a CPU with AVX512-FP16 multiplies in float16 and sums the products in
  // float16 over runs of 2 * FP16_PAIRS_PER_SUM input channels, those sums in float32 (tile_cpu.h); elsewhere the
  // flag changes nothing. On CUDA it runs the
  // gather-GEMM-scatter path of conv3d_grouped on the pairs (default grouping parameters) then the epilogue as
  // ATen ops; nbmap is checked but not read.
  m.def(
      "conv3d_fused(Tensor input, Tensor weight, Tensor nbmap, Tensor in_rows, Tensor out_rows, Tensor sizes, "
      "int tile, Tensor? bias=None, Tensor? residual=None, bool relu=False, bool reduced_precision_reduction=False) "
      "-> Tensor");
  // Gradient of conv3d with respect to weight: (K, C_in, C_out), grad[k] = input[in]^T @ grad_output[out] over
  // the pairs of offset k. grad_output (num_out, C_out).
  m.def(
      "conv3d_weight_grad(Tensor input, Tensor grad_output, Tensor in_rows, Tensor out_rows, Tensor sizes) "
      "-> Tensor");
  // conv3d by the portable path that CUDA runs for conv3d (convolution_kernels.h), also on the CPU: one gather of
  // all offsets into a padded buffer, one GEMM per lone offset and one batched GEMM per group of offsets (the
  // symmetric offsets k and K-1-k of equal counts always; others when count >= (1 - group_tolerance) * the group's
  // largest count <= group_max_pairs), an identity offset as one GEMM on the input, and an output-stationary sum
  // (pairs stably sorted by output row, summed in offset order, float accumulation for half / bfloat16). No
  // atomics: bitwise repeatable. group_tolerance in [0, 1], group_max_pairs >= 0. Any multiset of pairs is summed,
  // even a row repeated within one offset.
  m.def(
      "conv3d_grouped(Tensor input, Tensor weight, Tensor in_rows, Tensor out_rows, Tensor sizes, SymInt num_out, "
      "float group_tolerance=0.25, int group_max_pairs=65536) -> Tensor");
  // conv3d_weight_grad by the portable path that CUDA runs for it: both operands gathered into the grouped layout
  // of conv3d_grouped (zero padding), one (batched) GEMM A^T B per group, an identity offset as one GEMM.
  m.def(
      "conv3d_weight_grad_grouped(Tensor input, Tensor grad_output, Tensor in_rows, Tensor out_rows, Tensor sizes, "
      "float group_tolerance=0.25, int group_max_pairs=65536) -> Tensor");
}
