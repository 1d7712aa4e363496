// AVX2/FMA instantiation of the depth-wise kernels: 8 channels per vector, 16 ymm registers.
// Two FMA pipes with a 4-cycle latency need 8 independent accumulation chains: the forward holds
// 8 output accumulators + up to 6 weight vectors (8 x 6 blocks), the weight gradient 8 tap
// accumulators + 4 output-gradient vectors (4 x 8 blocks). Compiled for AVX2 through the target
// pragma (no torch header here); dwconv_cpu.cpp calls it only when the CPU reports AVX2 and FMA.
#pragma GCC target("avx2,fma")
#include "dwconv_cpu_x86.h"

namespace {

struct Avx2Ops : RegisterTranspose<Avx2Ops, false> {
  REPLK_X86_FLOAT_OPS(_mm256, __m256, 8)
  using M = __m256i;
  // lanes [lo, hi) of a vector (sign bit set), 0 <= lo, hi <= 8
  static M range_mask(int lo, int hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane));
  }
  static V maskz_loadu(M m, const T* p) { return _mm256_maskload_ps(p, m); }
  static void mask_storeu(T* p, M m, V v) { _mm256_maskstore_ps(p, m, v); }
  // 8 x 8 in registers: r[k] becomes column k
  static void transpose(V r[8]) {
    V u[8];
    transpose_within_lanes<Avx2Ops>(r, u);
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
      r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
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
