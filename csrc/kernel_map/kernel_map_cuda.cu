// CUDA kernels of the kernel-map family: the portable bodies of kernel_map_kernels.h over a grid on the current
// stream (host synchronisations listed in kernel_map_kernels.h).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "kernel_map/kernel_map_kernels.h"

namespace torchsparse {
namespace {

// Rows per merge / compaction cell: short merges, so that a map of 100k outputs spreads over ~10^5 threads.
constexpr int64_t kChunk = 16;

at::Tensor kernel_map_cuda(const at::Tensor& sorted_keys, const at::Tensor& sorted_rows, const at::Tensor& out_coords,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                           at::IntArrayRef base, bool symmetric) {
  const c10::cuda::OptionalCUDAGuard guard(sorted_keys.device());
  return kernel_map_with(sorted_keys, sorted_rows, out_coords, kernel_size, stride, dilation, base, symmetric, kChunk,
                         CudaLauncher{}, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_map_pairs_cuda(const at::Tensor& nbmap) {
  const c10::cuda::OptionalCUDAGuard guard(nbmap.device());
  return kernel_map_pairs_with(nbmap, kChunk, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor> strided_coords_cuda(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride, at::IntArrayRef dilation,
                                                       at::IntArrayRef base, at::OptionalIntArrayRef upper) {
  const c10::cuda::OptionalCUDAGuard guard(coords.device());
  return strided_coords_with(coords, kernel_size, stride, dilation, base, upper, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor> generative_coords_cuda(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                          at::IntArrayRef stride, at::IntArrayRef dilation,
                                                          at::IntArrayRef base) {
  const c10::cuda::OptionalCUDAGuard guard(coords.device());
  return generative_coords_with(coords, kernel_size, stride, dilation, base, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("kernel_map", &kernel_map_cuda);
  m.impl("kernel_map_pairs", &kernel_map_pairs_cuda);
  m.impl("strided_coords", &strided_coords_cuda);
  m.impl("generative_coords", &generative_coords_cuda);
}

}  // namespace torchsparse
