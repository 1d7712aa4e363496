// Tiled shared-memory depth-wise convolution kernels (stride 1, "same" padding, odd K).
//
// Compiled by nvcc (dwconv_cuda.cu) and, unchanged, by the host compiler under
// common/cuda_emulation.h (emulation/dwconv_emu.cpp) so the tests run them without a GPU.
//
// A block owns an output tile of kTileH x kTileW pixels of `cb` channels of one image (forward) or a
// chunk of images (weight gradient). It stages the input tile plus its (K-1)-pixel halo and the
// filters in shared memory as fp32, then every thread computes a kRows x kCols register block with a
// sliding window: per filter tap one broadcast filter load and kRows input loads feed kRows * kCols
// FMAs. The work is exactly K*K FMAs per output (no Toeplitz / banded expansion), whatever K.
// Global offsets are 64-bit; in-tile offsets are 32-bit (bounded by the shared memory size).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#define REPLK_PRAGMA(x) _Pragma(#x)
#ifdef __CUDACC__
#define REPLK_UNROLL REPLK_PRAGMA(unroll)
#define REPLK_UNROLL_BY(n) REPLK_PRAGMA(unroll n)
#else
#define REPLK_UNROLL REPLK_PRAGMA(GCC unroll 16)
#define REPLK_UNROLL_BY(n) REPLK_PRAGMA(GCC unroll n)
#endif

#ifndef REPLK_DYNAMIC_SMEM
#define REPLK_DYNAMIC_SMEM(type, name)          \
  extern __shared__ float4 replk_smem_storage_[]; \
  type* name = reinterpret_cast<type*>(replk_smem_storage_)
#endif

namespace replk::dwconv {

constexpr int kRows = 4;          // output rows per thread (forward) / filter rows (weight grad)
constexpr int kCols = 4;          // output cols per thread (forward) / filter cols (weight grad)
constexpr int kThreadsX = 8;      // forward: threads per channel along W
constexpr int kThreadsY = 8;      // forward: threads per channel along H
constexpr int kTileH = kThreadsY * kRows;  // 32
constexpr int kTileW = kThreadsX * kCols;  // 32
constexpr int kForwardThreadsPerChannel = kThreadsX * kThreadsY;  // 64
constexpr int kWeightGradThreads = 256;

// Shapes and the block decomposition, shared by host and device.
struct Geometry {
  int64_t batch;      // N
  int64_t channels;   // C
  int64_t height;     // H
  int64_t width;      // W
  int k;              // kernel size (odd)
  int cb;             // channels per block
  int tiles_x;        // ceil(W / kTileW)
  int tiles_y;        // ceil(H / kTileH)
  int64_t c_groups;   // ceil(C / cb)
  // weight gradient only
  int images_per_block;
  int64_t image_chunks;  // ceil(N / images_per_block)
};

// Padded kernel size of the weight gradient (a whole number of kRows x kCols filter blocks).
__host__ __device__ __forceinline__ int padded_k(int k) { return (k + kRows - 1) / kRows * kRows; }

// Floats per channel plane of the forward's input tile: at least `floats`, padded so that the planes
// of the cb channels a warp reads start in banks that keep the warp's 32 loads conflict-free
// (cb 2, 4; 28 of 32 banks for cb 8).
__host__ __device__ __forceinline__ int forward_plane(int floats, int cb) {
  const int target = cb == 2 ? 2 : cb == 4 ? 1 : cb == 8 ? 3 : 0;
  return floats + ((target - floats) % 32 + 32) % 32;
}

__host__ __device__ __forceinline__ int64_t element_offset(bool channels_last, const Geometry& g, int64_t n,
                                                           int64_t c, int64_t y, int64_t x) {
  return channels_last ? ((n * g.height + y) * g.width + x) * g.channels + c
                       : ((n * g.channels + c) * g.height + y) * g.width + x;
}

// What a block of a tiles_y * tiles_x * c_groups * (N or image chunks) grid owns: its tile (index and
// top-left output pixel), first channel and image (forward) or image chunk (weight gradient).
struct BlockTile {
  int tile;
  int64_t c0;
  int64_t n;
  int64_t oy0;
  int64_t ox0;
};

__device__ __forceinline__ BlockTile block_tile(const Geometry& g, int tile_h, int tile_w) {
  const int64_t tiles = int64_t(g.tiles_x) * g.tiles_y;
  const int64_t b = blockIdx.x / tiles;
  const int tile = static_cast<int>(blockIdx.x % tiles);
  return BlockTile{tile, (b % g.c_groups) * g.cb, b / g.c_groups, int64_t(tile / g.tiles_x) * tile_h,
                   int64_t(tile % g.tiles_x) * tile_w};
}

// Stages a rows x cols window of `cb` channels whose top-left pixel is (y0, x0) into
// dst[cbi * plane + r * pitch + col] as dst_t (fp32, or the input dtype for the tensor-core kernels),
// zero outside the image and past the last channel.
// Consecutive threads read consecutive addresses of either layout (coalesced).
template <typename scalar_t, bool kChannelsLast, typename dst_t>
__device__ __forceinline__ void stage_window(const scalar_t* __restrict__ src, const Geometry& g, int64_t n,
                                             int64_t c0, int64_t y0, int64_t x0, int rows, int cols,
                                             int pitch, int plane, dst_t* __restrict__ dst) {
  const int total = g.cb * rows * cols;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    int cbi, r, col;
    if (kChannelsLast) {
      cbi = idx % g.cb;
      const int pixel = idx / g.cb;
      col = pixel % cols;
      r = pixel / cols;
    } else {
      col = idx % cols;
      const int t = idx / cols;
      r = t % rows;
      cbi = t / rows;
    }
    const int64_t c = c0 + cbi;
    const int64_t y = y0 + r;
    const int64_t x = x0 + col;
    float v = 0.f;
    if (c < g.channels && y >= 0 && y < g.height && x >= 0 && x < g.width) {
      v = static_cast<float>(src[element_offset(kChannelsLast, g, n, c, y, x)]);
    }
    dst[cbi * plane + r * pitch + col] = static_cast<dst_t>(v);
  }
}

