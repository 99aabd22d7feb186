// CPU kernels of the convolution family, two dataflows over the same map:
// - conv3d (gather-GEMM-scatter): per kernel offset, gather the rows of its pairs, one GEMM (MKL, all threads),
//   scatter-add into the output. Within one offset a row occurs at most once, so gather and scatter run in
//   parallel over rows without atomics. An identity offset (submanifold centre) is one GEMM on the input.
// - conv3d_fused (output-stationary tiles): threads take tiles of output rows; per tile and offset, gather the
//   present inputs and run one single-threaded GEMM accumulated into the tile while it is in cache.
// Neither uses atomics, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/launch.h"
#include "convolution/convolution_kernels.h"

namespace torchsparse {
namespace {

// dst[r] = src[rows[r]] for r in [0, n); rows of width c.
template <typename T>
void gather_rows(const T* src, const int32_t* rows, int64_t n, int64_t c, T* dst) {
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) std::memcpy(dst + r * c, src + int64_t(rows[r]) * c, c * sizeof(T));
  });
}

// dst[rows[r]] += src[r]; rows must be distinct.
template <typename T>
void scatter_add_rows(const T* src, const int32_t* rows, int64_t n, int64_t c, T* dst) {
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* d = dst + int64_t(rows[r]) * c;
      const T* s = src + r * c;
      for (int64_t j = 0; j < c; ++j) d[j] += s[j];
    }
  });
}

// True when the pairs [start, start + n) map row j to row j for all rows of input and output.
bool identity_pairs(const int32_t* in, const int32_t* out, int64_t n, int64_t num_in, int64_t num_out) {
  if (n != num_in || n != num_out) return false;
  for (int64_t j = 0; j < n; ++j)
    if (in[j] != j || out[j] != j) return false;
  return true;
}

// Row-major c (n x cout) = a (n x cin) @ b (cin x cout), added to c when accumulate. Inside a parallel region
// the BLAS behind at::mm runs on the calling thread.
template <typename T>
void gemm_rows(const T* a, const T* b, T* c, int64_t n, int64_t cin, int64_t cout, bool accumulate) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto at_ = at::from_blob(const_cast<T*>(a), {n, cin}, options);
  auto bt = at::from_blob(const_cast<T*>(b), {cin, cout}, options);
  auto ct = at::from_blob(c, {n, cout}, options);
  if (accumulate) {
    ct.addmm_(at_, bt);
  } else {
    at::mm_out(ct, at_, bt);
  }
}

template <typename T>
void conv3d_fused_kernel(const T* x, const T* w, const int32_t* nb, T* out, int64_t m, int64_t kv, int64_t cin,
                         int64_t cout, int64_t tile) {
  const int64_t tiles = (m + tile - 1) / tile;
  at::parallel_for(0, tiles, 1, [&](int64_t first_tile, int64_t last_tile) {
    std::vector<T> gathered(tile * cin), product(tile * cout);
    std::vector<int32_t> local(tile), source(tile);
    for (int64_t t = first_tile; t < last_tile; ++t) {
      const int64_t row0 = t * tile, rows = std::min(tile, m - row0);
      T* o = out + row0 * cout;
      bool written = false;
      for (int64_t k = 0; k < kv; ++k) {
        int64_t n = 0;
        bool contiguous = true;  // inputs form one run of consecutive rows
        for (int64_t j = 0; j < rows; ++j) {
          const int32_t i = nb[(row0 + j) * kv + k];
          if (i < 0) continue;
          contiguous &= n == 0 || i == source[n - 1] + 1;
          local[n] = static_cast<int32_t>(j);
          source[n++] = i;
        }
        if (n == 0) continue;
        const T* a = x + int64_t(source[0]) * cin;
        if (!contiguous) {
          for (int64_t q = 0; q < n; ++q) std::memcpy(&gathered[q * cin], x + int64_t(source[q]) * cin, cin * sizeof(T));
          a = gathered.data();
        }
        const T* wk = w + k * cin * cout;
        if (n == rows) {  // every row of the tile has this neighbour: accumulate in place
          gemm_rows(a, wk, o, n, cin, cout, written);
        } else {
          gemm_rows(a, wk, product.data(), n, cin, cout, false);
          if (!written) std::fill(o, o + rows * cout, T(0));
          for (int64_t q = 0; q < n; ++q) {
            T* d = o + int64_t(local[q]) * cout;
            const T* p = &product[q * cout];
            for (int64_t c = 0; c < cout; ++c) d[c] += p[c];
          }
        }
        written = true;
      }
      if (!written) std::fill(o, o + rows * cout, T(0));
    }
  });
}

}  // namespace

