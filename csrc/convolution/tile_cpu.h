// Output tiles of conv3d_fused on the CPU: the indirect GEMM micro-kernel (input rows read in place through their
// indices, products summed into the tile rows in registers), row additions and epilogues, all with AVX-512 where the
// CPU has it (the extension is compiled for baseline x86-64, so the compiler alone would use SSE2), and the row
// conversions of bfloat16 / float16 features.
//
// The fused dataflow computes bfloat16 layers, and float16 layers unless reduced-precision sums are allowed, in
// float32 arithmetic: the input rows are widened to float32 while they are gathered, the float32 micro-kernel sums
// them into a float32 tile, the epilogue rounds it once. Storage stays in the low precision (half the bytes per
// feature row). Why not a bfloat16 GEMM: on the Xeon this was written on (AVX512_BF16 and AVX512_FP16, no AMX) a
// VDPBF16PS micro-kernel of the same 6 x 64 register tile (no spills) reached 68-77 GFLOP/s per core where float32
// on the same tiles reached 116-156 (VDPBF16PS does twice the MACs of an FMA but issued at less than half its rate).
//
// float16 with reduced-precision sums allowed, on CPUs with AVX512-FP16 (Sapphire Rapids and later): VFMADDPH
// multiplies 32 float16 lanes per instruction where a float32 FMA has 16, at the same rate, so the same register
// tile does twice the work (1.3-1.9x the float32 kernel's speed on the real scan at 64-256 channels in
// benchmarks/models/bench_minkunet.py --precision). VFMADDPH rounds every sum to float16, so a lane sums at most
// FP16_PAIRS_PER_SUM products in float16; those sums are widened and added in float32 (indirect_gemm_fp16). float16
// has no float32-accumulating dot product before AVX10.2.
//
// The conversions use AVX-512 where the CPU has it (AVX512F: float16 <-> float32 by VCVTPH2PS / VCVTPS2PH, bfloat16
// by shifts), else element by element through c10; both round to nearest even. The row helpers give the same bits
// with and without AVX-512 (additions in the same order, one rounding each); the micro-kernel's FMAs round once
// per multiply-add, MKL (the fallback without AVX-512, and float64) rounds as MKL does.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TORCHSPARSE_X86_AVX512 1
#endif

namespace torchsparse {

inline bool cpu_has_avx512() {
#ifdef TORCHSPARSE_X86_AVX512
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
#else
  return false;
#endif
}

// Whether the CPU runs indirect_gemm_fp16 (AVX512-FP16 and AVX512DQ besides cpu_has_avx512's).
inline bool cpu_has_avx512fp16() {
#ifdef TORCHSPARSE_X86_AVX512
  static const bool has =
      cpu_has_avx512() && __builtin_cpu_supports("avx512fp16") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

// Products summed in float16 per lane before the float32 sum (each lane takes every other input channel, so a sum
// covers 2 * FP16_PAIRS_PER_SUM channels). 16 keeps the error at ~3x float16's rounding of the output (relative RMS
// 6.4e-4 against 2.1e-4 with float32 sums, C = 64-256 on the real scan, benchmarks/models/bench_minkunet.py
// --precision); a prototype with 32 was 10 % faster at 8.7e-4 (C = 128).
constexpr int64_t FP16_PAIRS_PER_SUM = 16;

#ifdef TORCHSPARSE_X86_AVX512
namespace detail {

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load_as_float(const c10::Half* src, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, src));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load_as_float(const c10::BFloat16* src, __mmask16 mask) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void store_rounded(__m512 v, c10::Half* dst, __mmask16 mask) {
  _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Round to nearest even as c10::BFloat16: bits + 0x7fff + lsb, upper half; NaN becomes the quiet NaN 0x7fc0.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void store_rounded(__m512 v, c10::BFloat16* dst,
                                                                       __mmask16 mask) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtepi32_epi16(rounded));
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void widen_avx512(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, mask, load_as_float(src + i, mask));
  }
}

