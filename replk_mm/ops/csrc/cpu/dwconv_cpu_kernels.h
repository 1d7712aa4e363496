// The CPU algorithm of the depth-wise convolution, written once over a vector-ops class `O`
// (O::T element type, O::V vector of O::VL channels, O::WB outputs per register block,
// at most O::TJMAX taps per register chunk; the forward, the weight gradient and the direct rows
// may use classes with the same vector ops and different blockings). Included by one translation
// unit per instruction set (dwconv_cpu_avx512.cpp, dwconv_cpu_avx2.cpp, dwconv_cpu_generic.cpp),
// each compiled for its ISA; so no torch header and no external inline function may be used here
// (everything has internal linkage), or an AVX-512 copy of it could be linked into a CPU without
// AVX-512.
//
// Layout: a tile is VL channels of one image, packed into a scratch buffer [H][WS][VL] whose
// columns are zero-padded by K/2 on the left and up to WS on the right. Rows are not padded: the
// tap rows that would read padding are skipped by the loop bounds, and chunks of taps that fall
// entirely into the column padding are skipped too, so the work is (nearly) the useful work only.
// Inner loop (forward): WB accumulators (outputs w0..w0+WB-1, VL channels each) stay in registers
// while TJ weight vectors (taps j0..j0+TJ-1 of row i) are held in registers and the WB+TJ-1 inputs
// they need are streamed: WB*TJ FMAs per WB+2*TJ-1 loads. Weight gradient: the same with the TJ tap
// accumulators in registers and WB output-gradient vectors held.
// Small kernels (K <= Kernels::rows_max_k / planes_max_k) are memory-bound, and the packing copy
// would cost more than their arithmetic; their forward (and input gradient) skips it: channels_last
// rows read the channel vectors straight from the tensor (conv_row_cl_impl), NCHW planes vectorise
// along W with the taps broadcast in registers and masked loads at the borders (conv_plane_impl).
#pragma once

#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "dwconv_cpu_isa.h"
#include "dwconv_geometry.h"