at::Tensor conv3d_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_rows,
                      const at::Tensor& out_rows, const at::Tensor& sizes, int64_t num_out) {
  check_weight(input, weight);
  TORCH_CHECK_VALUE(num_out >= 0, "num_out must be >= 0, got ", num_out);
  const Pairs pairs = checked_pairs(input, in_rows, out_rows, sizes, weight.size(0), num_out);
  const int64_t kv = weight.size(0), cin = weight.size(1), cout = weight.size(2);
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const int64_t* sp = pairs.sizes.data_ptr<int64_t>();
  const int32_t* ip = pairs.in_rows.data_ptr<int32_t>();
  const int32_t* op = pairs.out_rows.data_ptr<int32_t>();
  std::vector<int64_t> start(kv + 1, 0);
  for (int64_t k = 0; k < kv; ++k) start[k + 1] = start[k] + sp[k];
  int64_t identity = -1;
  for (int64_t k = 0; k < kv && identity < 0; ++k)
    if (identity_pairs(ip + start[k], op + start[k], sp[k], x.size(0), num_out)) identity = k;
  auto out = identity >= 0 ? at::mm(x, w[identity]) : at::zeros({num_out, cout}, x.options());
  int64_t max_pairs = 0;
  for (int64_t k = 0; k < kv; ++k)
    if (k != identity) max_pairs = std::max(max_pairs, sp[k]);
  auto gathered = at::empty({max_pairs, cin}, x.options());
  auto product = at::empty({max_pairs, cout}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv3d_cpu", [&] {
    for (int64_t k = 0; k < kv; ++k) {
      const int64_t n = sp[k];
      if (n == 0 || k == identity) continue;
      auto g = gathered.narrow(0, 0, n);
      auto p = product.narrow(0, 0, n);
      {
        RECORD_FUNCTION("torchsparse::gather", std::vector<c10::IValue>());
        gather_rows(x.data_ptr<scalar_t>(), ip + start[k], n, cin, g.data_ptr<scalar_t>());
      }
      at::mm_out(p, g, w[k]);
      {
        RECORD_FUNCTION("torchsparse::scatter", std::vector<c10::IValue>());
        scatter_add_rows(p.data_ptr<scalar_t>(), op + start[k], n, cout, out.data_ptr<scalar_t>());
      }
    }
  });
  return out;
}

at::Tensor conv3d_fused_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& nbmap,
                            const at::Tensor& in_rows, const at::Tensor& out_rows, const at::Tensor& sizes,
                            int64_t tile) {
  check_weight(input, weight);
  auto nb = checked_nbmap(input, weight, nbmap, tile);
  // The pairs serve the backward pass only; they index the same rows as nbmap.
  checked_pairs(input, in_rows, out_rows, sizes, weight.size(0), nbmap.size(0));
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const int64_t m = nb.size(0);
  // Per-thread buffers of tile rows: a tile larger than the map would only waste memory.
  tile = std::min<int64_t>(tile, std::max<int64_t>(m, 1));
  auto out = at::empty({m, w.size(2)}, x.options());
  // Only float and double: libtorch does not export its CPU BLAS entry points for half and bfloat16.
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "conv3d_fused runs float32 and float64 on the CPU, got input of ", dtype_name(x));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3d_fused_cpu", [&] {
    conv3d_fused_kernel(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), nb.data_ptr<int32_t>(),
                        out.data_ptr<scalar_t>(), m, w.size(0), w.size(1), w.size(2), tile);
  });
  return out;
}

at::Tensor conv3d_weight_grad_cpu(const at::Tensor& input, const at::Tensor& grad_output, const at::Tensor& in_rows,
                                  const at::Tensor& out_rows, const at::Tensor& sizes) {
  const int64_t kv = check_weight_grad(input, grad_output, sizes);
  const Pairs pairs = checked_pairs(input, in_rows, out_rows, sizes, kv, grad_output.size(0));
  const int64_t cin = input.size(1), cout = grad_output.size(1);
  auto x = input.contiguous();
  auto dy = grad_output.contiguous();
  auto grad = at::zeros({kv, cin, cout}, x.options());
  const int64_t* sp = pairs.sizes.data_ptr<int64_t>();
  const int64_t max_pairs = kv ? *std::max_element(sp, sp + kv) : 0;
  auto xg = at::empty({max_pairs, cin}, x.options());
  auto dyg = at::empty({max_pairs, cout}, x.options());
  const int32_t* ip = pairs.in_rows.data_ptr<int32_t>();
  const int32_t* op = pairs.out_rows.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv3d_weight_grad_cpu", [&] {
    int64_t start = 0;
    for (int64_t k = 0; k < kv; ++k) {
      const int64_t n = sp[k];
      if (n == 0) continue;
      auto a = xg.narrow(0, 0, n);
      auto b = dyg.narrow(0, 0, n);
      gather_rows(x.data_ptr<scalar_t>(), ip + start, n, cin, a.data_ptr<scalar_t>());
      gather_rows(dy.data_ptr<scalar_t>(), op + start, n, cout, b.data_ptr<scalar_t>());
      auto gk = grad[k];
      at::mm_out(gk, a.t(), b);
      start += n;
    }
  });
  return grad;
}

// The portable path (convolution_kernels.h) on the CPU: what CUDA runs, here for tests and benchmarks.
at::Tensor conv3d_grouped_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_rows,
                              const at::Tensor& out_rows, const at::Tensor& sizes, int64_t num_out, double tolerance,
                              int64_t max_pairs) {
  return conv3d_grouped_with(input, weight, in_rows, out_rows, sizes, num_out, tolerance, max_pairs, CpuLauncher{});
}

at::Tensor conv3d_weight_grad_grouped_cpu(const at::Tensor& input, const at::Tensor& grad_output,
                                          const at::Tensor& in_rows, const at::Tensor& out_rows,
                                          const at::Tensor& sizes, double tolerance, int64_t max_pairs) {
  return conv3d_weight_grad_grouped_with(input, grad_output, in_rows, out_rows, sizes, tolerance, max_pairs,
                                         CpuLauncher{});
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("conv3d_grouped", &conv3d_grouped_cpu);
  m.impl("conv3d_weight_grad_grouped", &conv3d_weight_grad_grouped_cpu);
  m.impl("conv3d", &conv3d_cpu);
  m.impl("conv3d_fused", &conv3d_fused_cpu);
  m.impl("conv3d_weight_grad", &conv3d_weight_grad_cpu);
}

}  // namespace torchsparse
