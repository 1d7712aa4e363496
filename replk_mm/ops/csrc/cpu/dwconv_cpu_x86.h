// What the x86 instantiations (dwconv_cpu_avx2.cpp, dwconv_cpu_avx512.cpp) share: the float ops
// every vector width spells alike (_mm256_* / _mm512_*) and the channel <-> column transposes
// built on an ISA's in-register transpose. Included after the translation unit's
// `#pragma GCC target`, so everything here is compiled for that ISA (internal linkage, as in
// dwconv_cpu_kernels.h).
#pragma once

#include <immintrin.h>

#include "dwconv_cpu_kernels.h"

// The members of an ops class over float vectors VEC of LANES lanes whose intrinsics are
// PREFIX##_load_ps etc. (PREFIX: _mm256 or _mm512).
#define REPLK_X86_FLOAT_OPS(PREFIX, VEC, LANES)                                                  \
  using T = float;                                                                             \
  using V = VEC;                                                                               \
  static constexpr int VL = LANES;                                                             \
  static V load(const T* p) { return PREFIX##_load_ps(p); }                                    \
  static V loadu(const T* p) { return PREFIX##_loadu_ps(p); }                                  \
  static void store(T* p, V v) { PREFIX##_store_ps(p, v); }                                    \
  static void storeu(T* p, V v) { PREFIX##_storeu_ps(p, v); }                                  \
  static V zero() { return PREFIX##_setzero_ps(); }                                            \
  static V add(V a, V b) { return PREFIX##_add_ps(a, b); }                                     \
  static V fma(V a, V b, V c) { return PREFIX##_fmadd_ps(a, b, c); }                           \
  static V set1(T v) { return PREFIX##_set1_ps(v); }                                           \
  static V unpacklo(V a, V b) { return PREFIX##_unpacklo_ps(a, b); }                           \
  static V unpackhi(V a, V b) { return PREFIX##_unpackhi_ps(a, b); }                           \
  template <int Imm>                                                                           \
  static V shuffle(V a, V b) { return PREFIX##_shuffle_ps(a, b, Imm); }

namespace {

// The first two steps of a VL x VL transpose of r in registers, alike at every x86 width: 2 x 2
// blocks (unpack), then 4 x 4 blocks inside each 128-bit lane (shuffle). Afterwards u[4*i + k]
// holds, in each 128-bit lane l, column 4*l + k of rows 4*i .. 4*i+3; the ISA moves the lanes.
template <class O>
inline void transpose_within_lanes(const typename O::V r[], typename O::V u[]) {
  typename O::V t[O::VL];
  for (int i = 0; i < O::VL / 2; ++i) {
    t[2 * i] = O::unpacklo(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = O::unpackhi(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < O::VL / 4; ++i) {
    u[4 * i + 0] = O::template shuffle<0x44>(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = O::template shuffle<0xEE>(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = O::template shuffle<0x44>(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = O::template shuffle<0xEE>(t[4 * i + 1], t[4 * i + 3]);
  }
}

// transpose_in / transpose_out of the ops class O (derived from this one) through its register
// transpose O::transpose(V r[VL]): VL x VL blocks in registers; the last W % VL columns with masked
// loads / stores (MaskedTail) or element by element.
template <class O, bool MaskedTail>
struct RegisterTranspose {
  // out[w][VL] = in[c * sc + w] for VL channels c and W columns
  static void transpose_in(const float* in, int64_t sc, int64_t W, float* out) {
    constexpr int VL = O::VL;
    int64_t w = 0;
    for (; w + VL <= W; w += VL) {
      typename O::V r[VL];
      for (int c = 0; c < VL; ++c) r[c] = O::loadu(in + c * sc + w);
      O::transpose(r);
      for (int k = 0; k < VL; ++k) O::store(out + (w + k) * VL, r[k]);
    }
    if (w == W) return;
    if constexpr (MaskedTail) {
      const typename O::M m = O::range_mask(0, static_cast<int>(W - w));
      typename O::V r[VL];
      for (int c = 0; c < VL; ++c) r[c] = O::maskz_loadu(m, in + c * sc + w);
      O::transpose(r);
      for (int k = 0; k < W - w; ++k) O::store(out + (w + k) * VL, r[k]);
    } else {
      for (; w < W; ++w)
        for (int c = 0; c < VL; ++c) out[w * VL + c] = in[c * sc + w];
    }
  }
  // out[c * sc + w] = in[w][VL]
  static void transpose_out(const float* in, int64_t W, float* out, int64_t sc) {
    constexpr int VL = O::VL;
    int64_t w = 0;
    for (; w + VL <= W; w += VL) {
      typename O::V r[VL];
      for (int k = 0; k < VL; ++k) r[k] = O::load(in + (w + k) * VL);
      O::transpose(r);
      for (int c = 0; c < VL; ++c) O::storeu(out + c * sc + w, r[c]);
    }
    if (w == W) return;
    if constexpr (MaskedTail) {
      const typename O::M m = O::range_mask(0, static_cast<int>(W - w));
      typename O::V r[VL];
      for (int k = 0; k < VL; ++k) r[k] = k < W - w ? O::load(in + (w + k) * VL) : O::zero();
      O::transpose(r);
      for (int c = 0; c < VL; ++c) O::mask_storeu(out + c * sc + w, m, r[c]);
    } else {
      for (; w < W; ++w)
        for (int c = 0; c < VL; ++c) out[c * sc + w] = in[w * VL + c];
    }
  }
};

}  // namespace