namespace {

template <typename I>
inline I imin(I a, I b) { return a < b ? a : b; }
template <typename I>
inline I imax(I a, I b) { return a > b ? a : b; }

// Tap-chunk widths. The default covers a kernel row with the fewest chunks (dw_chunk_taps); an ops
// class may choose its own with `static constexpr int chunk_taps(int K)`.
constexpr int round_up(int K, int tj) { return (K + tj - 1) / tj * tj; }
constexpr int least_padding_chunk_taps(int K, int max_chunk) {
  // K itself if it fits; else the width in [max_chunk / 2, max_chunk] that pads the row least
  // (ties: the wider one); narrower chunks would need more loads per FMA than they save
  if (K <= max_chunk) return K;
  int best = max_chunk;
  for (int tj = max_chunk - 1; 2 * tj >= max_chunk; --tj)
    if (round_up(K, tj) < round_up(K, best)) best = tj;
  return best;
}
template <class O>
constexpr int chunk_taps(int K) {
  if constexpr (requires { O::chunk_taps(K); }) {
    return O::chunk_taps(K);
  } else {
    return replk::dw_chunk_taps(K, O::TJMAX);
  }
}
// kpad: a kernel row's taps rounded up to whole chunks (the packed weights' and accumulators' row).
template <class O>
int64_t padded_taps(int64_t K) {
  const int k = static_cast<int>(K);
  return round_up(k, chunk_taps<O>(k));
}

// Geometry of one packed tile.
struct TileGeom {
  int64_t H, W, K, pad;
  int64_t Wo;  // output columns computed: W rounded up to WB
  int64_t WS;  // scratch input columns: Wo + Kpad - 1
  int tj, kpad, nchunks;
};

template <class O>
inline TileGeom tile_geom(int64_t H, int64_t W, int64_t K) {
  TileGeom g;
  g.H = H;
  g.W = W;
  g.K = K;
  g.pad = replk::dw_pad(K);
  g.tj = chunk_taps<O>(static_cast<int>(K));
  g.kpad = static_cast<int>(padded_taps<O>(K));
  g.nchunks = g.kpad / g.tj;
  g.Wo = (W + O::WB - 1) / O::WB * O::WB;
  g.WS = g.Wo + g.kpad - 1;
  return g;
}

// Whether chunk j0 of a block of outputs w0..w0+WB-1 touches any non-padding column.
template <int WB, int TJ>
inline bool chunk_useful(int64_t w0, int64_t j0, const TileGeom& g) {
  const int64_t first = w0 + j0 - g.pad;
  return first + WB + TJ - 2 >= 0 && first <= g.W - 1;
}

// Element conversions between the tensors' type S and the compute type T: the identity, or
// bfloat16 <-> float32 (round to nearest even, NaN kept quiet).
template <typename T>
inline T to_compute(T v) { return v; }
inline float to_compute(replk::cpu::bf16_bits v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename S, typename T>
inline S to_storage(T v) {
  if constexpr (std::is_same_v<S, T>) {
    return v;
  } else {
    static_assert(std::is_same_v<S, replk::cpu::bf16_bits> && std::is_same_v<T, float>);
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<S>((u >> 16) | 0x40u);
    return static_cast<S>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// Packs rows [h0, h1) of VL (nc valid) channels of one image, given with arbitrary strides, into
// dst[H][cols][VL] at column offset col0; columns outside the image are zeroed here, lanes >= nc
// must have been zeroed by the caller.
template <class O, typename S>
void pack_rows(const S* src, int64_t sc, int64_t sh, int64_t sw, int nc, int64_t h0, int64_t h1,
               int64_t W, typename O::T* dst, int64_t cols, int64_t col0) {
  using T = typename O::T;
  constexpr int VL = O::VL;
  constexpr bool same = std::is_same_v<S, T>;
  for (int64_t h = h0; h < h1; ++h) {
    T* row = dst + h * cols * VL;
    if (nc == VL) {
      std::memset(row, 0, sizeof(T) * col0 * VL);
      std::memset(row + (col0 + W) * VL, 0, sizeof(T) * (cols - col0 - W) * VL);
    }
    T* out = row + col0 * VL;
    const S* in = src + h * sh;
    if (sc == 1 && nc == VL) {  // channels_last: one vector per pixel
      for (int64_t w = 0; w < W; ++w) {
        __builtin_prefetch(in + sh + w * sw);  // the next row's pixel (strided rows defeat the hardware)
        if constexpr (same) {
          O::store(out + w * VL, O::loadu(in + w * sw));
        } else {
          for (int c = 0; c < VL; ++c) out[w * VL + c] = to_compute(in[w * sw + c]);
        }
      }
    } else if (sw == 1 && nc == VL) {  // NCHW: transpose VL rows of W
      if constexpr (same) {
        O::transpose_in(in, sc, W, out);
      } else {  // widened 16 columns at a time, then transposed
        alignas(64) T tmp[VL * 16];
        for (int64_t w0 = 0; w0 < W; w0 += 16) {
          const int64_t n = imin<int64_t>(16, W - w0);
          for (int c = 0; c < VL; ++c)
            for (int64_t w = 0; w < n; ++w) tmp[c * 16 + w] = to_compute(in[c * sc + w0 + w]);
          O::transpose_in(tmp, 16, n, out + w0 * VL);
        }
      }
    } else {
      for (int c = 0; c < nc; ++c)
        for (int64_t w = 0; w < W; ++w) out[w * VL + c] = to_compute(in[c * sc + w * sw]);
    }
  }
}

// Writes the first W columns and nc lanes of one packed row src[cols][VL] to the row dst of a
// tensor with arbitrary strides.
template <class O, typename S>
void unpack_row(const typename O::T* src, int nc, int64_t W, S* dst, int64_t sc, int64_t sw) {
  using T = typename O::T;
  constexpr int VL = O::VL;
  constexpr bool same = std::is_same_v<S, T>;
  if (sc == 1 && nc == VL) {
    for (int64_t w = 0; w < W; ++w) {
      if constexpr (same) {
        O::storeu(dst + w * sw, O::load(src + w * VL));
      } else {
        for (int c = 0; c < VL; ++c) dst[w * sw + c] = to_storage<S>(src[w * VL + c]);
      }
    }
  } else if (sw == 1 && nc == VL) {
    if constexpr (same) {
      O::transpose_out(src, W, dst, sc);
    } else {  // transposed 16 columns at a time, then narrowed
      alignas(64) T tmp[VL * 16];
      for (int64_t w0 = 0; w0 < W; w0 += 16) {
        const int64_t n = imin<int64_t>(16, W - w0);
        O::transpose_out(src + w0 * VL, n, tmp, 16);
        for (int c = 0; c < VL; ++c)
          for (int64_t w = 0; w < n; ++w) dst[c * sc + w0 + w] = to_storage<S>(tmp[c * 16 + w]);
      }
    }
  } else {
    for (int c = 0; c < nc; ++c)
      for (int64_t w = 0; w < W; ++w) dst[c * sc + w * sw] = to_storage<S>(src[w * VL + c]);
  }
}

// acc[q] += sum over t < TJ of wv[t] * x[q + t] for the WB outputs q of a block, where x[d] is the
// input vector at xb + d * stride (VL in a packed tile, the pixel stride in a channels_last tensor);
// only d in [d_begin, d_end) is read, the others count as zero padding (a zero vector, so the
// FMAs stay unconditional and the accumulators in registers).
template <class O, int TJ>
inline __attribute__((always_inline)) void fma_chunk(const typename O::T* xb, int64_t stride,
                                                     const typename O::V* wv, typename O::V* acc,
                                                     int d_begin = 0, int d_end = O::WB + TJ - 1) {
  using V = typename O::V;
  constexpr int WB = O::WB;
#pragma GCC unroll 32
  for (int d = 0; d < WB + TJ - 1; ++d) {
    const V xv = d >= d_begin && d < d_end ? O::loadu(xb + d * stride) : O::zero();
#pragma GCC unroll 16
    for (int t = 0; t < TJ; ++t) {
      const int q = d - t;
      if (q >= 0 && q < WB) acc[q] = O::fma(wv[t], xv, acc[q]);
    }
  }
}

// acc[WB] (outputs w0..w0+WB-1) += taps of one kernel row (wr[kpad][VL]) applied to one scratch
// input row xr[WS][VL].
template <class O, int TJ>
inline __attribute__((always_inline)) void conv_block(const typename O::T* xr, const typename O::T* wr,
                                                      typename O::V* acc, int64_t w0, const TileGeom& g) {
  using V = typename O::V;
  constexpr int VL = O::VL;
  for (int j0 = 0; j0 < g.kpad; j0 += TJ) {
    if (!chunk_useful<O::WB, TJ>(w0, j0, g)) continue;
    V wv[TJ];
#pragma GCC unroll 16
    for (int t = 0; t < TJ; ++t) wv[t] = O::load(wr + (j0 + t) * VL);
    fma_chunk<O, TJ>(xr + (w0 + j0) * VL, VL, wv, acc);
  }
}

// Output row h of a tile: yr[Wo][VL] = init + sum over the useful tap rows i.
// Small kernels keep each block's accumulators in registers over all tap rows (the K input rows
// a block reads stay in L1); large ones sweep one tap row at a time over the whole output row, so
// that row stays in L1, and carry the accumulators through yr.
template <class O, int TJ>
void conv_out_row(const typename O::T* xs, const typename O::T* wp, typename O::T* yr, typename O::V init,
                  int64_t h, const TileGeom& g) {
  using V = typename O::V;
  constexpr int VL = O::VL, WB = O::WB;
  const int64_t i0 = replk::dw_tap_begin(h, g.K), i1 = replk::dw_tap_end(h, g.H, g.K);
  const bool rows_in_l1 = g.K * (WB + g.kpad - 1) * VL * sizeof(typename O::T) <= 20 * 1024;
  if (rows_in_l1) {
    for (int64_t w0 = 0; w0 < g.Wo; w0 += WB) {
      V acc[WB];
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) acc[q] = init;
      for (int64_t i = i0; i < i1; ++i)
        conv_block<O, TJ>(xs + (h + i - g.pad) * g.WS * VL, wp + i * g.kpad * VL, acc, w0, g);
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) O::store(yr + (w0 + q) * VL, acc[q]);
    }
    return;
  }
  for (int64_t w = 0; w < g.Wo; ++w) O::store(yr + w * VL, init);
  for (int64_t i = i0; i < i1; ++i) {
    const auto* xr = xs + (h + i - g.pad) * g.WS * VL;
    const auto* wr = wp + i * g.kpad * VL;
    for (int64_t w0 = 0; w0 < g.Wo; w0 += WB) {
      V acc[WB];
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) acc[q] = O::load(yr + (w0 + q) * VL);
      conv_block<O, TJ>(xr, wr, acc, w0, g);
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) O::store(yr + (w0 + q) * VL, acc[q]);
    }
  }
}