// y = conv(x, w) + b, or with `flip` the convolution with the 180-degree rotated filter (the input
// gradient). Grid: tiles_y * tiles_x * c_groups * N blocks of cb * 64 threads.
// Shared memory: forward_smem_bytes().
template <typename scalar_t, bool kChannelsLast>
__global__ void __launch_bounds__(512)
    dwconv_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                          const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Geometry g, bool flip) {
  REPLK_DYNAMIC_SMEM(float, smem);
  const int k = g.k;
  const int kk = k * k;
  const int rows = kTileH + k - 1;
  const int cols = kTileW + k - 1;
  const int pitch = cols | 1;  // odd: neighbouring rows start in different banks
  const int plane = forward_plane(rows * pitch, g.cb);
  float* x_s = smem;                  // [cb][rows][pitch]
  float* w_s = smem + g.cb * plane;   // [cb][K*K]

  const auto [tile, c0, n, oy0, ox0] = block_tile(g, kTileH, kTileW);
  const int pad = k / 2;

  stage_window<scalar_t, kChannelsLast>(x, g, n, c0, oy0 - pad, ox0 - pad, rows, cols, pitch, plane, x_s);
  for (int idx = threadIdx.x; idx < g.cb * kk; idx += blockDim.x) {
    const int cbi = idx / kk;
    const int tap = idx % kk;
    const int64_t c = c0 + cbi;
    w_s[idx] = c < g.channels ? static_cast<float>(weight[c * kk + (flip ? kk - 1 - tap : tap)]) : 0.f;
  }
  __syncthreads();

  // Channel-fastest threads in channels_last make the stores of a warp contiguous. A thread's
  // outputs are kCols adjacent columns (the sliding window) of kRows rows kThreadsY apart (with the
  // odd pitch, the rows of a warp's threads fall in distinct banks).
  const int tid = threadIdx.x;
  const int cbi = kChannelsLast ? tid % g.cb : tid / kForwardThreadsPerChannel;
  const int sp = kChannelsLast ? tid / g.cb : tid % kForwardThreadsPerChannel;
  const int ty = sp / kThreadsX;
  const int tx0 = (sp % kThreadsX) * kCols;
  const int64_t c = c0 + cbi;
  const float* xs = x_s + cbi * plane;
  const float* ws = w_s + cbi * kk;

  const float b0 = (bias != nullptr && c < g.channels) ? static_cast<float>(bias[c]) : 0.f;
  float acc[kRows][kCols];
REPLK_UNROLL
  for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
    for (int u = 0; u < kCols; ++u) {
      acc[j][u] = b0;
    }
  }
  for (int kh = 0; kh < k; ++kh) {
    // win[j][u] = row[j][u + kw], slid along kw.
    const float* row[kRows];
    float win[kRows][kCols];
REPLK_UNROLL
    for (int j = 0; j < kRows; ++j) {
      row[j] = xs + (ty + j * kThreadsY + kh) * pitch + tx0;
REPLK_UNROLL
      for (int u = 0; u + 1 < kCols; ++u) {
        win[j][u + 1] = row[j][u];
      }
    }
    const float* wrow = ws + kh * k;
    const auto step = [&](int kw) {
      const float wv = wrow[kw];
REPLK_UNROLL
      for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
        for (int u = 0; u + 1 < kCols; ++u) {
          win[j][u] = win[j][u + 1];
        }
        win[j][kCols - 1] = row[j][kw + kCols - 1];
REPLK_UNROLL
        for (int u = 0; u < kCols; ++u) {
          acc[j][u] += win[j][u] * wv;
        }
      }
    };
    // Groups of kCols steps, fully unrolled: the window's shifts become register renames.
    int kw = 0;
    for (; kw + kCols <= k; kw += kCols) {
REPLK_UNROLL
      for (int q = 0; q < kCols; ++q) {
        step(kw + q);
      }
    }
    for (; kw < k; ++kw) {
      step(kw);
    }
  }
  if (c >= g.channels) {
    return;
  }
