// CPU kernels of the kernel-map family: the portable bodies of kernel_map_kernels.h over at::parallel_for.
#include <torch/library.h>

#include <limits>

#include "common/launch.h"
#include "kernel_map/kernel_map_kernels.h"

namespace torchsparse {
namespace {

// Rows per merge / compaction cell: long merges stream through the sorted keys, and 256 rows already match one
// merge per thread (measured on a SemanticKITTI scan).
constexpr int64_t kChunk = 256;
// Runs a body serially in the calling thread.
constexpr CpuLauncher kSerial{std::numeric_limits<int64_t>::max()};

at::Tensor kernel_map_cpu(const at::Tensor& sorted_keys, const at::Tensor& sorted_rows, const at::Tensor& out_coords,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                          at::IntArrayRef base, bool symmetric) {
  return kernel_map_with(sorted_keys, sorted_rows, out_coords, kernel_size, stride, dilation, base, symmetric, kChunk,
                         CpuLauncher{1}, kSerial);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_map_pairs_cpu(const at::Tensor& nbmap) {
  return kernel_map_pairs_with(nbmap, kChunk, CpuLauncher{1});
}

std::tuple<at::Tensor, at::Tensor> strided_coords_cpu(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride, at::IntArrayRef dilation,
                                                      at::IntArrayRef base, at::OptionalIntArrayRef upper) {
  return strided_coords_with(coords, kernel_size, stride, dilation, base, upper, CpuLauncher{4096});
}

std::tuple<at::Tensor, at::Tensor> generative_coords_cpu(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                         at::IntArrayRef stride, at::IntArrayRef dilation,
                                                         at::IntArrayRef base) {
  return generative_coords_with(coords, kernel_size, stride, dilation, base, CpuLauncher{4096});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("kernel_map", &kernel_map_cpu);
  m.impl("kernel_map_pairs", &kernel_map_pairs_cpu);
  m.impl("strided_coords", &strided_coords_cpu);
  m.impl("generative_coords", &generative_coords_cpu);
}

}  // namespace torchsparse
