// The CPU launcher of portable kernel bodies: for_each(n, body) calls body(i) for every i in [0, n) in parallel.
// A body is a TS_HOST_DEVICE functor of plain pointers and scalars (csrc/<family>/<family>_kernels.h); the CUDA
// launcher in common/launch_cuda.cuh runs the very same body over a grid, so the CPU suite tests the GPU's logic.
// Model: Open3D's core::ParallelFor.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace torchsparse {

struct CpuLauncher {
  // Indices per task: small enough to balance, large enough to amortise the scheduling.
  int64_t grain = 2048;

  template <typename Body>
  void operator()(int64_t n, const Body& body) const {
    at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) body(i);
    });
  }
};

}  // namespace torchsparse
