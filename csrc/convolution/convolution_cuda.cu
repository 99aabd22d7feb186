// CUDA kernels of the convolution family: the portable path of convolution_kernels.h (bodies over a grid on the
// current stream, GEMMs through cuBLAS). conv3d and conv3d_fused use the default grouping parameters.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "convolution/convolution_kernels.h"

namespace torchsparse {
namespace {

at::Tensor conv3d_grouped_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_rows,
                               const at::Tensor& out_rows, const at::Tensor& sizes, int64_t num_out, double tolerance,
                               int64_t max_pairs) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return conv3d_grouped_with(input, weight, in_rows, out_rows, sizes, num_out, tolerance, max_pairs, CudaLauncher{});
}

at::Tensor conv3d_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_rows,
                       const at::Tensor& out_rows, const at::Tensor& sizes, int64_t num_out) {
  return conv3d_grouped_cuda(input, weight, in_rows, out_rows, sizes, num_out, kDefaultGroupTolerance,
                             kDefaultGroupMaxPairs);
}

at::Tensor conv3d_fused_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& nbmap,
                             const at::Tensor& in_rows, const at::Tensor& out_rows, const at::Tensor& sizes,
                             int64_t tile, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, bool relu,
                             bool /*reduced_precision_reduction: cuBLAS follows torch's own setting*/) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  check_weight(input, weight);
  // The result is computed from the pairs; nbmap is checked as on the CPU so that both devices accept the same calls.
  checked_nbmap(input, weight, nbmap, tile);
  const FusedEpilogue epilogue = checked_epilogue(input, weight, nbmap.size(0), bias, residual);
  auto out = conv3d_grouped_with(input, weight, in_rows, out_rows, sizes, nbmap.size(0), kDefaultGroupTolerance,
                                 kDefaultGroupMaxPairs, CudaLauncher{});
  // The epilogue in the CPU's order: (conv + bias) + residual, then ReLU.
  if (epilogue.bias.defined()) out.add_(epilogue.bias);
  if (epilogue.residual.defined()) out.add_(epilogue.residual);
  if (relu) out.relu_();
  return out;
}

at::Tensor conv3d_weight_grad_grouped_cuda(const at::Tensor& input, const at::Tensor& grad_output,
                                           const at::Tensor& in_rows, const at::Tensor& out_rows,
                                           const at::Tensor& sizes, double tolerance, int64_t max_pairs) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return conv3d_weight_grad_grouped_with(input, grad_output, in_rows, out_rows, sizes, tolerance, max_pairs,
                                         CudaLauncher{});
}

at::Tensor conv3d_weight_grad_cuda(const at::Tensor& input, const at::Tensor& grad_output, const at::Tensor& in_rows,
                                   const at::Tensor& out_rows, const at::Tensor& sizes) {
  return conv3d_weight_grad_grouped_cuda(input, grad_output, in_rows, out_rows, sizes, kDefaultGroupTolerance,
                                         kDefaultGroupMaxPairs);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("conv3d", &conv3d_cuda);
  m.impl("conv3d_fused", &conv3d_fused_cuda);
  m.impl("conv3d_weight_grad", &conv3d_weight_grad_cuda);
  m.impl("conv3d_grouped", &conv3d_grouped_cuda);
  m.impl("conv3d_weight_grad_grouped", &conv3d_weight_grad_grouped_cuda);
}

}  // namespace torchsparse
