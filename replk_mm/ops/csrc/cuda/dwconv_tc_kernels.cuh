// Tensor-core depth-wise convolution kernels for float16 / bfloat16 with fp32 accumulation (sm_80+).
//
// Compiled by nvcc (dwconv_cuda.cu) and, unchanged, by the host compiler under common/cuda_emulation.h,
// which emulates mma.sync as a warp collective (mma.cuh).
//
// Both kernels are banded implicit GEMMs built from one step, band_mma(): a warp multiplies 16 rows of a
// 16-bit shared-memory tile with a Toeplitz matrix T[j][n] = v[j - n] made from a vector v (a filter row
// in the forward, a row of the output gradient in the weight gradient), for 4 blocks of 8 result columns:
//   acc[nb][m][n] += sum_q tile[m][8 nb + n + q] * v[q]      (q over the band)
// A block of 8 result columns needs 8 + |v| - 1 tile columns, done in 16-wide MMA steps, so the MMAs
// multiply by zero in part of the band (the useful share of the MACs: |v| / (16 ceil((|v| + 7) / 16))).
//   forward:        v = filter row kh (|v| = K), tile = input rows shifted by kh, m = output rows,
//                   n = output columns;  y[oy][ox] = sum_kh sum_kw w[kh][kw] x[oy + kh - p][ox + kw - p]
//   weight grad.:   v = output-gradient row oy (|v| = 32, the tile width), tile = input rows oy + kh,
//                   m = filter rows kh, n = filter columns kw;  dW[kh][kw] += sum_ox dy[oy][ox] x[..][ox + kw - p]
// Tiles are staged in shared memory in the input dtype (16-bit) with zeros outside the image; v is stored
// with 8 leading and enough trailing zeros that every Toeplitz element read is defined.
#pragma once

#include "dwconv_kernels.cuh"
#include "mma.cuh"