// dst[q] = float32 values of x[src[q]] for q < n, rows of c values (one call per tile and offset, not per row).
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void widen_rows_avx512(const T* x, const int32_t* src,
                                                                              int64_t n, int64_t c, float* dst) {
  for (int64_t q = 0; q < n; ++q) widen_avx512(x + int64_t(src[q]) * c, dst + q * c, c);
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void narrow_avx512(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    store_rounded(_mm512_maskz_loadu_ps(mask, src + i), dst + i, mask);
  }
}

// o[local[q]][0:c] += p[q][0:c] for q < n (row strides c).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void add_rows_avx512(float* o, const int32_t* local,
                                                                                   const float* p, int64_t n,
                                                                                   int64_t c) {
  for (int64_t q = 0; q < n; ++q) {
    float* d = o + int64_t(local[q]) * c;
    const float* s = p + q * c;
    for (int64_t i = 0; i < c; i += 16) {
      const __mmask16 mask = tail_mask(c - i);
      _mm512_mask_storeu_ps(d + i, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d + i),
                                                        _mm512_maskz_loadu_ps(mask, s + i)));
    }
  }
}

// s[0:c] = [relu]((s + bias) + residual), each of bias / residual optional (null).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void epilogue_avx512(float* s, const float* bias,
                                                                                  const float* residual, bool relu,
                                                                                  int64_t c) {
  for (int64_t i = 0; i < c; i += 16) {
    const __mmask16 mask = tail_mask(c - i);
    __m512 v = _mm512_maskz_loadu_ps(mask, s + i);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + i));
    if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, residual + i));
    // max(v, 0) with v first keeps NaN (VMAXPS returns the second operand when either is NaN), as torch.relu.
    if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, _mm512_setzero_ps());
    _mm512_mask_storeu_ps(s + i, mask, v);
  }
}

