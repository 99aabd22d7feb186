// Row conversions of conv3d_fused for bfloat16 / float16 features on the CPU.
//
// The fused dataflow computes bfloat16 / float16 layers in float32 arithmetic: the input rows are converted while
// they are gathered, one float32 GEMM (MKL) runs per tile and offset, the tile accumulates in float32 and the
// epilogue rounds it once. Why not a low-precision GEMM: on the Xeon this was written on (AVX512_BF16 and
// AVX512_FP16, no AMX) a hand-written VDPBF16PS micro-kernel (6 x 64 register tile, no spills) reached 68-77 GFLOP/s
// per core against MKL's 116-156 float32 on the same cache-resident tiles, and at::mm in bfloat16 / float16 on one
// thread is 1.0-2.5x slower than float32 (it also rounds every product to the low precision); float16 has no
// float32-accumulating dot product before AVX10.2. Storage stays in the low precision, halving the traffic of
// features between layers.
//
// These helpers convert a row with AVX-512 where the CPU has it (AVX512F: float16 <-> float32 by VCVTPH2PS /
// VCVTPS2PH, bfloat16 by shifts), else element by element through c10; both round to nearest even.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

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

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void narrow_avx512(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    store_rounded(_mm512_maskz_loadu_ps(mask, src + i), dst + i, mask);
  }
}

}  // namespace detail
#endif

// dst[0:n] = float32 values of src (bfloat16 / float16), exact.
template <typename T>
void widen_row(const T* src, float* dst, int64_t n, bool avx512) {
#ifdef TORCHSPARSE_X86_AVX512
  if (avx512) return detail::widen_avx512(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
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
