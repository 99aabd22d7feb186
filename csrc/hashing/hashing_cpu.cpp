// CPU kernels of the hashing family: the portable bodies of hashing_kernels.h over at::parallel_for.
#include <torch/library.h>

#include "common/launch.h"
#include "hashing/hashing_cpu.h"
#include "hashing/hashing_kernels.h"

namespace torchsparse {

at::Tensor pack_coords_cpu(const at::Tensor& coords) { return pack_coords_with(coords, CpuLauncher{4096}); }

at::Tensor unpack_coords_cpu(const at::Tensor& keys) { return unpack_coords_with(keys, CpuLauncher{4096}); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> hash_build_cpu(const at::Tensor& keys) {
  return hash_build_with(keys, CpuLauncher{2048});
}

at::Tensor hash_query_cpu(const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& queries) {
  return hash_query_with(table_keys, table_values, queries, CpuLauncher{4096});
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("pack_coords", &pack_coords_cpu);
  m.impl("unpack_coords", &unpack_coords_cpu);
  m.impl("hash_build", &hash_build_cpu);
  m.impl("hash_query", &hash_query_cpu);
}

}  // namespace torchsparse