// accr[kpad][VL] += correlation of one output-gradient row gr[Wo][VL] with one input row xr[WS][VL].
template <class O, int TJ>
void grad_weight_row(const typename O::T* xr, const typename O::T* gr, typename O::T* accr,
                     const TileGeom& g) {
  using V = typename O::V;
  constexpr int VL = O::VL, WB = O::WB;
  for (int j0 = 0; j0 < g.kpad; j0 += TJ) {
    V acc[TJ];
#pragma GCC unroll 16
    for (int t = 0; t < TJ; ++t) acc[t] = O::load(accr + (j0 + t) * VL);
    for (int64_t w0 = 0; w0 < g.Wo; w0 += WB) {
      if (!chunk_useful<WB, TJ>(w0, j0, g)) continue;
      V gv[WB];
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) gv[q] = O::load(gr + (w0 + q) * VL);
      const auto* xb = xr + (w0 + j0) * VL;
#pragma GCC unroll 32
      for (int d = 0; d < WB + TJ - 1; ++d) {
        const V xv = O::load(xb + d * VL);
#pragma GCC unroll 16
        for (int t = 0; t < TJ; ++t) {
          const int q = d - t;
          if (q >= 0 && q < WB) acc[t] = O::fma(gv[q], xv, acc[t]);
        }
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < TJ; ++t) O::store(accr + (j0 + t) * VL, acc[t]);
  }
}

