// Interface between the torch glue (dwconv_cpu.cpp) and the per-ISA kernels (dwconv_cpu_kernels.h).
// Plain C++ only: included by translation units compiled for AVX-512 / AVX2.
#pragma once

#include <cstdint>

namespace replk::cpu {

// bfloat16 storage: the upper 16 bits of a float32 (the packed tiles and all arithmetic are float32).
using bf16_bits = uint16_t;

// One tile = up to VL channels (nc valid, from channel c0) of one image. Pointers point at
// (n, c0, 0, 0); strides are in elements (channel, row, column), any memory format.
// S: the tensors' element type (T, or bf16_bits with T = float); T: the compute type.
template <typename S, typename T = S>
struct ConvTile {
  const S* x;
  int64_t xsc, xsh, xsw;
  S* y;
  int64_t ysc, ysh, ysw;
  const T* wpack;  // packed weights of this channel block: [K][kpad][VL]
  const T* bias;   // bias + c0 (VL readable values), or nullptr
  int nc;
  int64_t H, W, K;
};

template <typename S, typename T = S>
struct GradWeightTile {
  const S* x;
  int64_t xsc, xsh, xsw;
  const S* gy;
  int64_t gsc, gsh, gsw;
  T* acc;       // [K][kpad][VL], accumulated into
  T* bias_acc;  // [VL], accumulated into, or nullptr
  int nc;
  int64_t H, W, K;
};

// Direct forward of one output row h of one image whose channels are contiguous (channels_last),
// all C = blocks * VL channels; pointers point at (n, 0, 0, 0), strides in elements.
template <typename T>
struct ConvRowCL {
  const T* x;
  int64_t xsh, xsw;
  T* y;
  int64_t ysh, ysw;
  const T* wpack;  // packed weights of all channel blocks: [blocks][K][kpad][VL]
  const T* bias;   // blocks * VL values, or nullptr
  int64_t blocks;
  int64_t H, W, K, h;
  // write y with non-temporal stores (vectors of a whole cache line, y and its pixel stride aligned
  // to them; other vector widths ignore it): for outputs larger than the caches, whose lines would
  // otherwise be read for ownership first
  bool stream;
};

// Direct forward of channel blocks [b0, b1) of one narrow image (W <= Kernels::narrow_max_w, K >=
// 2W - 1: every output column sees every input column) whose channels are contiguous; pointers at
// (n, 0, 0, 0), strides in elements.
template <typename T>
struct ConvNarrowCL {
  const T* x;
  int64_t xsh, xsw;
  T* y;
  int64_t ysh, ysw;
  const T* wpack;  // packed weights of all channel blocks: [blocks][K][kpad][VL]
  const T* bias;   // blocks * VL values, or nullptr
  int64_t b0, b1;
  int64_t H, W, K;
};

// Direct forward of one channel plane whose rows are contiguous (NCHW); pointers at (n, c, 0, 0).
template <typename T>
struct ConvPlane {
  const T* x;
  int64_t xsh;
  T* y;
  int64_t ysh;
  const T* w;  // this channel's K x K taps, row-major
  T bias;
  int64_t H, W, K;
};

template <typename T>
struct Kernels {
  const char* name;
  int vl;                                                   // channels per tile
  int64_t (*padded_taps)(int64_t K);                        // kpad of the forward's packed weights
  int64_t (*grad_padded_taps)(int64_t K);                   // kpad of the weight-gradient accumulators
  int64_t (*scratch_elems)(int64_t H, int64_t W, int64_t K);  // per-thread scratch (elements)
  // w (C, 1, K, K) contiguous -> out [ceil(C/VL)][K][kpad][VL]; flip rotates the kernel by 180 degrees
  void (*pack_weight)(const T* w, int64_t C, int64_t K, bool flip, T* out);
  void (*conv_tile)(const ConvTile<T>& a, T* scratch);
  void (*grad_weight_tile)(const GradWeightTile<T>& a, T* scratch);
  // bfloat16 tensors (float32 kernels only, else nullptr): converted while packing / unpacking
  void (*conv_tile_bf16)(const ConvTile<bf16_bits, T>& a, T* scratch);
  void (*grad_weight_tile_bf16)(const GradWeightTile<bf16_bits, T>& a, T* scratch);
  // Small kernels skip the packing, whose memory traffic would cost more than their arithmetic:
  // channels_last rows (vectors along C) up to K = rows_max_k and NCHW planes (vectors along W) up
  // to K = planes_max_k (0: never; measured per instruction set, see docs/ops.md).
  int rows_max_k, planes_max_k;
  void (*conv_row_cl)(const ConvRowCL<T>& a);
  void (*conv_plane)(const ConvPlane<T>& a);
  // Narrow images (W <= narrow_max_w, K >= 2W - 1, channels_last, whole channel blocks): a row of
  // outputs and a row of inputs stay in registers.
  int narrow_max_w;
  void (*conv_narrow_cl)(const ConvNarrowCL<T>& a);
};

// The largest kernels the direct paths implement (rows: any K up to kRowsMaxK; planes: K = 1, 3, 5,
// compile-time, so that the K x K taps stay in registers).
constexpr int kRowsMaxK = 15;
constexpr int kPlanesMaxK = 5;
// The widest narrow image the narrow path instantiates (one compile-time width each; AVX-512's
// limit: 2 x 15 + 1 of its 32 registers).
constexpr int kNarrowMaxW = 15;

Kernels<float> kernels_avx512_f32();
Kernels<float> kernels_avx2_f32();
Kernels<float> kernels_generic_f32();
Kernels<double> kernels_generic_f64();

}  // namespace replk::cpu