namespace replk::dwconv {

constexpr int kTcWarps = 4;
constexpr int kTcThreads = kTcWarps * mma::kWarpSize;  // 128
constexpr int kTcBlocksN = 4;                           // 8-column result blocks per warp
constexpr int kTcTileW = 8 * kTcBlocksN;                // 32 output columns per tile (both kernels)
constexpr int kTcTileH = 16 * kTcWarps;                 // forward: 64 output rows per tile
constexpr int kTcGradTileH = 32;                        // weight gradient: 32 output rows per tile
constexpr int kBandLead = 8;                            // zeros stored before v[0]

// 16-wide MMA steps of a band of a length-`len` vector: 8 result columns need 8 + len - 1 tile columns.
__host__ __device__ __forceinline__ int band_steps(int len) { return (len + 7 + 15) / 16; }
// Stored length of such a vector (kBandLead zeros, v, zeros up to the last element the steps read).
__host__ __device__ __forceinline__ int band_stride(int steps) { return 16 * steps + kBandLead; }
// Tile columns band_mma reads for one warp: 8 * (kTcBlocksN - 1 + 2 * (steps - 1)) + 16.
__host__ __device__ __forceinline__ int band_cols(int steps) { return 8 * kTcBlocksN + 16 * steps - 8; }
// Row pitch (elements) of a 16-bit tile of `cols` columns: a multiple of 8 words plus 4, so that the
// 8 rows x 4 words of an A-fragment load fall into 32 distinct banks.
__host__ __device__ __forceinline__ int tc_pitch(int cols) { return (cols + 15) / 16 * 16 + 8; }

// The B fragment of the 16 x 8 Toeplitz block T[j][n] = v[j - n] (v[-7] ... v[15] readable).
template <typename T>
__device__ __forceinline__ mma::FragB load_toeplitz(const T* v) {
  const int g = mma::lane_id() / 4;
  const int t = mma::lane_id() % 4;
  const T* p = v + 2 * t - g;
  return mma::FragB{{mma::pack(p[0], p[1]), mma::pack(p[8], p[9])}};
}

// acc[nb] += A(tile rows 0..15, columns 8 (nb + 2 s) ..) x Toeplitz(v + 16 s) summed over the steps.
// The A fragment of (nb, s) is that of (nb - 2, s + 1): a window of kTcBlocksN fragments slides by two
// per step, so a step loads two new A fragments and one B fragment for kTcBlocksN MMAs.
template <typename T>
__device__ __forceinline__ void band_mma(mma::Accum (&acc)[kTcBlocksN], const T* tile, int pitch, const T* v,
                                         int steps) {
  static_assert(kTcBlocksN % 2 == 0, "the window slides by two blocks");
  mma::FragA a[kTcBlocksN];
REPLK_UNROLL
  for (int nb = 0; nb < kTcBlocksN; ++nb) {
    a[nb] = mma::load_a(tile + 8 * nb, pitch);
  }
  for (int s = 0; s < steps; ++s) {
    if (s > 0) {
REPLK_UNROLL
      for (int nb = 0; nb < kTcBlocksN; ++nb) {
        a[nb] = nb + 2 < kTcBlocksN ? a[nb + 2] : mma::load_a(tile + 8 * (nb + 2 * s), pitch);
      }
    }
    const mma::FragB b = load_toeplitz(v + 16 * s);
REPLK_UNROLL
    for (int nb = 0; nb < kTcBlocksN; ++nb) {
      mma::mma<T>(acc[nb], a[nb], b);
    }
  }
}

// y = conv(x, w) + b (or with `flip` the input gradient), like dwconv_forward_kernel, on tensor cores.
// A block owns a kTcTileH x kTcTileW output tile of `cb` channels of one image; warp w computes its
// rows 16 w .. 16 w + 15 of every channel. Grid: tiles_y * tiles_x * c_groups * N blocks of kTcThreads.
// Shared memory: forward_tc_smem_bytes().
template <typename scalar_t, bool kChannelsLast>
__global__ void __launch_bounds__(kTcThreads)
    dwconv_forward_tc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                             const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Geometry g, bool flip) {
#if REPLK_MMA_AVAILABLE
  REPLK_DYNAMIC_SMEM(scalar_t, smem);
  const int k = g.k;
  const int steps = band_steps(k);
  const int stride = band_stride(steps);
  const int rows = kTcTileH + k - 1;
  const int pitch = tc_pitch(band_cols(steps));
  const int plane = rows * pitch;
  scalar_t* x_s = smem;                   // [cb][rows][pitch]
  scalar_t* w_s = smem + g.cb * plane;    // [cb][K][stride]: filter rows with zero borders

  const auto [tile, c0, n, oy0, ox0] = block_tile(g, kTcTileH, kTcTileW);
  const int pad = k / 2;

  // Columns past the halo are staged too (from the image or zero): band_mma reads them, times zero taps.
  stage_window<scalar_t, kChannelsLast>(x, g, n, c0, oy0 - pad, ox0 - pad, rows, pitch, pitch, plane, x_s);
  const int kk = k * k;
  for (int idx = threadIdx.x; idx < g.cb * k * stride; idx += blockDim.x) {
    const int cbi = idx / (k * stride);
    const int kh = idx / stride % k;
    const int q = idx % stride - kBandLead;
    const int64_t c = c0 + cbi;
    const int tap = kh * k + q;
    w_s[idx] = c < g.channels && q >= 0 && q < k ? weight[c * kk + (flip ? kk - 1 - tap : tap)] : scalar_t(0.f);
  }
  __syncthreads();

  const int warp = threadIdx.x / mma::kWarpSize;
  if (oy0 + 16 * warp >= g.height) {
    return;  // the warp's 16 rows are below the image (no barrier follows)
  }
  for (int cbi = 0; cbi < g.cb; ++cbi) {
    const int64_t c = c0 + cbi;
    const float b0 = (bias != nullptr && c < g.channels) ? static_cast<float>(bias[c]) : 0.f;
    mma::Accum acc[kTcBlocksN];
REPLK_UNROLL
    for (int nb = 0; nb < kTcBlocksN; ++nb) {
      acc[nb] = mma::Accum{{b0, b0, b0, b0}};
    }
    const scalar_t* xs = x_s + cbi * plane + 16 * warp * pitch;
    const scalar_t* ws = w_s + cbi * k * stride + kBandLead;
    for (int kh = 0; kh < k; ++kh) {
      band_mma(acc, xs + kh * pitch, pitch, ws + kh * stride, steps);
    }
    if (c >= g.channels) {
      continue;
    }
REPLK_UNROLL
    for (int nb = 0; nb < kTcBlocksN; ++nb) {
REPLK_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int64_t oy = oy0 + 16 * warp + mma::accum_row(i);
        const int64_t ox = ox0 + 8 * nb + mma::accum_col(i);
        if (oy < g.height && ox < g.width) {
          y[element_offset(kChannelsLast, g, n, c, oy, ox)] = static_cast<scalar_t>(acc[nb].v[i]);
        }
      }
    }
  }