// Packs the input rows of a tile lazily, just before the first output row that needs them, so that
// they are still in L1/L2 when used.
template <class O, typename S>
struct RowPacker {
  const S* src;
  int64_t sc, sh, sw;
  int nc;
  typename O::T* dst;
  int64_t cols, col0;
  const TileGeom& g;
  int64_t done = 0;
  void upto(int64_t rows) {
    rows = imin(rows, g.H);
    if (rows > done) pack_rows<O, S>(src, sc, sh, sw, nc, done, rows, g.W, dst, cols, col0);
    done = imax(done, rows);
  }
};

template <class O, int TJ, typename S>
void conv_tile_impl(const replk::cpu::ConvTile<S, typename O::T>& a, const TileGeom& g,
                    typename O::T* xs, typename O::T* yr) {
  using T = typename O::T;
  constexpr int VL = O::VL;
  if (a.nc < VL) std::memset(xs, 0, sizeof(T) * g.H * g.WS * VL);
  RowPacker<O, S> in{a.x, a.xsc, a.xsh, a.xsw, a.nc, xs, g.WS, g.pad, g};
  const typename O::V init = a.bias ? O::loadu(a.bias) : O::zero();
  for (int64_t h = 0; h < g.H; ++h) {
    in.upto(h + g.pad + 1);
    conv_out_row<O, TJ>(xs, a.wpack, yr, init, h, g);
    unpack_row<O, S>(yr, a.nc, g.W, a.y + h * a.ysh, a.ysc, a.ysw);
  }
}

