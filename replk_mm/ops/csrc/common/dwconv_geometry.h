// Size math of the "same"-padded, stride-1 depth-wise convolution (shared by the CPU and CUDA kernels).
// Plain C++: no torch headers, so ISA-specific translation units can include it.
#pragma once

#include <cstdint>

namespace replk {

// Padding of an odd kernel K with "same" output size.
constexpr int64_t dw_pad(int64_t K) { return K / 2; }

// First / one-past-last tap row i of output row h (taps that fall into the zero padding are skipped).
constexpr int64_t dw_tap_begin(int64_t h, int64_t K) {
  return dw_pad(K) - h > 0 ? dw_pad(K) - h : 0;
}
constexpr int64_t dw_tap_end(int64_t h, int64_t H, int64_t K) {
  return H + dw_pad(K) - h < K ? H + dw_pad(K) - h : K;
}

// Number of (output position, tap) pairs along one axis of length L whose input is not padding.
constexpr int64_t dw_useful_taps_1d(int64_t L, int64_t K) {
  int64_t n = 0;
  for (int64_t h = 0; h < L; ++h) n += dw_tap_end(h, L, K) - dw_tap_begin(h, K);
  return n;
}

// Multiply-adds that do not touch padding, for one (N, C, H, W) layer (FLOPs = 2 x this).
constexpr int64_t dw_useful_macs(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K) {
  return N * C * dw_useful_taps_1d(H, K) * dw_useful_taps_1d(W, K);
}

// Taps of one kernel row are processed in chunks of at most `max_chunk` taps held in registers:
// the chunk width that covers K with the fewest chunks and the least zero padding.
constexpr int dw_chunk_taps(int K, int max_chunk) {
  const int chunks = (K + max_chunk - 1) / max_chunk;
  return (K + chunks - 1) / chunks;
}
constexpr int dw_padded_taps(int K, int max_chunk) {
  const int tj = dw_chunk_taps(K, max_chunk);
  return (K + tj - 1) / tj * tj;
}

}  // namespace replk
