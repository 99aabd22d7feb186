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
  // The same convolution by output-stationary tiles: nbmap int32 (M, K) gives the input row of (output m,
  // offset k) or -1 (kernel_map). Output rows are split into tiles of `tile` rows processed in parallel; per
  // tile and offset, the present inputs are gathered and multiplied with weight[k] by one GEMM whose result
  // is added into the tile, which stays in cache. No atomics: the result does not depend on the thread count.
  // in_rows / out_rows / sizes describe the same map as pairs; they serve the backward pass. Returns (M, C_out).
  // float32 and float64 on the CPU.
  m.def(
      "conv3d_fused(Tensor input, Tensor weight, Tensor nbmap, Tensor in_rows, Tensor out_rows, Tensor sizes, "
      "int tile) -> Tensor");
  // Gradient of conv3d with respect to weight: (K, C_in, C_out), grad[k] = input[in]^T @ grad_output[out] over
  // the pairs of offset k. grad_output (num_out, C_out).
  m.def(
      "conv3d_weight_grad(Tensor input, Tensor grad_output, Tensor in_rows, Tensor out_rows, Tensor sizes) "
      "-> Tensor");
}