template <class O, int TJ, typename S>
void grad_weight_tile_impl(const replk::cpu::GradWeightTile<S, typename O::T>& a, const TileGeom& g,
                           typename O::T* xs, typename O::T* gs) {
  using T = typename O::T;
  using V = typename O::V;
  constexpr int VL = O::VL;
  if (a.nc < VL) {
    std::memset(xs, 0, sizeof(T) * g.H * g.WS * VL);
    std::memset(gs, 0, sizeof(T) * g.H * g.Wo * VL);
  }
  RowPacker<O, S> in{a.x, a.xsc, a.xsh, a.xsw, a.nc, xs, g.WS, g.pad, g};
  RowPacker<O, S> grad{a.gy, a.gsc, a.gsh, a.gsw, a.nc, gs, g.Wo, 0, g};
  for (int64_t h = 0; h < g.H; ++h) {
    in.upto(h + g.pad + 1);
    grad.upto(h + 1);
    const T* gr = gs + h * g.Wo * VL;
    const int64_t i1 = replk::dw_tap_end(h, g.H, g.K);
    for (int64_t i = replk::dw_tap_begin(h, g.K); i < i1; ++i)
      grad_weight_row<O, TJ>(xs + (h + i - g.pad) * g.WS * VL, gr, a.acc + i * g.kpad * VL, g);
    if (a.bias_acc) {
      V s = O::load(a.bias_acc);
      for (int64_t w = 0; w < g.W; ++w) s = O::add(s, O::load(gr + w * VL));
      O::store(a.bias_acc, s);
    }
  }
}

// Ops classes whose vectors are whole cache lines (AVX-512 float32) also have non-temporal stores:
// O::stream(p, v) and O::fence().
template <class O>
constexpr bool kStreams = requires(typename O::T* p, typename O::V v) {
  O::stream(p, v);
  O::fence();
};

// Stores the n output vectors acc[0..n) at y, y + ys, ...; non-temporal where asked and O has them.
template <class O>
inline void store_block(typename O::T* y, int64_t ys, const typename O::V* acc, int64_t n, bool stream) {
  if constexpr (kStreams<O>) {
    if (stream) {
      for (int64_t q = 0; q < n; ++q) O::stream(y + q * ys, acc[q]);
      return;
    }
  }
  for (int64_t q = 0; q < n; ++q) O::storeu(y + q * ys, acc[q]);
}

// Direct channels_last forward of one output row (all channel blocks, small K): input vectors are
// read from the tensor itself, so no packing copy is made. At the image borders the input vectors
// outside the image are not read (they count as zeros).
template <class O, int TJ>
void conv_row_cl_impl(const replk::cpu::ConvRowCL<typename O::T>& a) {
  using T = typename O::T;
  using V = typename O::V;
  constexpr int VL = O::VL, WB = O::WB;
  const int64_t K = a.K, pad = replk::dw_pad(K);
  const int kpad = static_cast<int>(padded_taps<O>(K));
  const int64_t i0 = replk::dw_tap_begin(a.h, K), i1 = replk::dw_tap_end(a.h, a.H, K);
  T* yr = a.y + a.h * a.ysh;
  for (int64_t cb = 0; cb < a.blocks; ++cb) {
    const T* xc = a.x + cb * VL;
    const T* wc = a.wpack + cb * K * kpad * VL;
    const V init = a.bias ? O::loadu(a.bias + cb * VL) : O::zero();
    // Pixels C floats apart defeat the hardware prefetchers: fetch the input row the next output
    // row reads first (into L2) while this one computes. (Prefetching the next channel block's
    // rows into L1 as well filled the miss buffers and stalled: slower in in-process A/B runs.)
    if (a.h + pad + 1 < a.H)
      for (int64_t w = 0; w < a.W; ++w) __builtin_prefetch(xc + (a.h + pad + 1) * a.xsh + w * a.xsw, 0, 2);
    for (int64_t w0 = 0; w0 < a.W; w0 += WB) {
      V acc[WB];
#pragma GCC unroll 16
      for (int q = 0; q < WB; ++q) acc[q] = init;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = xc + (a.h + i - pad) * a.xsh;
        const T* wr = wc + i * kpad * VL;
        for (int j0 = 0; j0 < kpad; j0 += TJ) {
          const int64_t col = w0 + j0 - pad;  // input column of x[d = 0]
          const int d_begin = static_cast<int>(imax<int64_t>(0, -col));
          const int d_end = static_cast<int>(imin<int64_t>(WB + TJ - 1, a.W - col));
          if (d_begin >= d_end) continue;
          V wv[TJ];
#pragma GCC unroll 16
          for (int t = 0; t < TJ; ++t) wv[t] = O::load(wr + (j0 + t) * VL);
          if (d_begin == 0 && d_end == WB + TJ - 1)  // inside the image: no bounds in the unrolled loop
            fma_chunk<O, TJ>(xr + col * a.xsw, a.xsw, wv, acc);
          else
            fma_chunk<O, TJ>(xr + col * a.xsw, a.xsw, wv, acc, d_begin, d_end);
        }
      }
      store_block<O>(yr + w0 * a.ysw + cb * VL, a.ysw, acc, imin<int64_t>(WB, a.W - w0), a.stream);
    }
  }
  if constexpr (kStreams<O>) {
    if (a.stream) O::fence();
  }
}