REPLK_UNROLL
  for (int j = 0; j < kRows; ++j) {
    const int64_t oy = oy0 + ty + j * kThreadsY;
REPLK_UNROLL
    for (int u = 0; u < kCols; ++u) {
      const int64_t ox = ox0 + tx0 + u;
      if (oy < g.height && ox < g.width) {
        y[element_offset(kChannelsLast, g, n, c, oy, ox)] = static_cast<scalar_t>(acc[j][u]);
      }
    }
  }
}

// Element i of a block's partial weight or bias gradient (`count` elements: C * K*K weights or C biases):
// written to partial p of [partials][count] (deterministic mode) or added into the one sum [count]
// (atomic mode). Shared by dwconv_weight_grad_kernel and dwconv_weight_grad_tc_kernel.
__device__ __forceinline__ void store_partial(float* __restrict__ partial, int64_t p, int64_t count, int64_t i,
                                              float value, bool atomic) {
  if (atomic) {
    atomicAdd(partial + i, value);
  } else {
    partial[p * count + i] = value;
  }
}

// Partial weight (and bias) gradients of one (spatial tile, channel group, image chunk) block:
//   dW[c, kh, kw] += sum_{n, oy, ox} dy[n, c, oy, ox] * x[n, c, oy + kh - K/2, ox + kw - K/2]
//   db[c] += sum_{n, oy, ox} dy[n, c, oy, ox]
// Each thread owns a kRows x kCols block of filter taps and `splits` threads share a block of taps by
// taking interleaved output rows; they are summed in a fixed order, so the result is deterministic.
// Deterministic mode writes the block's partial to partial_w[(p * C + c) * K*K + tap] (p = image
// chunk * tiles + tile) and partial_b[p * C + c] for a second reduction pass; atomic mode adds it
// into partial_w[c * K*K + tap] / partial_b[c]. partial_b may be null (no bias).
// Grid: tiles_y * tiles_x * c_groups * image_chunks blocks of 256 threads.
// Shared memory: weight_grad_smem_bytes().
template <typename scalar_t, bool kChannelsLast>
__global__ void __launch_bounds__(kWeightGradThreads)
    dwconv_weight_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                              float* __restrict__ partial_w, float* __restrict__ partial_b, Geometry g,
                              bool atomic) {
  REPLK_DYNAMIC_SMEM(float, smem);
  const int k = g.k;
  const int kp = padded_k(k);
  const int rows = kTileH + kp - 1;
  const int cols = kTileW + kp - 1;
  const int pitch = cols | 1;
  const int plane = rows * pitch;
  const int gy_plane = kTileH * kTileW;
  const int blocks_per_side = kp / kCols;
  const int tap_blocks = blocks_per_side * blocks_per_side;
  const int threads_per_channel = blockDim.x / g.cb;
  const int splits = tap_blocks >= threads_per_channel ? 1 : threads_per_channel / tap_blocks;
  float* x_s = smem;                                // [cb][rows][pitch]
  float* gy_s = x_s + g.cb * plane;                 // [cb][kTileH][kTileW]
  float* red_s = gy_s + g.cb * gy_plane;            // [cb][threads_per_channel][kRows*kCols+1]
  constexpr int kPartial = kRows * kCols + 1;       // filter taps + bias

  const int64_t tiles = int64_t(g.tiles_x) * g.tiles_y;
  const auto [tile, c0, chunk, oy0, ox0] = block_tile(g, kTileH, kTileW);
  const int pad = k / 2;
  const int64_t n_begin = chunk * g.images_per_block;
  const int64_t n_end = n_begin + g.images_per_block < g.batch ? n_begin + g.images_per_block : g.batch;

  const int tid = threadIdx.x;
  const int cbi = tid / threads_per_channel;
  const int t = tid % threads_per_channel;
  const int s = t / tap_blocks;                     // split of the output rows
  const int64_t c = c0 + cbi;
  const float* xs = x_s + cbi * plane;
  const float* gys = gy_s + cbi * gy_plane;

  // Rounds of tap blocks, for kernels with more tap blocks than threads per channel.
  for (int tb_base = 0; tb_base < tap_blocks; tb_base += threads_per_channel) {
    const int tb = tb_base + t % tap_blocks;
    const bool active = cbi < g.cb && s < splits && tb < tap_blocks;
    const int kh0 = (tb / blocks_per_side) * kRows;
    const int kw0 = (tb % blocks_per_side) * kCols;
    float acc[kRows][kCols];
    float bias_acc = 0.f;
REPLK_UNROLL
    for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
      for (int u = 0; u < kCols; ++u) {
        acc[j][u] = 0.f;
      }
    }
    for (int64_t n = n_begin; n < n_end; ++n) {
      __syncthreads();  // the previous image's tiles are no longer read
      stage_window<scalar_t, kChannelsLast>(x, g, n, c0, oy0 - pad, ox0 - pad, rows, cols, pitch, plane, x_s);
      stage_window<scalar_t, kChannelsLast>(grad_out, g, n, c0, oy0, ox0, kTileH, kTileW, kTileW, gy_plane,
                                            gy_s);
      __syncthreads();
      if (!active) {
        continue;
      }
      for (int oy = s; oy < kTileH; oy += splits) {
        // win[j][u] = xs[(oy + kh0 + j) * pitch + kw0 + u + ox], slid along ox.
        float win[kRows][kCols];
REPLK_UNROLL
        for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
          for (int u = 0; u + 1 < kCols; ++u) {
            win[j][u + 1] = xs[(oy + kh0 + j) * pitch + kw0 + u];
          }
        }
        REPLK_UNROLL_BY(8)
        for (int ox = 0; ox < kTileW; ++ox) {
          const float gv = gys[oy * kTileW + ox];
          bias_acc += gv;
REPLK_UNROLL
          for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
            for (int u = 0; u + 1 < kCols; ++u) {
              win[j][u] = win[j][u + 1];
            }
            win[j][kCols - 1] = xs[(oy + kh0 + j) * pitch + kw0 + ox + kCols - 1];
REPLK_UNROLL
            for (int u = 0; u < kCols; ++u) {
              acc[j][u] += gv * win[j][u];
            }
          }
        }
      }
    }
    if (splits > 1) {  // sum the splits of each tap block in a fixed order
      if (active) {
        float* mine = red_s + (cbi * threads_per_channel + t) * kPartial;
REPLK_UNROLL
        for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
          for (int u = 0; u < kCols; ++u) {
            mine[j * kCols + u] = acc[j][u];
          }
        }
        mine[kPartial - 1] = bias_acc;
      }
      __syncthreads();
      if (active && s == 0) {
        for (int other = 1; other < splits; ++other) {
          const float* theirs = red_s + (cbi * threads_per_channel + other * tap_blocks + tb) * kPartial;
REPLK_UNROLL
          for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
            for (int u = 0; u < kCols; ++u) {
              acc[j][u] += theirs[j * kCols + u];
            }
          }
          bias_acc += theirs[kPartial - 1];
        }
      }
    }
    if (!active || s != 0 || c >= g.channels) {
      continue;
    }
    const int kk = k * k;
    const int64_t p = chunk * tiles + tile;
REPLK_UNROLL
    for (int j = 0; j < kRows; ++j) {
REPLK_UNROLL
      for (int u = 0; u < kCols; ++u) {
        if (kh0 + j < k && kw0 + u < k) {
          store_partial(partial_w, p, g.channels * kk, c * kk + (kh0 + j) * k + kw0 + u, acc[j][u], atomic);
        }
      }
    }
    if (partial_b != nullptr && tb == 0) {
      store_partial(partial_b, p, g.channels, c, bias_acc, atomic);
    }
  }
}

// out[i] = sum_{p < num_partials} partial[p * count + i], summed in order p = 0, 1, ...
template <typename scalar_t>
__global__ void __launch_bounds__(256)
    dwconv_reduce_partials_kernel(const float* __restrict__ partial, int64_t num_partials, int64_t count,
                                  scalar_t* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) {
    return;
  }
  float sum = 0.f;
  for (int64_t p = 0; p < num_partials; ++p) {
    sum += partial[p * count + i];
  }
  out[i] = static_cast<scalar_t>(sum);
}

}  // namespace replk::dwconv