#else
  __trap();
#endif
}

// Filter-row blocks (16 rows) and filter-column chunks (kTcTileW columns) of the weight gradient.
__host__ __device__ __forceinline__ int tc_kh_blocks(int k) { return (k + 15) / 16; }
__host__ __device__ __forceinline__ int tc_kw_chunks(int k) { return (k + kTcTileW - 1) / kTcTileW; }
// Work items of one channel: a 16 x kTcTileW block of filter taps each.
__host__ __device__ __forceinline__ int tc_weight_grad_items(int k) { return tc_kh_blocks(k) * tc_kw_chunks(k); }
// Warps that share an item by taking interleaved output rows (when a block has fewer items than warps).
__host__ __device__ __forceinline__ int tc_weight_grad_splits(int k, int cb) {
  const int items = cb * tc_weight_grad_items(k);
  return items >= kTcWarps ? 1 : kTcWarps / items;
}

// Partial weight (and bias) gradients of one (spatial tile, channel group, image chunk) block, like
// dwconv_weight_grad_kernel (same partial layout, deterministic and atomic modes), on tensor cores.
// Each warp owns a 16 x kTcTileW block of filter taps (rounds of items when there are more than warps);
// `splits` warps share one by taking interleaved output rows, summed in a fixed order. The bias gradient
// of channel cbi is summed on the CUDA cores by warp cbi (cb <= kTcWarps), lane = tile column.
// Grid: tiles_y * tiles_x * c_groups * image_chunks blocks of kTcThreads. Shared memory:
// weight_grad_tc_smem_bytes().
template <typename scalar_t, bool kChannelsLast>
__global__ void __launch_bounds__(kTcThreads)
    dwconv_weight_grad_tc_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                                 float* __restrict__ partial_w, float* __restrict__ partial_b, Geometry g,
                                 bool atomic) {
#if REPLK_MMA_AVAILABLE
  REPLK_DYNAMIC_SMEM(scalar_t, smem);
  const int k = g.k;
  const int kw_chunks = tc_kw_chunks(k);
  const int items_per_channel = tc_weight_grad_items(k);
  const int items = g.cb * items_per_channel;
  const int splits = tc_weight_grad_splits(k, g.cb);
  const int per_round = splits > 1 ? items : kTcWarps;
  const int steps = band_steps(kTcTileW);
  const int stride = band_stride(steps);
  const int rows = kTcGradTileH + 16 * tc_kh_blocks(k) - 1;
  const int pitch = tc_pitch(kTcTileW * (kw_chunks - 1) + band_cols(steps));
  const int plane = rows * pitch;
  const int gy_plane = kTcGradTileH * stride;
  constexpr int kAccum = 4 * kTcBlocksN;
  scalar_t* x_s = smem;                                            // [cb][rows][pitch]
  scalar_t* gy_s = x_s + g.cb * plane;                             // [cb][kTcGradTileH][stride]
  float* red_s = reinterpret_cast<float*>(gy_s + g.cb * gy_plane);  // [kTcThreads][kAccum] if splits > 1
  float* bias_s = red_s + (splits > 1 ? kTcThreads * kAccum : 0);  // [cb][32]

  const int64_t tiles = int64_t(g.tiles_x) * g.tiles_y;
  const auto [tile, c0, chunk, oy0, ox0] = block_tile(g, kTcGradTileH, kTcTileW);
  const int pad = k / 2;
  const int64_t n_begin = chunk * g.images_per_block;
  const int64_t n_end = n_begin + g.images_per_block < g.batch ? n_begin + g.images_per_block : g.batch;

  // The zero borders of the output-gradient rows (stage_window fills columns kBandLead .. + kTcTileW).
  const int border = stride - kTcTileW;
  for (int idx = threadIdx.x; idx < g.cb * kTcGradTileH * border; idx += blockDim.x) {
    const int col = idx % border;
    gy_s[idx / border * stride + (col < kBandLead ? col : col + kTcTileW)] = scalar_t(0.f);
  }

  const int warp = threadIdx.x / mma::kWarpSize;
  const int lane = mma::lane_id();
  float bias_acc = 0.f;
  for (int base = 0; base < items; base += per_round) {
    const int item = base + warp % per_round;
    const int s = warp / per_round;  // split of the output rows
    const bool active = s < splits && item < items;
    const int cbi = item / items_per_channel;
    const int kh0 = item % items_per_channel / kw_chunks * 16;
    const int kw0 = item % kw_chunks * kTcTileW;
    mma::Accum acc[kTcBlocksN];
REPLK_UNROLL
    for (int nb = 0; nb < kTcBlocksN; ++nb) {
      acc[nb] = mma::Accum{{0.f, 0.f, 0.f, 0.f}};
    }
    for (int64_t n = n_begin; n < n_end; ++n) {
      __syncthreads();  // the previous image's tiles are no longer read
      stage_window<scalar_t, kChannelsLast>(x, g, n, c0, oy0 - pad, ox0 - pad, rows, pitch, pitch, plane, x_s);
      stage_window<scalar_t, kChannelsLast>(grad_out, g, n, c0, oy0, ox0, kTcGradTileH, kTcTileW, stride, gy_plane,
                                            gy_s + kBandLead);
      __syncthreads();
      if (base == 0 && partial_b != nullptr && warp < g.cb) {
        for (int oy = 0; oy < kTcGradTileH; ++oy) {
          bias_acc += static_cast<float>(gy_s[warp * gy_plane + oy * stride + kBandLead + lane]);
        }
      }
      if (!active) {
        continue;
      }
      const scalar_t* xs = x_s + cbi * plane + kh0 * pitch + kw0;
      const scalar_t* gys = gy_s + cbi * gy_plane + kBandLead;
      for (int oy = s; oy < kTcGradTileH; oy += splits) {
        band_mma(acc, xs + oy * pitch, pitch, gys + oy * stride, steps);
      }
    }
    if (splits > 1) {  // sum the splits of each item in a fixed order
      float* mine = red_s + threadIdx.x * kAccum;
      if (active) {
REPLK_UNROLL
        for (int nb = 0; nb < kTcBlocksN; ++nb) {
REPLK_UNROLL
          for (int i = 0; i < 4; ++i) {
            mine[nb * 4 + i] = acc[nb].v[i];
          }
        }
      }
      __syncthreads();
      if (active && s == 0) {
        for (int other = 1; other < splits; ++other) {
          const float* theirs = red_s + ((other * per_round + warp) * mma::kWarpSize + lane) * kAccum;
REPLK_UNROLL
          for (int nb = 0; nb < kTcBlocksN; ++nb) {
REPLK_UNROLL
            for (int i = 0; i < 4; ++i) {
              acc[nb].v[i] += theirs[nb * 4 + i];
            }
          }
        }
      }
    }
    const int64_t c = c0 + cbi;
    if (!active || s != 0 || c >= g.channels) {
      continue;
    }
    const int kk = k * k;
    const int64_t p = chunk * tiles + tile;
REPLK_UNROLL
    for (int nb = 0; nb < kTcBlocksN; ++nb) {
REPLK_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int kh = kh0 + mma::accum_row(i);
        const int kw = kw0 + 8 * nb + mma::accum_col(i);
        if (kh < k && kw < k) {
          store_partial(partial_w, p, g.channels * kk, c * kk + kh * k + kw, acc[nb].v[i], atomic);
        }
      }
    }
  }
  if (partial_b == nullptr) {
    return;
  }
  if (warp < g.cb) {
    bias_s[warp * mma::kWarpSize + lane] = bias_acc;
  }
  __syncthreads();
  const int64_t c = c0 + threadIdx.x;
  if (int(threadIdx.x) < g.cb && c < g.channels) {
    float sum = 0.f;
    for (int l = 0; l < mma::kWarpSize; ++l) {
      sum += bias_s[threadIdx.x * mma::kWarpSize + l];
    }
    store_partial(partial_b, chunk * tiles + tile, g.channels, c, sum, atomic);
  }
#else
  __trap();
#endif
}

}  // namespace replk::dwconv