// Direct NCHW forward of one channel plane (small K, compile-time): vectors of VL outputs along a
// row, the K x K taps broadcast once into registers, masked loads at the image borders. RB output
// rows at a time share every input vector they read (one load feeds up to RB FMAs) and give RB
// independent accumulation chains.
template <class O, int K>
void conv_plane_impl(const replk::cpu::ConvPlane<typename O::T>& a) {
  using T = typename O::T;
  using V = typename O::V;
  using M = typename O::M;
  constexpr int VL = O::VL, RB = 4, pad = K / 2;
  V wv[K * K];
#pragma GCC unroll 32
  for (int t = 0; t < K * K; ++t) wv[t] = O::set1(a.w[t]);
  const V init = O::set1(a.bias);
  M masks[K];
  bool full[K];  // masked loads and stores are slow on some CPUs: used at the borders only
  for (int64_t w0 = 0; w0 < a.W; w0 += VL) {
    for (int j = 0; j < K; ++j) {  // lanes whose input column w0 + lane + j - pad is inside
      const int64_t col = w0 + j - pad;
      const int lo = static_cast<int>(imin<int64_t>(VL, imax<int64_t>(0, -col)));
      const int hi = static_cast<int>(imax<int64_t>(0, imin<int64_t>(VL, a.W - col)));
      masks[j] = O::range_mask(lo, hi);
      full[j] = lo == 0 && hi == VL;
    }
    const int out_lanes = static_cast<int>(imin<int64_t>(VL, a.W - w0));
    const M out_mask = O::range_mask(0, out_lanes);
    for (int64_t h0 = 0; h0 < a.H; h0 += RB) {
      V acc[RB];
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) acc[r] = init;
#pragma GCC unroll 16
      for (int dr = 0; dr < RB + K - 1; ++dr) {  // input row h0 - pad + dr
        const int64_t row = h0 - pad + dr;
        if (row < 0 || row >= a.H) continue;
        const T* xr = a.x + row * a.xsh + w0 - pad;
#pragma GCC unroll 16
        for (int j = 0; j < K; ++j) {
          const V xv = full[j] ? O::loadu(xr + j) : O::maskz_loadu(masks[j], xr + j);
#pragma GCC unroll 8
          for (int r = 0; r < RB; ++r) {
            const int i = dr - r;  // tap row of output row h0 + r
            if (i >= 0 && i < K) acc[r] = O::fma(wv[i * K + j], xv, acc[r]);
          }
        }
      }
      for (int r = 0; r < RB && h0 + r < a.H; ++r) {
        T* yp = a.y + (h0 + r) * a.ysh + w0;
        out_lanes == VL ? O::storeu(yp, acc[r]) : O::mask_storeu(yp, out_mask, acc[r]);
      }
    }
  }
}

