// CUDA kernels of the bev_pool family: the portable bodies of bev_pool_kernels.h over a grid on the current stream.
// The plan equals the CPU plan exactly and pooling equals the CPU result bit for bit (same sums in the same order).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bev_pool/bev_pool_kernels.h"
#include "common/launch_cuda.cuh"

namespace torchsparse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bev_pool_plan_cuda(const at::Tensor& coords,
                                                                              int64_t batch_size,
                                                                              at::IntArrayRef grid) {
  const c10::cuda::OptionalCUDAGuard guard(coords.device());
  return bev_pool::bev_pool_plan_with(coords, batch_size, grid, CudaLauncher{});
}

at::Tensor bev_pool_cuda(const at::Tensor& feats, const at::Tensor& order, const at::Tensor& starts,
                         const at::Tensor& lengths, const at::Tensor& cells, int64_t batch_size, int64_t nz,
                         int64_t nx, int64_t ny) {
  const c10::cuda::OptionalCUDAGuard guard(feats.device());
  return bev_pool::bev_pool_with(feats, order, starts, lengths, cells, batch_size, nz, nx, ny, CudaLauncher{});
}

at::Tensor bev_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& order, const at::Tensor& starts,
                                  const at::Tensor& lengths, const at::Tensor& cells, int64_t num_points) {
  const c10::cuda::OptionalCUDAGuard guard(grad_output.device());
  return bev_pool::bev_pool_backward_with(grad_output, order, starts, lengths, cells, num_points, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("bev_pool_plan", &bev_pool_plan_cuda);
  m.impl("bev_pool", &bev_pool_cuda);
  m.impl("bev_pool_backward", &bev_pool_backward_cuda);
  m.impl("bev_pool_plan_portable", &bev_pool_plan_cuda);
  m.impl("bev_pool_portable", &bev_pool_cuda);
  m.impl("bev_pool_backward_portable", &bev_pool_backward_cuda);
}

}  // namespace torchsparse
