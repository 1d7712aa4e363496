// torch.ops.replk_mm_emu.mma_m16n8k16: one warp of the emulated device runs mma() of csrc/cuda/mma.cuh
// on fragments given per lane, so that tests can check the emulated warp collective against a matmul
// and the PTX ISA fragment layouts written out independently.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda_emulation.h"
#include "mma.cuh"

namespace {

// Lane l packs a_frag[l, 2i], a_frag[l, 2i + 1] into register i of its A fragment (likewise B), takes
// c_frag[l] as its accumulator and writes its result to d_frag[l]; lanes >= active_lanes skip the mma.
template <typename T>
__global__ void mma_fragments_kernel(const T* a_frag, const T* b_frag, const float* c_frag, float* d_frag,
                                     int active_lanes) {
  const int lane = replk::mma::lane_id();
  replk::mma::FragA a;
  replk::mma::FragB b;
  replk::mma::Accum d;
  for (int i = 0; i < 4; ++i) {
    a.r[i] = replk::mma::pack(a_frag[lane * 8 + 2 * i], a_frag[lane * 8 + 2 * i + 1]);
    d.v[i] = c_frag[lane * 4 + i];
  }
  for (int i = 0; i < 2; ++i) {
    b.r[i] = replk::mma::pack(b_frag[lane * 4 + 2 * i], b_frag[lane * 4 + 2 * i + 1]);
  }
  if (lane < active_lanes) {
    replk::mma::mma<T>(d, a, b);
  }
  for (int i = 0; i < 4; ++i) {
    d_frag[lane * 4 + i] = d.v[i];
  }
}

// a_frag (32, 8), b_frag (32, 4) float16 / bfloat16, c_frag (32, 4) float32 -> d_frag (32, 4) float32.
at::Tensor mma_m16n8k16_emu(const at::Tensor& a_frag, const at::Tensor& b_frag, const at::Tensor& c_frag,
                            int64_t active_lanes) {
  const char* op = "replk_mm_emu::mma_m16n8k16";
  TORCH_CHECK(a_frag.sizes() == at::IntArrayRef({32, 8}) && b_frag.sizes() == at::IntArrayRef({32, 4}) &&
                  c_frag.sizes() == at::IntArrayRef({32, 4}),
              op, ": expects a_frag (32, 8), b_frag (32, 4), c_frag (32, 4), got ", a_frag.sizes(), ", ",
              b_frag.sizes(), ", ", c_frag.sizes());
  TORCH_CHECK(a_frag.scalar_type() == b_frag.scalar_type() &&
                  (a_frag.scalar_type() == at::kHalf || a_frag.scalar_type() == at::kBFloat16) &&
                  c_frag.scalar_type() == at::kFloat,
              op, ": expects float16 or bfloat16 a_frag and b_frag and a float32 c_frag");
  const at::Tensor a = a_frag.contiguous(), b = b_frag.contiguous(), c = c_frag.contiguous();
  at::Tensor d = at::empty({32, 4}, c.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    replk::rt::launch(&mma_fragments_kernel<T>, dim3(1), dim3(32), 0, a.const_data_ptr<T>(), b.const_data_ptr<T>(),
                      c.const_data_ptr<float>(), d.mutable_data_ptr<float>(), static_cast<int>(active_lanes));
  };
  if (a.scalar_type() == at::kHalf) {
    run(c10::Half{});
  } else {
    run(c10::BFloat16{});
  }
  return d;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(replk_mm_emu, m) {
  m.def("mma_m16n8k16(Tensor a_frag, Tensor b_frag, Tensor c_frag, int active_lanes=32) -> Tensor");
}

TORCH_LIBRARY_IMPL(replk_mm_emu, CPU, m) { m.impl("mma_m16n8k16", &mma_m16n8k16_emu); }