// Direct channels_last forward of a narrow image: WN (= W, compile-time) columns and K >= 2 WN - 1,
// so every output column reads every input column and no tap falls into the column padding (the
// tiles of the packed path would spend half their FMAs on it: RepLKNet's 14 x 14 stage with
// K = 27). Per output row and input row, the WN outputs and the WN inputs stay in registers and
// each of the 2 WN - 1 tap columns that pair them is loaded once: WN^2 FMAs per 3 WN - 1 loads.
template <class O, int WN>
void conv_narrow_cl_impl(const replk::cpu::ConvNarrowCL<typename O::T>& a) {
  using T = typename O::T;
  using V = typename O::V;
  constexpr int VL = O::VL;
  const int64_t K = a.K, pad = replk::dw_pad(K), kpad = padded_taps<O>(K);
  for (int64_t cb = a.b0; cb < a.b1; ++cb) {
    const T* xc = a.x + cb * VL;
    const T* wc = a.wpack + cb * K * kpad * VL + pad * VL;  // tap column pad: input column = output column
    const V init = a.bias ? O::loadu(a.bias + cb * VL) : O::zero();
    for (int64_t h = 0; h < a.H; ++h) {
      V acc[WN];
#pragma GCC unroll 16
      for (int p = 0; p < WN; ++p) acc[p] = init;
      const int64_t i1 = replk::dw_tap_end(h, a.H, K);
      for (int64_t i = replk::dw_tap_begin(h, K); i < i1; ++i) {
        const T* xr = xc + (h + i - pad) * a.xsh;
        V xv[WN];
#pragma GCC unroll 16
        for (int q = 0; q < WN; ++q) xv[q] = O::loadu(xr + q * a.xsw);
        const T* wr = wc + i * kpad * VL;
#pragma GCC unroll 32
        for (int d = 1 - WN; d < WN; ++d) {  // input column = output column + d
          const V wv = O::load(wr + d * VL);
#pragma GCC unroll 16
          for (int p = d < 0 ? -d : 0; p < (d > 0 ? WN - d : WN); ++p) acc[p] = O::fma(wv, xv[p + d], acc[p]);
        }
      }
      store_block<O>(a.y + h * a.ysh + cb * VL, a.ysw, acc, WN, false);
    }
  }
}

// Runtime width (1..MaxW) -> compile-time instantiation.
template <class O, int MaxW, int WN = 1>
void conv_narrow_cl(const replk::cpu::ConvNarrowCL<typename O::T>& a) {
  if constexpr (WN < MaxW) {
    if (a.W != WN) return conv_narrow_cl<O, MaxW, WN + 1>(a);
  }
  conv_narrow_cl_impl<O, WN>(a);
}

// Runtime tap-chunk width (1..O::TJMAX) -> compile-time instantiation.
template <class O, template <class, int> class F, int TJ = 1, typename... A>
void with_tj(int tj, A&&... args) {
  static_assert(O::TJMAX >= 1 && O::TJMAX <= 8, "chunk widths 1..8 are instantiated");
  if constexpr (TJ < O::TJMAX) {
    if (tj != TJ) return with_tj<O, F, TJ + 1>(tj, args...);
  }
  F<O, TJ>::run(args...);
}

template <class O, int TJ>
struct ConvTileF {
  template <typename... A>
  static void run(A&&... args) { conv_tile_impl<O, TJ>(args...); }
};
template <class O, int TJ>
struct ConvRowCLF {
  template <typename... A>
  static void run(A&&... args) { conv_row_cl_impl<O, TJ>(args...); }
};
template <class O, int TJ>
struct GradWeightTileF {
  template <typename... A>
  static void run(A&&... args) { grad_weight_tile_impl<O, TJ>(args...); }
};

// ---- entry points (see dwconv_cpu_isa.h) ----

template <class O>
int64_t scratch_elems(int64_t H, int64_t W, int64_t K) {
  const TileGeom g = tile_geom<O>(H, W, K);
  // input tile + output-gradient tile (the forward uses one output row of it), cache-line rounded
  return (H * g.WS * O::VL + 16) / 16 * 16 + (H * g.Wo * O::VL + 16) / 16 * 16;
}

// Scratch for either pass when the forward (OF) and the weight gradient (OG) block differently.
template <class OF, class OG>
int64_t scratch_elems_both(int64_t H, int64_t W, int64_t K) {
  return imax(scratch_elems<OF>(H, W, K), scratch_elems<OG>(H, W, K));
}

