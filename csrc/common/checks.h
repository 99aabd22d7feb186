// Argument checks shared by every op; each message names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "common/coords.h"

namespace torchsparse {

inline void check_coords(const at::Tensor& coords, const char* name) {
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 4, name, " must be int32 (N, 4) as (batch, x, y, z), got shape ",
              coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kInt, name, " must be int32, got ", coords.scalar_type());
}

inline void check_keys(const at::Tensor& keys, const char* name) {
  TORCH_CHECK(keys.dim() == 1, name, " must be 1-D int64, got shape ", keys.sizes());
  TORCH_CHECK(keys.scalar_type() == at::kLong, name, " must be int64, got ", keys.scalar_type());
}

inline void check_rows(const at::Tensor& rows, const char* name) {
  TORCH_CHECK(rows.dim() == 1, name, " must be 1-D int32, got shape ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kInt, name, " must be int32, got ", rows.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* name_a, const at::Tensor& b, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

inline void check_triple(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 3, name, " must have 3 values, got ", v.size());
  for (auto x : v) TORCH_CHECK(x >= min_value, name, " values must be >= ", min_value, ", got ", v);
}

inline KernelGeometry make_geometry(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                                    at::IntArrayRef base) {
  check_triple(kernel_size, "kernel_size", 1);
  check_triple(stride, "stride", 1);
  check_triple(dilation, "dilation", 1);
  check_triple(base, "base", kCoordMin);
  KernelGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.size[a] = kernel_size[a];
    g.stride[a] = stride[a];
    g.dilation[a] = dilation[a];
    g.base[a] = base[a];
  }
  g.x_fastest = g.volume() % 2 == 1;
  return g;
}

}  // namespace torchsparse
