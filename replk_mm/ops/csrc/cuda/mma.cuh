// Thin warp-level tensor-core layer: mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32.
//
// On the GPU (sm_80 and newer) mma() is the PTX instruction; under common/cuda_emulation.h it is the
// emulated warp collective, which takes the 32 lanes' fragments, multiplies the matrices they form per
// the PTX ISA fragment layouts and hands each lane its part of the result, so a kernel that puts an
// element in the wrong lane or register computes a wrong result in the tests as it would on the GPU.
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 and t = lane % 4, two 16-bit elements per register, the lower column / row in the low half:
//   A (16 x 16, row-major):    r[0] = A[g][2t, 2t+1]     r[1] = A[g+8][2t, 2t+1]
//                              r[2] = A[g][2t+8, 2t+9]   r[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, column-major):  r[0] = B[2t, 2t+1][g]     r[1] = B[2t+8, 2t+9][g]
//   C, D (16 x 8, fp32):       v[0], v[1] = D[g][2t, 2t+1]   v[2], v[3] = D[g+8][2t, 2t+1]
// The kernels use one-dimensional blocks whose size is a multiple of 32 (lane = threadIdx.x % 32).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

// Whether this compilation pass can issue mma.sync m16n8k16 (the host emulation, nvcc's host pass,
// or a device pass for sm_80+); the kernels compile to a trap elsewhere (the host never launches them).
#if defined(REPLK_CUDA_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define REPLK_MMA_AVAILABLE 1
#else
#define REPLK_MMA_AVAILABLE 0
#endif

namespace replk::mma {

constexpr int kWarpSize = 32;

struct FragA {
  uint32_t r[4];
};
struct FragB {
  uint32_t r[2];
};
struct Accum {
  float v[4];
};

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) % kWarpSize; }

// Row and column of accumulator element i of this lane within the 16 x 8 tile.
__device__ __forceinline__ int accum_row(int i) { return lane_id() / 4 + 8 * (i / 2); }
__device__ __forceinline__ int accum_col(int i) { return lane_id() % 4 * 2 + i % 2; }

// Two adjacent 16-bit elements p[0] (low half) and p[1] (high half); p must be 4-byte aligned.
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* p) {
#ifdef REPLK_CUDA_EMULATION
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#else
  return *reinterpret_cast<const uint32_t*>(p);
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t pack(T lo, T hi) {
  return uint32_t(lo.x) | (uint32_t(hi.x) << 16);
}

// The A fragment of the 16 x 16 row-major tile at `tile` (row pitch `pitch` elements, both even).
template <typename T>
__device__ __forceinline__ FragA load_a(const T* tile, int pitch) {
  const int g = lane_id() / 4;
  const int t = lane_id() % 4;
  const T* lo = tile + g * pitch + 2 * t;
  const T* hi = lo + 8 * pitch;
  return FragA{{load_pair(lo), load_pair(hi), load_pair(lo + 8), load_pair(hi + 8)}};
}

// d += a * b (fp32 accumulation) for one warp; every lane of the warp must call it together.
template <typename T>
__device__ __forceinline__ void mma(Accum& d, const FragA& a, const FragB& b) {
  static_assert(std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>, "fp16 or bf16 inputs");
#ifdef REPLK_CUDA_EMULATION
  replk_emu::LaneFragments f;
  for (int i = 0; i < 4; ++i) {
    f.a[i] = a.r[i];
    f.c[i] = d.v[i];
  }
  f.b = {b.r[0], b.r[1]};
  const replk_emu::LaneFragments& out = replk_emu::warp_collective(
      std::is_same_v<T, c10::Half> ? replk_emu::Collective::kMmaF16 : replk_emu::Collective::kMmaBF16, f);
  for (int i = 0; i < 4; ++i) {
    d.v[i] = out.d[i];
  }
#elif REPLK_MMA_AVAILABLE && defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d.v[0]), "+f"(d.v[1]), "+f"(d.v[2]), "+f"(d.v[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d.v[0]), "+f"(d.v[1]), "+f"(d.v[2]), "+f"(d.v[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  }
#endif
}

}  // namespace replk::mma