template <class O>
void pack_weight(const typename O::T* w, int64_t C, int64_t K, bool flip, typename O::T* out) {
  using T = typename O::T;
  constexpr int VL = O::VL;
  const int64_t kpad = padded_taps<O>(K);
  const int64_t blocks = (C + VL - 1) / VL;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t nc = imin<int64_t>(VL, C - b * VL);
    for (int64_t i = 0; i < K; ++i) {
      T* row = out + (b * K + i) * kpad * VL;
      const int64_t si = flip ? K - 1 - i : i;
      if (nc == VL) {
        // row[j][l] = w[b VL + l][si][j]: the kernel rows of VL channels transposed in registers
        O::transpose_in(w + (b * VL * K + si) * K, K * K, K, row);
        if (flip)  // taps right to left
          for (int64_t j = 0; j < K / 2; ++j)
            for (int l = 0; l < VL; ++l) std::swap(row[j * VL + l], row[(K - 1 - j) * VL + l]);
      } else {
        for (int64_t j = 0; j < K; ++j)
          for (int l = 0; l < VL; ++l) {
            const int64_t sj = flip ? K - 1 - j : j;
            row[j * VL + l] = l < nc ? w[((b * VL + l) * K + si) * K + sj] : T(0);
          }
      }
      std::memset(row + K * VL, 0, sizeof(T) * (kpad - K) * VL);  // the chunks' padding taps
    }
  }
}

template <class O, typename S = typename O::T>
void conv_tile(const replk::cpu::ConvTile<S, typename O::T>& a, typename O::T* scratch) {
  const TileGeom g = tile_geom<O>(a.H, a.W, a.K);
  typename O::T* ys = scratch + (a.H * g.WS * O::VL + 16) / 16 * 16;
  with_tj<O, ConvTileF>(g.tj, a, g, scratch, ys);
}

template <class O, typename S = typename O::T>
void grad_weight_tile(const replk::cpu::GradWeightTile<S, typename O::T>& a, typename O::T* scratch) {
  const TileGeom g = tile_geom<O>(a.H, a.W, a.K);
  typename O::T* gs = scratch + (a.H * g.WS * O::VL + 16) / 16 * 16;
  with_tj<O, GradWeightTileF>(g.tj, a, g, scratch, gs);
}

template <class O>
void conv_row_cl(const replk::cpu::ConvRowCL<typename O::T>& a) {
  with_tj<O, ConvRowCLF>(chunk_taps<O>(static_cast<int>(a.K)), a);
}

template <class O>
void conv_plane(const replk::cpu::ConvPlane<typename O::T>& a) {
  static_assert(replk::cpu::kPlanesMaxK == 5, "conv_plane instantiates K = 1, 3, 5");
  switch (a.K) {
    case 1: conv_plane_impl<O, 1>(a); break;
    case 3: conv_plane_impl<O, 3>(a); break;
    default: conv_plane_impl<O, 5>(a); break;
  }
}

// O: the forward's (and input gradient's) blocking; OG: the weight gradient's; OR: the direct
// channels_last rows' (its chunk widths must be O's: it reads O's packed weights). Same vector ops.
// NarrowMaxW: the widest narrow image, 2 NarrowMaxW + 1 vectors fitting in the registers.
template <class O, class OG = O, class OR = O, int NarrowMaxW = 7>
replk::cpu::Kernels<typename O::T> make_kernels(const char* name, int rows_max_k, int planes_max_k) {
  static_assert(NarrowMaxW >= 1 && NarrowMaxW <= replk::cpu::kNarrowMaxW);
  static_assert(std::is_same_v<typename O::T, typename OG::T> && std::is_same_v<typename O::T, typename OR::T> &&
                O::VL == OG::VL && O::VL == OR::VL);
  replk::cpu::Kernels<typename O::T> k{name,
                                       O::VL,
                                       &padded_taps<O>,
                                       &padded_taps<OG>,
                                       &scratch_elems_both<O, OG>,
                                       &pack_weight<O>,
                                       &conv_tile<O>,
                                       &grad_weight_tile<OG>,
                                       nullptr,
                                       nullptr,
                                       rows_max_k,
                                       planes_max_k,
                                       &conv_row_cl<OR>,
                                       &conv_plane<O>,
                                       NarrowMaxW,
                                       &conv_narrow_cl<O, NarrowMaxW>};
  if constexpr (std::is_same_v<typename O::T, float>) {
    k.conv_tile_bf16 = &conv_tile<O, replk::cpu::bf16_bits>;
    k.grad_weight_tile_bf16 = &grad_weight_tile<OG, replk::cpu::bf16_bits>;
  }
  return k;
}

}  // namespace
