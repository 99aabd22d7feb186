// CUDA kernels of the hashing family: the portable bodies of hashing_kernels.h over a grid on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "hashing/hashing_kernels.h"

namespace torchsparse {
namespace {

at::Tensor pack_coords_cuda(const at::Tensor& coords) {
  const c10::cuda::OptionalCUDAGuard guard(coords.device());
  return pack_coords_with(coords, CudaLauncher{});
}

at::Tensor unpack_coords_cuda(const at::Tensor& keys) {
  const c10::cuda::OptionalCUDAGuard guard(keys.device());
  return unpack_coords_with(keys, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hash_build_cuda(const at::Tensor& keys) {
  const c10::cuda::OptionalCUDAGuard guard(keys.device());
  return hash_build_with(keys, CudaLauncher{});
}

at::Tensor hash_query_cuda(const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& queries) {
  const c10::cuda::OptionalCUDAGuard guard(queries.device());
  return hash_query_with(table_keys, table_values, queries, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(torchsparse, CUDA, m) {
  m.impl("pack_coords", &pack_coords_cuda);
  m.impl("unpack_coords", &unpack_coords_cuda);
  m.impl("hash_build", &hash_build_cuda);
  m.impl("hash_query", &hash_query_cuda);
}

}  // namespace torchsparse