// The indirect GEMM micro-kernel: for the MR rows r, o[local[r]][j0 : j0 + 16 NV] (+)= a[src[r]] @ wp[:, j0 : ...]
// in float32 with FMA, the MR x NV accumulators in registers. mask[v]: the columns of vector v below C_out.
template <int MR, int NV>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void gemm_block_avx512(const float* a, int64_t cin,
                                                                             const int32_t* src, const int32_t* local,
                                                                             const float* wp, int64_t j0,
                                                                             float* o, int64_t cout, bool accumulate,
                                                                             const __mmask16* mask) {
  const float* ar[MR];
  float* cr[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    ar[r] = a + int64_t(src[r]) * cin;
    cr[r] = o + int64_t(local[r]) * cout + j0;
  }
  __m512 sum[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      sum[r][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], cr[r] + 16 * v) : _mm512_setzero_ps();
  // The block of columns j0 .. j0 + 16 NV is stored contiguously: (C_in, 16 NV) at wp + C_in * j0.
  const float* w = wp + cin * j0;
  for (int64_t c = 0; c < cin; ++c, w += 16 * NV) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(w + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) sum[r][v] = _mm512_fmadd_ps(av, b[v], sum[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(cr[r] + 16 * v, mask[v], sum[r][v]);
}

// One channel pair p of gemm_block_fp16: h[r][v] += (channels 2p, 2p + 1 of row r) * (the pair's weight vector v).
// The two float16 values are broadcast as one 32-bit word (VBROADCASTSS from memory, a plain load); last: C_in is
// odd and p is its last channel, alone (its row ends there: two bytes read, the other half zero).
template <int MR, int NV, bool last>
__attribute__((target("avx512fp16,avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline void fp16_pair(
    const c10::Half* const* ar, int64_t p, const _Float16* w, __m512h (&h)[MR][NV]) {
  __m512h b[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ph(w + 32 * v);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    __m512 both;
    if constexpr (last) {
      uint16_t value;
      std::memcpy(&value, ar[r] + 2 * p, 2);
      both = _mm512_castsi512_ps(_mm512_set1_epi32(value));
    } else {
      float value;
      std::memcpy(&value, ar[r] + 2 * p, 4);
      both = _mm512_set1_ps(value);
    }
    const __m512h x = _mm512_castps_ph(both);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) h[r][v] = _mm512_fmadd_ph(x, b[v], h[r][v]);
  }
}

// The float16 micro-kernel: for the MR rows r, o[local[r]][j0 : j0 + 16 NV] (+)= a[src[r]] @ w[:, j0 : ...], float16
// products. Lane 2j of weight vector v holds w[c][j0 + 16 v + j], lane 2j + 1 holds w[c + 1][...] (channel pairs,
// `pack_weight_fp16`), so one 32-bit broadcast of the input's channels (c, c + 1), a plain load (a 16-bit broadcast
// would also take a shuffle port, which 512-bit FMAs use), feeds 16 columns x 2 channels per VFMADDPH. Every
// FP16_PAIRS_PER_SUM pairs the float16 sums are widened and added into float32 sums kept on the stack in lane order;
// at the end the even and odd lanes of each column are added.
template <int MR, int NV>
__attribute__((target("avx512fp16,avx512f,avx512bw,avx512vl,avx512dq"))) void gemm_block_fp16(
    const c10::Half* a, int64_t cin, const int32_t* src, const int32_t* local, const c10::Half* wp, int64_t j0,
    float* o, int64_t cout, bool accumulate, const __mmask16* mask) {
  const c10::Half* ar[MR];
  float* cr[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    ar[r] = a + int64_t(src[r]) * cin;
    cr[r] = o + int64_t(local[r]) * cout + j0;
  }
  alignas(64) float wide[MR][NV][32];
  const int64_t pairs = (cin + 1) / 2, whole = cin / 2;
  // The block of columns j0 .. j0 + 16 NV: (pairs, 16 NV, 2) at wp + 2 pairs j0.
  const _Float16* w = reinterpret_cast<const _Float16*>(wp + 2 * pairs * j0);
  for (int64_t p0 = 0; p0 < pairs; p0 += FP16_PAIRS_PER_SUM) {
    const int64_t p1 = std::min(pairs, p0 + FP16_PAIRS_PER_SUM);
    __m512h h[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) h[r][v] = _mm512_setzero_ph();
    const int64_t full = std::min(p1, whole);
    for (int64_t p = p0; p < full; ++p, w += 32 * NV) fp16_pair<MR, NV, false>(ar, p, w, h);
    if (full < p1) {
      fp16_pair<MR, NV, true>(ar, full, w, h);
      w += 32 * NV;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __m512i bits = _mm512_castph_si512(h[r][v]);
        __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(bits));
        __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1));
        if (p0 > 0) {
          lo = _mm512_add_ps(_mm512_load_ps(wide[r][v]), lo);
          hi = _mm512_add_ps(_mm512_load_ps(wide[r][v] + 16), hi);
        }
        _mm512_store_ps(wide[r][v], lo);
        _mm512_store_ps(wide[r][v] + 16, hi);
      }
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 lo = _mm512_load_ps(wide[r][v]), hi = _mm512_load_ps(wide[r][v] + 16);
      __m512 sum = _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
      if (accumulate) sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], cr[r] + 16 * v), sum);
      _mm512_mask_storeu_ps(cr[r] + 16 * v, mask[v], sum);
    }
}

}  // namespace detail
#endif

// Output channels rounded up to whole 16-lane vectors.
inline int64_t padded16(int64_t c) { return (c + 15) / 16 * 16; }

#ifdef TORCHSPARSE_X86_AVX512
namespace detail {

// Calls block(std::integral_constant<int, NV>{}, j0, mask) for the blocks of 64 output columns j0, 64 + j0, ..., the
// last one NV = ceil(rest / 16) vectors wide (NV = 4 before it); mask[v]: the columns of vector v below C_out.
template <typename Block>
void for_column_blocks(int64_t cout, Block&& block) {
  const int64_t n16 = padded16(cout);
  for (int64_t j0 = 0; j0 < n16; j0 += 64) {
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) mask[v] = j0 + 16 * v < cout ? tail_mask(cout - j0 - 16 * v) : 0;
    switch (std::min<int64_t>(4, (n16 - j0) / 16)) {
      case 4: block(std::integral_constant<int, 4>{}, j0, mask); break;
      case 3: block(std::integral_constant<int, 3>{}, j0, mask); break;
      case 2: block(std::integral_constant<int, 2>{}, j0, mask); break;
      default: block(std::integral_constant<int, 1>{}, j0, mask); break;
    }
  }
}

