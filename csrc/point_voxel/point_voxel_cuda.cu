// CUDA kernels of the point-voxel family: the portable bodies of point_voxel_kernels.h over a grid on the current
// stream. Results equal the CPU ops bit for bit (same operations in the same order, no float atomics, no FMA).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "point_voxel/point_voxel_kernels.h"

namespace torchsparse {
namespace {

std::tuple<at::Tensor, at::Tensor> point_voxel_query_cuda(const at::Tensor& points, const at::Tensor& table_keys,
                                                          const at::Tensor& table_values, at::IntArrayRef stride,
                                                          int64_t neighbours) {
  const c10::cuda::OptionalCUDAGuard guard(points.device());
  return point_voxel::point_voxel_query_with(points, table_keys, table_values, stride, neighbours, CudaLauncher{});
}

at::Tensor point_voxel_count_cuda(const at::Tensor& idx, int64_t num_voxels) {
  const c10::cuda::OptionalCUDAGuard guard(idx.device());
  return point_voxel::point_voxel_count_with(idx, num_voxels, CudaLauncher{});
}

at::Tensor voxelize_cuda(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& counts) {
  const c10::cuda::OptionalCUDAGuard guard(feats.device());
  return point_voxel::voxelize_with(feats, idx, counts, CudaLauncher{});
}

at::Tensor devoxelize_cuda(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& weights) {
  const c10::cuda::OptionalCUDAGuard guard(feats.device());
  return point_voxel::devoxelize_with(feats, idx, weights, CudaLauncher{});
}

at::Tensor devoxelize_backward_cuda(const at::Tensor& grad_output, const at::Tensor& idx, const at::Tensor& weights,
                                    int64_t num_voxels) {
  const c10::cuda::OptionalCUDAGuard guard(grad_output.device());
  return point_voxel::devoxelize_backward_with(grad_output, idx, weights, num_voxels, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("point_voxel_query", &point_voxel_query_cuda);
  m.impl("point_voxel_count", &point_voxel_count_cuda);
  m.impl("voxelize", &voxelize_cuda);
  m.impl("devoxelize", &devoxelize_cuda);
  m.impl("devoxelize_backward", &devoxelize_backward_cuda);
  m.impl("point_voxel_count_portable", &point_voxel_count_cuda);
  m.impl("voxelize_portable", &voxelize_cuda);
  m.impl("devoxelize_portable", &devoxelize_cuda);
  m.impl("devoxelize_backward_portable", &devoxelize_backward_cuda);
}

}  // namespace torchsparse
