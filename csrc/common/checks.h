// Argument checks shared by every op (CPU kernels now, CUDA kernels later). Each message names the argument as the
// op's schema does, and the Python exception type says what was wrong:
//   TypeError  (TORCH_CHECK_TYPE)  wrong dtype;
//   ValueError (TORCH_CHECK_VALUE) wrong shape, device, count or value;
//   IndexError (TORCH_CHECK_INDEX) an index tensor pointing outside the rows it indexes.
// Rule for memory safety: a kernel reads an index tensor only through the contiguous tensor that was checked
// (`checked_index`), never through the raw buffer of a view whose values were checked.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <utility>

#include "common/coords.h"

namespace torchsparse {

// Largest kernel extent, stride and dilation per axis: one axis of packed coordinates spans 2^16 values, so larger
// ones cannot connect two sites; with these bounds every derived coordinate fits easily in int64.
constexpr int64_t kMaxGeometry = int64_t(1) << 16;
// Largest kernel volume: offsets are stored as int32.
constexpr int64_t kMaxKernelVolume = std::numeric_limits<int32_t>::max();

// The dtype as Python spells it (torch.int64 -> "int64"), for messages.
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    default: return c10::toString(t);
  }
}

inline const char* dtype_name(const at::Tensor& t) { return dtype_name(t.scalar_type()); }

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype_name(dtype), ", got ", dtype_name(t));
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
                   dtype_name(t));
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", layout, ", got shape ", t.sizes());
}

inline void check_coords(const at::Tensor& coords, const char* name) {
  TORCH_CHECK_VALUE(coords.dim() == 2 && coords.size(1) == 4, name,
                    " must be int32 (N, 4) as (batch, x, y, z), got shape ", coords.sizes());
  check_dtype(coords, name, at::kInt);
}

inline void check_keys(const at::Tensor& keys, const char* name) {
  check_dim(keys, name, 1, "1-D int64");
  check_dtype(keys, name, at::kLong);
}

inline void check_rows(const at::Tensor& rows, const char* name) {
  check_dim(rows, name, 1, "1-D int32");
  check_dtype(rows, name, at::kInt);
}

// One rule for devices: every tensor an op reads is on the device of its first tensor argument.
inline void check_same_device(const at::Tensor& a, const char* name_a, const at::Tensor& b, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device, got ",
                    a.device(), " and ", b.device());
}

inline void check_same_device(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors) {
  const auto& first = *tensors.begin();
  for (const auto& t : tensors) check_same_device(*first.first, first.second, *t.first, t.second);
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

// The contiguous tensor of an index argument (rows of another tensor) whose every value lies in [low, high),
// checked on that very tensor; IndexError otherwise.
inline at::Tensor checked_index(const at::Tensor& idx, const char* name, int64_t low, int64_t high) {
  auto c = idx.contiguous();
  if (c.numel() == 0) return c;
  const auto [lo_t, hi_t] = at::aminmax(c);
  // One copy of both bounds: a single host synchronisation on CUDA.
  const auto bounds = at::stack({lo_t.to(at::kLong), hi_t.to(at::kLong)}).cpu();
  const int64_t lo = bounds.data_ptr<int64_t>()[0], hi = bounds.data_ptr<int64_t>()[1];
  TORCH_CHECK_INDEX(lo >= low && hi < high, name, " values must be in [", low, ", ", high, "), got [", lo, ", ", hi,
                    "]");
  return c;
}

// Packed keys (pack_coords) are >= 0. Returns the contiguous tensor.
inline at::Tensor checked_keys(const at::Tensor& keys, const char* name) {
  check_keys(keys, name);
  auto c = keys.contiguous();
  if (c.numel() == 0) return c;
  const int64_t lo = c.min().item().toLong();
  TORCH_CHECK_VALUE(lo >= 0, name, " must be >= 0 (packed coordinates), got ", lo);
  return c;
}

// sizes: CPU int64 (K,), every entry >= 0, summing to `total` (the number of pairs). Returns the contiguous tensor.
inline at::Tensor checked_sizes(const at::Tensor& sizes, int64_t kernel_volume, int64_t total) {
  check_dim(sizes, "sizes", 1, "1-D int64 (K,)");
  check_dtype(sizes, "sizes", at::kLong);
  check_cpu(sizes, "sizes");
  TORCH_CHECK_VALUE(sizes.size(0) == kernel_volume, "sizes has ", sizes.size(0), " offsets but weight has ",
                    kernel_volume);
  auto s = sizes.contiguous();
  const int64_t* sp = s.data_ptr<int64_t>();
  int64_t sum = 0;
  for (int64_t k = 0; k < kernel_volume; ++k) {
    TORCH_CHECK_VALUE(sp[k] >= 0 && sp[k] <= total, "sizes values must be in [0, ", total,
                      "] (the number of pairs), got ", sp[k], " at offset ", k);
    sum += sp[k];  // at most kernel_volume * total < 2^63: no overflow
  }
  TORCH_CHECK_VALUE(sum == total, "sizes must sum to the number of pairs ", total, ", got ", sum);
  return s;
}

inline void check_triple(at::IntArrayRef v, const char* name, int64_t min_value, int64_t max_value) {
  TORCH_CHECK_VALUE(v.size() == 3, name, " must have 3 values, got ", v.size());
  for (auto x : v)
    TORCH_CHECK_VALUE(x >= min_value && x <= max_value, name, " values must be in [", min_value, ", ", max_value,
                      "], got ", v);
}

// a * b, or an error naming `what` when the product does not fit in int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(a, b, &out), what, " overflows int64 (", a, " * ", b, ")");
  return out;
}

inline KernelGeometry make_geometry(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                                    at::IntArrayRef base) {
  check_triple(kernel_size, "kernel_size", 1, kMaxGeometry);
  check_triple(stride, "stride", 1, kMaxGeometry);
  check_triple(dilation, "dilation", 1, kMaxGeometry);
  // A base this far out moves every site outside the packable range; the bound keeps arithmetic in int64.
  check_triple(base, "base", -kMaxGeometry * kMaxGeometry, kMaxGeometry * kMaxGeometry);
  KernelGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.size[a] = kernel_size[a];
    g.stride[a] = stride[a];
    g.dilation[a] = dilation[a];
    g.base[a] = base[a];
  }
  TORCH_CHECK_VALUE(g.volume() <= kMaxKernelVolume, "kernel_size ", kernel_size, " has ", g.volume(),
                    " offsets, more than ", kMaxKernelVolume);
  g.x_fastest = g.volume() % 2 == 1;
  return g;
}

}  // namespace torchsparse