// Rows per block of both micro-kernels: MR x NV accumulators + NV weight vectors + 1 broadcast <= 32 registers.
constexpr int kBlockRows = 6;

template <int R, typename Block>
void row_block_tail(int64_t left, int64_t q, Block& block) {
  if constexpr (R > 0) {
    if (left == R) return block(std::integral_constant<int, R>{}, q);
    row_block_tail<R - 1>(left, q, block);
  }
}

// Calls block(std::integral_constant<int, MR>{}, q) for the row blocks q = 0, kBlockRows, ... of n rows: MR =
// kBlockRows, the last one MR = n mod kBlockRows when that is not 0.
template <typename Block>
void for_row_blocks(int64_t n, Block&& block) {
  int64_t q = 0;
  for (; q + kBlockRows <= n; q += kBlockRows) block(std::integral_constant<int, kBlockRows>{}, q);
  row_block_tail<kBlockRows - 1>(n - q, q, block);
}

}  // namespace detail
#endif

// weight (K, C_in, C_out) contiguous, any floating dtype, as indirect_gemm reads it: float32 (K, C_in * padded16(C_out))
// where offset k holds column blocks of 64 (the last one 16 * ceil(rest / 16) wide) one after the other, each (C_in,
// width) row-major, zero beyond C_out. Contiguous blocks keep a block's rows in distinct cache sets (a C_out-strided
// layout maps them onto few L1 sets at C_out = 128, 256).
inline at::Tensor pack_weight(const at::Tensor& weight) {
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t kv = w.size(0), cin = w.size(1), cout = w.size(2), n16 = padded16(cout);
  auto packed = at::zeros({kv, cin * n16}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for (int64_t k = 0; k < kv; ++k)
    for (int64_t j0 = 0; j0 < n16; j0 += 64) {
      const int64_t width = std::min<int64_t>(64, n16 - j0), used = std::min(width, cout - j0);
      float* block = dst + k * cin * n16 + cin * j0;
      for (int64_t c = 0; c < cin; ++c)
        for (int64_t v = 0; v < used; ++v) block[c * width + v] = src[(k * cin + c) * cout + j0 + v];
    }
  return packed;
}

// Rows o[local[q]] (row stride C_out) = (accumulate ? o[local[q]] : 0) + a[src[q]] @ wk for q < n, float32, by the
// AVX-512 micro-kernel (requires cpu_has_avx512()): the input rows are read in place through src, the products
// summed into the output rows in registers (no gather copy, no product buffer), 64 output columns at a time.
// wk: one offset of `pack_weight`'s result, C_in * padded16(C_out) floats.
inline void indirect_gemm(const float* a, int64_t cin, const int32_t* src, const int32_t* local, int64_t n,
                          const float* wk, int64_t cout, float* o, bool accumulate) {
#ifdef TORCHSPARSE_X86_AVX512
  detail::for_column_blocks(cout, [&](auto nv, int64_t j0, const __mmask16* mask) {
    detail::for_row_blocks(n, [&](auto mr, int64_t q) {
      detail::gemm_block_avx512<decltype(mr)::value, decltype(nv)::value>(a, cin, src + q, local + q, wk, j0, o, cout,
                                                                          accumulate, mask);
    });
  });
#else
  (void)a, (void)cin, (void)src, (void)local, (void)n, (void)wk, (void)cout, (void)o, (void)accumulate;
  TORCH_CHECK(false, "indirect_gemm needs an x86-64 CPU with AVX-512");
#endif
}

// weight (K, C_in, C_out) contiguous, any floating dtype, as indirect_gemm_fp16 reads it: float16
// (K, 2 ceil(C_in / 2) padded16(C_out)) where offset k holds column blocks as pack_weight's, each (ceil(C_in / 2),
// width, 2) with [p][j][e] = w[k][2p + e][j0 + j], zero beyond C_in and C_out.
inline at::Tensor pack_weight_fp16(const at::Tensor& weight) {
  const auto w = weight.to(at::kHalf).contiguous();
  const int64_t kv = w.size(0), cin = w.size(1), cout = w.size(2), n16 = padded16(cout), pairs = (cin + 1) / 2;
  auto packed = at::zeros({kv, 2 * pairs * n16}, w.options());
  const c10::Half* src = w.const_data_ptr<c10::Half>();
  c10::Half* dst = packed.data_ptr<c10::Half>();
  for (int64_t k = 0; k < kv; ++k)
    for (int64_t j0 = 0; j0 < n16; j0 += 64) {
      const int64_t width = std::min<int64_t>(64, n16 - j0), used = std::min(width, cout - j0);
      c10::Half* block = dst + k * 2 * pairs * n16 + 2 * pairs * j0;
      for (int64_t c = 0; c < cin; ++c)
        for (int64_t j = 0; j < used; ++j) block[((c / 2) * width + j) * 2 + c % 2] = src[(k * cin + c) * cout + j0 + j];
    }
  return packed;
}

// indirect_gemm for float16 rows a (read in place through src) with float16 products: each output element sums its
// products in float16 over runs of FP16_PAIRS_PER_SUM channel pairs and those sums in float32, in a fixed order.
// Requires cpu_has_avx512fp16(). wk: one offset of `pack_weight_fp16`'s result; o: float32 rows of stride C_out.
inline void indirect_gemm_fp16(const c10::Half* a, int64_t cin, const int32_t* src, const int32_t* local, int64_t n,
                               const c10::Half* wk, int64_t cout, float* o, bool accumulate) {
#ifdef TORCHSPARSE_X86_AVX512
  detail::for_column_blocks(cout, [&](auto nv, int64_t j0, const __mmask16* mask) {
    detail::for_row_blocks(n, [&](auto mr, int64_t q) {
      detail::gemm_block_fp16<decltype(mr)::value, decltype(nv)::value>(a, cin, src + q, local + q, wk, j0, o, cout,
                                                                        accumulate, mask);
    });
  });
#else
  (void)a, (void)cin, (void)src, (void)local, (void)n, (void)wk, (void)cout, (void)o, (void)accumulate;
  TORCH_CHECK(false, "indirect_gemm_fp16 needs an x86-64 CPU with AVX512-FP16");
#endif
}

// o[local[q]] += p[q] for the n rows of p (row width c, both row-major).
template <typename A>
void add_rows(A* o, const int32_t* local, const A* p, int64_t n, int64_t c, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if constexpr (std::is_same_v<A, float>) {
    if (avx512) return detail::add_rows_avx512(o, local, p, n, c);
  }
#endif
  for (int64_t q = 0; q < n; ++q) {
    A* d = o + int64_t(local[q]) * c;
    const A* s = p + q * c;
    for (int64_t i = 0; i < c; ++i) d[i] += s[i];
  }
}

// s = [relu]((s + bias) + residual) over one row of c values; bias / residual may be null. ReLU keeps NaN.
template <typename A>
void epilogue_row(A* s, const A* bias, const A* residual, bool relu, int64_t c, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if constexpr (std::is_same_v<A, float>) {
    if (avx512) return detail::epilogue_avx512(s, bias, residual, relu, c);
  }
#endif
  for (int64_t i = 0; i < c; ++i) {
    A v = s[i];
    if (bias) v += bias[i];
    if (residual) v += residual[i];
    if (relu && v < A(0)) v = A(0);
    s[i] = v;
  }
}

// dst[0:n] = float32 values of src (bfloat16 / float16), exact.
template <typename T>
void widen_row(const T* src, float* dst, int64_t n, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if (avx512) return detail::widen_avx512(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// dst[q * c : (q + 1) * c] = float32 values of row src[q] of x (bfloat16 / float16, rows of c values), exact.
template <typename T>
void widen_rows(const T* x, const int32_t* src, int64_t n, int64_t c, float* dst, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if (avx512) return detail::widen_rows_avx512(x, src, n, c, dst);
#endif
  for (int64_t q = 0; q < n; ++q)
    for (int64_t i = 0; i < c; ++i) dst[q * c + i] = static_cast<float>(x[int64_t(src[q]) * c + i]);
}

// dst[0:n] = src rounded to T (bfloat16 / float16), to nearest even.
template <typename T>
void narrow_row(const float* src, T* dst, int64_t n, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if (avx512) return detail::narrow_avx512(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

}  // namespace torchsparse
