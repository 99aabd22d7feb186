// The CUDA launcher of portable kernel bodies (see common/launch.h): a grid-stride loop over [0, n) on the current
// stream of the current device. Include from .cu files only.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

namespace torchsparse {

template <typename Body>
__global__ void for_each_kernel(int64_t n, Body body) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) body(i);
}

struct CudaLauncher {
  int threads = 256;

  template <typename Body>
  void operator()(int64_t n, const Body& body) const {
    if (n <= 0) return;
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20);
    for_each_kernel<<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(n, body);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace torchsparse
