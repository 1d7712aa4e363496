// AVX2/FMA instantiation of the depth-wise kernels: 8 channels per vector, 16 ymm registers.
// Two FMA pipes with a 4-cycle latency need 8 independent accumulation chains: the forward holds
// 8 output accumulators + up to 6 weight vectors (8 x 6 blocks), the weight gradient 8 tap
// accumulators + 4 output-gradient vectors (4 x 8 blocks). Compiled for AVX2 through the target
// pragma (no torch header here); dwconv_cpu.cpp calls it only when the CPU reports AVX2 and FMA.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "dwconv_cpu_kernels.h"

namespace {

inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
  }
}

struct Avx2Ops {
  using T = float;
  using V = __m256;
  static constexpr int VL = 8;
  static V load(const T* p) { return _mm256_load_ps(p); }
  static V loadu(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_store_ps(p, v); }
  static void storeu(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V set1(T v) { return _mm256_set1_ps(v); }
  using M = __m256i;
  // lanes [lo, hi) of a vector (sign bit set), 0 <= lo, hi <= 8
  static M range_mask(int lo, int hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane));
  }
  static V maskz_loadu(M m, const T* p) { return _mm256_maskload_ps(p, m); }
  static void mask_storeu(T* p, M m, V v) { _mm256_maskstore_ps(p, m, v); }
  static void transpose_in(const T* in, int64_t sc, int64_t W, T* out) {
    int64_t w = 0;
    for (; w + 8 <= W; w += 8) {
      __m256 r[8];
      for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(in + c * sc + w);
      transpose8(r);
      for (int k = 0; k < 8; ++k) _mm256_store_ps(out + (w + k) * 8, r[k]);
    }
    for (; w < W; ++w)
      for (int c = 0; c < 8; ++c) out[w * 8 + c] = in[c * sc + w];
  }
  static void transpose_out(const T* in, int64_t W, T* out, int64_t sc) {
    int64_t w = 0;
    for (; w + 8 <= W; w += 8) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_load_ps(in + (w + k) * 8);
      transpose8(r);
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(out + c * sc + w, r[c]);
    }
    for (; w < W; ++w)
      for (int c = 0; c < 8; ++c) out[c * sc + w] = in[w * 8 + c];
  }
};

// Forward and input gradient: 8 outputs x up to 6 taps (15 registers with the input vector), the
// chunk width that pads a kernel row least (K=31: 8 chunks of 4, not 6 of 6).
struct Avx2Forward : Avx2Ops {
  static constexpr int WB = 8, TJMAX = 6;
  static constexpr int chunk_taps(int K) { return least_padding_chunk_taps(K, TJMAX); }
};

// Direct channels_last rows (K = 3, memory-bound): 4 outputs per block (measured a little faster
// than 8 there), the forward's chunk widths and weight packing.
struct Avx2Rows : Avx2Forward {
  static constexpr int WB = 4;
};

// Weight gradient: 4 output-gradient vectors x up to 8 tap accumulators.
struct Avx2GradWeight : Avx2Ops {
  static constexpr int WB = 4, TJMAX = 8;
};

}  // namespace

namespace replk::cpu {
Kernels<float> kernels_avx2_f32() { return make_kernels<Avx2Forward, Avx2GradWeight, Avx2Rows>("avx2", 3, 0); }
}  // namespace replk::cpu
