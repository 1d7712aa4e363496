// AVX-512 instantiation of the depth-wise kernels: 16 channels per vector, register blocks of
// 8 (or, for widths that are multiples of 7 but not of 8, such as RepLKNet's 56/28/14/7: 7)
// outputs x 8 taps.
// Compiled for AVX-512 through the target pragma (no torch header here, see dwconv_cpu_kernels.h);
// dwconv_cpu.cpp calls it only when the CPU reports AVX-512F.
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2")
// GCC 12 reports its own AVX-512 intrinsics headers as "may be used uninitialized" (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "dwconv_cpu_x86.h"

namespace {

template <int BlockWidth>
struct Avx512 : RegisterTranspose<Avx512<BlockWidth>, true> {
  REPLK_X86_FLOAT_OPS(_mm512, __m512, 16)
  static constexpr int WB = BlockWidth, TJMAX = 8;
  // non-temporal store of a whole cache line (p 64-byte aligned); fence() orders a thread's
  // streamed stores before the data is handed over
  static void stream(T* p, V v) { _mm512_stream_ps(p, v); }
  static void fence() { _mm_sfence(); }
  using M = __mmask16;
  // lanes [lo, hi) of a vector, 0 <= lo, hi <= 16
  static M range_mask(int lo, int hi) {
    return hi <= lo ? M(0) : static_cast<M>(((1u << hi) - 1) & ~((1u << lo) - 1));
  }
  static V maskz_loadu(M m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void mask_storeu(T* p, M m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  // 16 x 16 in registers: r[k] becomes column k
  static void transpose(V r[16]) {
    V u[16], t[16];
    transpose_within_lanes<Avx512>(r, u);
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);       // lanes 0,2 of rows 0-3 | 4-7
      t[4 + k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);   // lanes 1,3
      t[8 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
      t[12 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
    }
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);            // column k
      r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);        // column 8 + k
      r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);   // column 4 + k
      r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);  // column 12 + k
    }
  }
};

// The block width that wastes the fewest padding columns for a row of W outputs.
inline bool use_block7(int64_t W) { return W % 8 != 0 && W % 7 == 0; }

template <typename S>
void conv_tile_any(const replk::cpu::ConvTile<S, float>& a, float* scratch) {
  use_block7(a.W) ? conv_tile<Avx512<7>, S>(a, scratch) : conv_tile<Avx512<8>, S>(a, scratch);
}

template <typename S>
void grad_weight_tile_any(const replk::cpu::GradWeightTile<S, float>& a, float* scratch) {
  use_block7(a.W) ? grad_weight_tile<Avx512<7>, S>(a, scratch) : grad_weight_tile<Avx512<8>, S>(a, scratch);
}

int64_t scratch_elems_any(int64_t H, int64_t W, int64_t K) {
  return use_block7(W) ? scratch_elems<Avx512<7>>(H, W, K) : scratch_elems<Avx512<8>>(H, W, K);
}

}  // namespace

namespace replk::cpu {
Kernels<float> kernels_avx512_f32() {
  // VL, the tap chunks and the weight packing do not depend on the block width
  // (32 registers: the narrow path keeps 15 outputs + 15 inputs + 1 tap column in them)
  replk::cpu::Kernels<float> k =
      make_kernels<Avx512<8>, Avx512<8>, Avx512<8>, replk::cpu::kNarrowMaxW>("avx512", 5, 5);
  k.scratch_elems = &scratch_elems_any;
  k.conv_tile = &conv_tile_any<float>;
  k.grad_weight_tile = &grad_weight_tile_any<float>;
  k.conv_tile_bf16 = &conv_tile_any<replk::cpu::bf16_bits>;
  k.grad_weight_tile_bf16 = &grad_weight_tile_any<replk::cpu::bf16_bits>;
  return k;
}
}  // namespace replk::cpu
