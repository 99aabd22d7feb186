// CPU kernels of the convolution family, two dataflows over the same map:
// - conv3d (gather-GEMM-scatter): per kernel offset, gather the rows of its pairs, one GEMM (MKL, all threads),
//   scatter-add into the output. Within one offset a row occurs at most once, so gather and scatter run in
//   parallel over rows without atomics. An identity offset (submanifold centre) is one GEMM on the input.
// - conv3d_fused (output-stationary tiles): threads take tiles of output rows; per tile and offset, take the
//   offset's pairs within the tile (one run of the pairs, whose outputs ascend within an offset) and run one
//   single-threaded GEMM on their input rows, accumulated into the tile while it is in cache; then the
//   epilogue (bias, residual, ReLU) on the finished tile. bfloat16 / float16 are computed in float32 (rows
//   widened on gather, a float32 tile rounded once by the epilogue; tile_cpu.h), float16 with float16 products
//   summed in float16 over short runs when the caller allows reduced-precision sums and the CPU has AVX512-FP16.
// Neither uses atomics, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/launch.h"
#include "convolution/convolution_kernels.h"
#include "convolution/tile_cpu.h"

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

// Raises ValueError unless out_rows ascend strictly within each offset (kernel_map_pairs' order), which conv3d_fused's
// tiles rely on: a tile's pairs of one offset are then one run, and at most one per tile row.
void check_ascending_outputs(const Pairs& pairs) {
  const int32_t* out = pairs.out_rows.const_data_ptr<int32_t>();
  const int64_t* sizes = pairs.sizes.const_data_ptr<int64_t>();
  int64_t start = 0;
  for (int64_t k = 0; k < pairs.sizes.size(0); ++k) {
    for (int64_t q = start + 1; q < start + sizes[k]; ++q)
      TORCH_CHECK_VALUE(out[q] > out[q - 1], "out_rows must ascend strictly within each offset (kernel_map_pairs' "
                        "order), but offset ", k, " has ", out[q - 1], " before ", out[q]);
    start += sizes[k];
  }
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

struct Epilogue {
  const void* bias = nullptr;      // (C_out,) of the features' dtype, or null
  const void* residual = nullptr;  // (M, C_out) of the features' dtype, or null
  bool relu = false;
  bool any() const { return bias || residual || relu; }
};

// One tile's pairs by offset, cut from the map's pairs (ascending in output row within each offset, checked by the
// caller): offset k's pairs with outputs in [row0, row0 + rows) are one run of its pairs, found by binary search. The
// input rows are read where they are (source[k] points into in_rows); local holds the tile-local output rows,
// entries [start[k], start[k] + count[k]) for offset k, in increasing order.
struct TilePairs {
  std::vector<const int32_t*> source;
  std::vector<int64_t> start, count;
  std::unique_ptr<int32_t[]> local;

  // At most `tile` pairs per offset: output rows are distinct within an offset.
  TilePairs(int64_t tile, int64_t kv) : source(kv), start(kv), count(kv), local(new int32_t[tile * kv]) {}

  // offsets: (K + 1,) prefix sums of the pairs per offset.
  void build(const int32_t* in_rows, const int32_t* out_rows, const int64_t* offsets, int64_t kv, int64_t row0,
             int64_t rows) {
    int64_t slot = 0;
    for (int64_t k = 0; k < kv; ++k) {
      const int32_t* last = out_rows + offsets[k + 1];
      const int32_t* lo = std::lower_bound(out_rows + offsets[k], last, row0);
      const int32_t* hi = std::lower_bound(lo, last, row0 + rows);
      source[k] = in_rows + (lo - out_rows);
      start[k] = slot;
      count[k] = hi - lo;
      for (int64_t q = 0; q < count[k]; ++q) local[slot + q] = static_cast<int32_t>(lo[q] - row0);
      slot += count[k];
    }
  }

  // Whether the input rows of offset k form one run of consecutive rows (then they are read in place).
  bool contiguous(int64_t k) const {
    const int32_t* s = source[k];
    for (int64_t q = 1; q < count[k]; ++q)
      if (s[q] != s[q - 1] + 1) return false;
    return true;
  }
};

// Output-stationary tiles. T: the features' dtype; A: the accumulation dtype, T for float32 / float64 (the tile
// is accumulated in the output itself), float32 for bfloat16 / float16 (rows widened while gathered, a float32 tile
// per thread, one rounding per element after the epilogue). w: (K, C_in, C_out) in A, or null when wp or wh is
// given. map: the checked pairs, out_rows ascending within each offset. Per tile: its pairs cut by offset
// (TilePairs); the offset covering every row (a submanifold centre) first, its GEMM initialising the tile; then per
// offset one single-threaded GEMM on the gathered rows (on the input itself when they are consecutive), added into
// the tile rows; then the epilogue while the tile is in cache.
// wp: the weight packed for tile_cpu.h's indirect_gemm (`pack_weight`) when A is float and the CPU has AVX-512, else
// null and MKL runs the GEMMs. wh: float16 only, the weight packed for indirect_gemm_fp16 (`pack_weight_fp16`) when
// reduced-precision sums are allowed and the CPU has AVX512-FP16, else null; it takes precedence over wp.
// full: an offset present for every output row (a submanifold centre), run first in every tile so that its GEMM
// initialises the tile; or -1. The order of offsets is the same for every row and any tiling, so results do not
// depend on the tile size (which follows the thread count).
template <typename T, typename A>
void conv3d_fused_kernel(const T* x, const A* w, const float* wp, const c10::Half* wh, const Pairs& map, T* out,
                         int64_t m, int64_t kv, int64_t cin, int64_t cout, int64_t tile, int64_t full,
                         const Epilogue& epi) {
  constexpr bool widen = !std::is_same_v<T, A>;
  const int64_t tiles = (m + tile - 1) / tile;
  const bool avx512 = cpu_has_avx512();
  std::vector<A> bias(epi.bias ? cout : 0);
  if (epi.bias) {
    const T* b = static_cast<const T*>(epi.bias);
    for (int64_t c = 0; c < cout; ++c) bias[c] = static_cast<A>(b[c]);
  }
  const T* residual = static_cast<const T*>(epi.residual);
  const int32_t* in_rows = map.in_rows.const_data_ptr<int32_t>();
  const int32_t* out_rows = map.out_rows.const_data_ptr<int32_t>();
  std::vector<int64_t> offsets(kv + 1, 0);
  const int64_t* sizes = map.sizes.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < kv; ++k) offsets[k + 1] = offsets[k] + sizes[k];
  at::parallel_for(0, tiles, 1, [&](int64_t first_tile, int64_t last_tile) {
    TilePairs pairs(tile, kv);
    // Uninitialised scratch: every element is written before it is read.
    std::unique_ptr<A[]> gathered(new A[tile * cin]), product(new A[tile * cout]);
    std::unique_ptr<A[]> acc(widen ? new A[tile * cout] : nullptr), row(widen ? new A[cout] : nullptr);
    std::vector<int32_t> iota(widen && wp ? tile : 0);
    for (size_t q = 0; q < iota.size(); ++q) iota[q] = static_cast<int32_t>(q);
    for (int64_t t = first_tile; t < last_tile; ++t) {
      const int64_t row0 = t * tile, rows = std::min(tile, m - row0);
      A* o = widen ? acc.get() : reinterpret_cast<A*>(out + row0 * cout);
      pairs.build(in_rows, out_rows, offsets.data(), kv, row0, rows);
      bool written = false;
      auto run = [&](int64_t k) {
        const int64_t n = pairs.count[k];
        if (n == 0) return;
        const int32_t* source = pairs.source[k];
        const int32_t* local = pairs.local.get() + pairs.start[k];
        if constexpr (std::is_same_v<A, float>) {
          if (wh || wp) {  // a micro-kernel of tile_cpu.h: products summed into the tile rows in registers
            if (!written && n < rows) std::fill(o, o + rows * cout, 0.0f);
            const bool accumulate = written || n < rows;
            if constexpr (std::is_same_v<T, c10::Half>) {
              if (wh) {  // float16 rows read in place, float16 products
                indirect_gemm_fp16(x, cin, source, local, n, wh + k * 2 * ((cin + 1) / 2) * padded16(cout), cout, o,
                                   accumulate);
              }
            }
            if (wp) {  // float32 rows read in place, or bfloat16 / float16 rows from the widened copy
              const float* wk = wp + k * cin * padded16(cout);
              // bfloat16 / float16 rows widened by one pass (converting each element as the kernel broadcasts it
              // measured 1.1-1.6x slower: the conversions compete with the FMAs for the same port).
              if constexpr (widen) {
                widen_rows(x, source, n, cin, gathered.get(), avx512);
                indirect_gemm(gathered.get(), cin, iota.data(), local, n, wk, cout, o, accumulate);
              } else {
                indirect_gemm(x, cin, source, local, n, wk, cout, o, accumulate);
              }
            }
            written = true;
            return;
          }
        }
        const A* a = gathered.get();
        if constexpr (widen) {
          widen_rows(x, source, n, cin, gathered.get(), avx512);
        } else if (pairs.contiguous(k)) {
          a = x + int64_t(source[0]) * cin;
        } else {
          for (int64_t q = 0; q < n; ++q) std::memcpy(&gathered[q * cin], x + int64_t(source[q]) * cin, cin * sizeof(T));
        }
        const A* wk = w + k * cin * cout;
        if (n == rows) {  // every row of the tile has this neighbour (local[q] == q): accumulate in place
          gemm_rows(a, wk, o, n, cin, cout, written);
        } else {
          gemm_rows(a, wk, product.get(), n, cin, cout, false);
          if (!written) std::fill(o, o + rows * cout, A(0));
          add_rows(o, local, product.get(), n, cout, avx512);
        }
        written = true;
      };
      if (full >= 0) run(full);
      for (int64_t k = 0; k < kv; ++k)
        if (k != full) run(k);
      if (!written) std::fill(o, o + rows * cout, A(0));
      if (!widen && !epi.any()) continue;
      for (int64_t j = 0; j < rows; ++j) {
        A* s = o + j * cout;
        const A* r = nullptr;
        if (residual) {
          if constexpr (widen) {
            widen_row(residual + (row0 + j) * cout, row.get(), cout, avx512);
            r = row.get();
          } else {
            r = reinterpret_cast<const A*>(residual) + (row0 + j) * cout;
          }
        }
        if (epi.any()) epilogue_row(s, epi.bias ? bias.data() : nullptr, r, epi.relu, cout, avx512);
        if constexpr (widen) narrow_row(s, out + (row0 + j) * cout, cout, avx512);
      }
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
                            int64_t tile, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, bool relu, bool reduced_precision_reduction) {
  check_weight(input, weight);
  // Checked as on CUDA (both compute from the pairs), so that both devices accept the same calls.
  checked_nbmap(input, weight, nbmap, tile);
  const Pairs pairs = checked_pairs(input, in_rows, out_rows, sizes, weight.size(0), nbmap.size(0));
  check_ascending_outputs(pairs);
  const FusedEpilogue epilogue = checked_epilogue(input, weight, nbmap.size(0), bias, residual);
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const int64_t m = nbmap.size(0), kv = w.size(0), cin = w.size(1), cout = w.size(2);
  // Per-thread buffers of tile rows: a tile larger than the map would only waste memory.
  tile = std::min<int64_t>(tile, std::max<int64_t>(m, 1));
  auto out = at::empty({m, cout}, x.options());
  int64_t full = -1;
  const int64_t* pairs_per_offset = pairs.sizes.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < kv && full < 0 && m > 0; ++k)
    if (pairs_per_offset[k] == m) full = k;
  Epilogue epi;
  epi.bias = epilogue.bias.defined() ? epilogue.bias.const_data_ptr() : nullptr;
  epi.residual = epilogue.residual.defined() ? epilogue.residual.const_data_ptr() : nullptr;
  epi.relu = relu;
  // float32 arithmetic (float32, bfloat16, float16) runs the AVX-512 indirect GEMM where the CPU has it, on the
  // weight packed once per call (K * C_in * C_out elements, small next to the tiles' work); else MKL.
  const bool fp16 = x.scalar_type() == at::kHalf && reduced_precision_reduction && cpu_has_avx512fp16();
  const bool indirect = x.scalar_type() != at::kDouble && cpu_has_avx512() && !fp16;
  const at::Tensor packed = indirect ? pack_weight(w) : at::Tensor();
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3d_fused_cpu", [&] {
      const float* wp = packed.defined() ? packed.const_data_ptr<float>() : nullptr;
      conv3d_fused_kernel<scalar_t, scalar_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), wp,
                                              nullptr, pairs, out.data_ptr<scalar_t>(), m, kv, cin, cout, tile, full,
                                              epi);
    });
    return out;
  }
  // The weight for MKL (no AVX-512), in float32.
  const at::Tensor weight_f32 = packed.defined() || fp16 ? at::Tensor() : w.to(at::kFloat);
  const at::Tensor packed_fp16 = fp16 ? pack_weight_fp16(w) : at::Tensor();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "conv3d_fused_cpu", [&] {
    const float* wp = packed.defined() ? packed.const_data_ptr<float>() : nullptr;
    const c10::Half* wh = fp16 ? packed_fp16.const_data_ptr<c10::Half>() : nullptr;
    const float* wf = weight_f32.defined() ? weight_f32.const_data_ptr<float>() : nullptr;
    conv3d_fused_kernel<scalar_t, float>(x.const_data_ptr<scalar_t>(), wf, wp, wh, pairs, out.data_ptr<scalar_t>(),
                                         m, kv, cin, cout, tile, full, epi);
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
