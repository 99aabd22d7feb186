// CUDA kernel of hard_voxelize: the portable formulation of hard_voxelize_kernels.h (voxel keys per point, a stable
// sort, runs numbered by first point) over a grid on the current stream; equal to the CPU result exactly.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "hard_voxelize/hard_voxelize_kernels.h"

namespace torchsparse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_voxelize_cuda(const at::Tensor& points,
                                                                  at::ArrayRef<double> voxel_size,
                                                                  at::ArrayRef<double> point_range,
                                                                  int64_t max_points, int64_t max_voxels) {
  const c10::cuda::OptionalCUDAGuard guard(points.device());
  return hard_voxelize::hard_voxelize_with(points, voxel_size, point_range, max_points, max_voxels, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("hard_voxelize", &hard_voxelize_cuda);
  m.impl("hard_voxelize_portable", &hard_voxelize_cuda);
}

}  // namespace torchsparse
