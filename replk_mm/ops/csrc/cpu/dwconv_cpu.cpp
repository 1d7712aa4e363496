// CPU implementation of the replk_mm::dwconv2d_* ops: argument checks, memory formats, threading
// (at::parallel_for over tiles of VL channels x one image) and the choice of instruction set.
// The kernels themselves are in dwconv_cpu_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dwconv_checks.h"
#include "dwconv_cpu_isa.h"

namespace replk::cpu {
namespace {

template <typename T>
struct AlignedFree {
  void operator()(T* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], AlignedFree<T>>;
template <typename T>
Buffer<T> make_buffer(int64_t n) {
  return Buffer<T>(static_cast<T*>(::operator new[](sizeof(T) * n, std::align_val_t(64))));
}

// The instruction set: the best the CPU has, or the one named by REPLK_DWCONV_CPU_ISA
// (avx512 / avx2 / generic; tests use it to check every variant on one machine).
std::string cpu_isa() {
  std::string best = "generic";
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    best = "avx512";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    best = "avx2";
#endif
  const char* env = std::getenv("REPLK_DWCONV_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  TORCH_CHECK(want == "avx512" || want == "avx2" || want == "generic",
              "REPLK_DWCONV_CPU_ISA must be avx512, avx2 or generic, got '", want, "'");
  const int rank_want = want == "avx512" ? 2 : want == "avx2" ? 1 : 0;
  const int rank_best = best == "avx512" ? 2 : best == "avx2" ? 1 : 0;
  TORCH_CHECK(rank_want <= rank_best, "REPLK_DWCONV_CPU_ISA=", want, " but this CPU supports only ", best);
  return want;
}

// REPLK_DWCONV_CPU_DIRECT_MAX_K overrides the largest kernel size of both direct forward paths
// (0 turns them off; tests use it to run every path on one machine); each path still takes only
// the sizes it implements (`limit`).
int direct_max_k(int tuned, int limit) {
  const char* env = std::getenv("REPLK_DWCONV_CPU_DIRECT_MAX_K");
  if (env == nullptr || *env == '\0') return tuned;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  TORCH_CHECK(*end == '\0' && v >= 0 && v <= kRowsMaxK, "REPLK_DWCONV_CPU_DIRECT_MAX_K must be an integer in [0, ",
              kRowsMaxK, "], got '", env, "'");
  return std::min(static_cast<int>(v), limit);
}

// The direct channels_last rows stream their output past the caches (non-temporal stores) when it is
// larger than this per thread, about a core's L2: a memory-bound small-kernel layer then saves the
// read-for-ownership of every output line, whose pixels are C floats apart (docs/ops.md, "Small
// kernels skip the packing"; the NCHW planes, which write whole rows, measured slower streamed).
constexpr int64_t kStreamBytesPerThread = int64_t(1) << 20;

// Whether the direct rows write y with non-temporal stores: y is larger than the threads' caches, a
// vector is a whole cache line (streamed stores leave the CPU in whole lines; AVX2's half-line vectors
// of one pixel are written a channel block apart, and the partial lines made the K = 3 forward 4x
// slower) and every vector store is aligned (the vectors run along y's unit-stride dimension from its
// start: the data pointer, the other strides and that dimension's length are whole vectors).
bool stream_output(const at::Tensor& y, int vl) {
  constexpr int64_t kCacheLine = 64;
  if (static_cast<int64_t>(y.nbytes()) <= at::get_num_threads() * kStreamBytesPerThread) return false;
  if (vl * y.element_size() != kCacheLine || reinterpret_cast<uintptr_t>(y.data_ptr()) % kCacheLine != 0) return false;
  for (int64_t d = 0; d < y.dim(); ++d)
    if ((y.stride(d) == 1 ? y.size(d) : y.stride(d)) % vl != 0) return false;
  return true;
}

template <typename T>
Kernels<T> select_kernels();
template <>
Kernels<float> select_kernels<float>() {
#if defined(__x86_64__) || defined(__i386__)
  const std::string isa = cpu_isa();
  if (isa == "avx512") return kernels_avx512_f32();
  if (isa == "avx2") return kernels_avx2_f32();
#endif
  return kernels_generic_f32();
}
template <>
Kernels<double> select_kernels<double>() {
  return kernels_generic_f64();
}

void check_cpu(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(),
              "; this is the CPU kernel (the CUDA kernels are registered for CUDA tensors)");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kBFloat16,
              op, ": the CPU kernels support float32, float64 and bfloat16, got ", t.scalar_type(),
              "; cast with .float()");
}

at::Tensor empty_like_format(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(t.suggest_memory_format()));
}

// The kernels' compute type for a tensor type S: S itself, float32 for bfloat16.
template <typename S>
using ComputeT = std::conditional_t<std::is_same_v<S, bf16_bits>, float, S>;

template <typename S>
constexpr at::ScalarType compute_dtype() {
  return std::is_same_v<ComputeT<S>, double> ? at::kDouble : at::kFloat;
}

// Calls f with S = the tensors' element type (bf16_bits for bfloat16).
template <class F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    default: f(bf16_bits{}); break;  // check_cpu let only bfloat16 through
  }
}

// weight (C, 1, K, K), in the compute type -> packed [ceil(C/VL)][K][kpad][VL]
template <typename T>
at::Tensor packed_weight(const Kernels<T>& k, const at::Tensor& weight, bool flip) {
  const at::Tensor w = weight.contiguous();
  const int64_t C = w.size(0), K = w.size(2), blocks = (C + k.vl - 1) / k.vl;
  at::Tensor out = at::empty({blocks * K * k.padded_taps(K) * k.vl + 16}, w.options());
  // the kernels load aligned vectors: align the data pointer to 64 bytes
  T* base = out.data_ptr<T>();
  const int64_t shift = ((64 - reinterpret_cast<uintptr_t>(base) % 64) % 64) / sizeof(T);
  // one block of VL channels per task: for small images the packing is a visible part of a call
  const T* src = w.data_ptr<T>();
  const int64_t block_elems = K * k.padded_taps(K) * k.vl;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      k.pack_weight(src + b * k.vl * K * K, std::min<int64_t>(k.vl, C - b * k.vl), K, flip,
                    base + shift + b * block_elems);
  });
  return out.narrow(0, shift, blocks * K * k.padded_taps(K) * k.vl);
}

// y = x (*) weight (+ bias), or with the kernel rotated by 180 degrees (flip: the input gradient).
// Four schemes: on channels_last (channels contiguous, whole channel blocks), narrow images whose
// kernel spans them (K >= 2W - 1) run directly with a row of outputs and inputs in registers, and
// small kernels run directly row by row; small kernels on rows contiguous (NCHW) run directly plane
// by plane; the rest packs tiles of VL channels x one image (any strides).
template <typename S>
void conv_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               bool flip, at::Tensor& y) {
  using T = ComputeT<S>;
  constexpr bool same = std::is_same_v<S, T>;
  const Kernels<T> k = select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2);
  const int64_t blocks = (C + k.vl - 1) / k.vl, kpad = k.padded_taps(K);
  const at::Tensor wt = weight.to(compute_dtype<S>());
  const std::optional<at::Tensor> bt = bias.has_value() ? std::optional<at::Tensor>(bias->to(compute_dtype<S>())) : std::nullopt;
  const S* xp = static_cast<const S*>(x.const_data_ptr());
  S* yp = static_cast<S*>(y.data_ptr());
  if constexpr (same) {
    // the two channels_last direct paths: whole channel blocks, packed weights, the bias as it is
    // (REPLK_DWCONV_CPU_DIRECT_MAX_K=0 turns the narrow path off too)
    const bool channel_blocks = x.stride(1) == 1 && y.stride(1) == 1 && C % k.vl == 0;
    const bool narrow = channel_blocks && W <= k.narrow_max_w && K >= 2 * W - 1 &&
                        direct_max_k(kRowsMaxK, kRowsMaxK) > 0;
    if (narrow || (channel_blocks && K <= direct_max_k(k.rows_max_k, kRowsMaxK))) {
      const at::Tensor wp = packed_weight<T>(k, wt, flip);
      const at::Tensor bc = bt.has_value() ? bt->contiguous() : at::Tensor();
      const T* wpp = wp.data_ptr<T>();
      const T* bcp = bt.has_value() ? bc.data_ptr<T>() : nullptr;
      if (narrow) {
        at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end;) {  // runs of channel blocks of one image
            const int64_t n = item / blocks, b1 = std::min(end - n * blocks, blocks);
            k.conv_narrow_cl({xp + n * x.stride(0), x.stride(2), x.stride(3), yp + n * y.stride(0), y.stride(2),
                              y.stride(3), wpp, bcp, item - n * blocks, b1, H, W, K});
            item = n * blocks + b1;
          }
        });
        return;
      }
      const bool stream = stream_output(y, k.vl);
      at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / H;
          k.conv_row_cl({xp + n * x.stride(0), x.stride(2), x.stride(3), yp + n * y.stride(0), y.stride(2),
                         y.stride(3), wpp, bcp, blocks, H, W, K, item % H, stream});
        }
      });
      return;
    }
    if (K <= direct_max_k(k.planes_max_k, kPlanesMaxK) && x.stride(3) == 1 && y.stride(3) == 1 && 2 * W >= k.vl) {
      const at::Tensor wf = (flip ? wt.flip({2, 3}) : wt).contiguous();
      const at::Tensor bc = bt.has_value() ? bt->contiguous() : at::Tensor();
      const T* wfp = wf.data_ptr<T>();
      const T* bcp = bt.has_value() ? bc.data_ptr<T>() : nullptr;
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / C, c = item % C;
          k.conv_plane({xp + n * x.stride(0) + c * x.stride(1), x.stride(2), yp + n * y.stride(0) + c * y.stride(1),
                        y.stride(2), wfp + c * K * K, bcp ? bcp[c] : T(0), H, W, K});
        }
      });
      return;
    }
  }
  const at::Tensor wp = packed_weight<T>(k, wt, flip);
  at::Tensor bp;
  if (bt.has_value()) bp = at::constant_pad_nd(bt->contiguous(), {0, blocks * k.vl - C});
  const int64_t scratch = k.scratch_elems(H, W, K);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    Buffer<T> buf = make_buffer<T>(scratch);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, b = item % blocks, c0 = b * k.vl;
      ConvTile<S, T> a{xp + n * x.stride(0) + c0 * x.stride(1), x.stride(1), x.stride(2), x.stride(3),
                       yp + n * y.stride(0) + c0 * y.stride(1), y.stride(1), y.stride(2), y.stride(3),
                       wp.data_ptr<T>() + b * K * kpad * k.vl,
                       bt.has_value() ? bp.data_ptr<T>() + c0 : nullptr,
                       static_cast<int>(std::min<int64_t>(k.vl, C - c0)), H, W, K};
      if constexpr (same) {
        k.conv_tile(a, buf.get());
      } else {
        k.conv_tile_bf16(a, buf.get());
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_dw_forward(x, weight, bias);
  const char* op = "replk_mm::dwconv2d_forward";
  check_cpu(x, "x", op);
  at::Tensor y = empty_like_format(x);
  if (x.numel() == 0) return y;
  dispatch_dtype(x.scalar_type(), [&](auto s) { conv_impl<decltype(s)>(x, weight, bias, false, y); });
  return y;
}

at::Tensor backward_input_cpu(const at::Tensor& grad_out, const at::Tensor& weight) {
  check_dw_backward_input(grad_out, weight);
  check_cpu(grad_out, "grad_out", "replk_mm::dwconv2d_backward_input");
  at::Tensor gx = empty_like_format(grad_out);
  if (grad_out.numel() == 0) return gx;
  dispatch_dtype(grad_out.scalar_type(), [&](auto s) { conv_impl<decltype(s)>(grad_out, weight, std::nullopt, true, gx); });
  return gx;
}

// gw, gb: in the compute type (the caller casts them to the tensors' type).
template <typename S>
void grad_weight_impl(const at::Tensor& gy, const at::Tensor& x, int64_t K, bool with_bias,
                      at::Tensor& gw, at::Tensor& gb) {
  using T = ComputeT<S>;
  const Kernels<T> k = select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t blocks = (C + k.vl - 1) / k.vl, kpad = k.grad_padded_taps(K);
  // Work items: (channel block, slice of the batch). Each item owns its accumulators (no atomics);
  // slices of one block are summed in a fixed order, so results do not depend on scheduling.
  const int64_t threads = at::get_num_threads();
  const int64_t slices = std::min<int64_t>(N, std::max<int64_t>(1, (2 * threads + blocks - 1) / blocks));
  const int64_t acc_elems = (K * kpad * k.vl + k.vl + 15) / 16 * 16;
  Buffer<T> acc = make_buffer<T>(blocks * slices * acc_elems);
  std::memset(acc.get(), 0, sizeof(T) * blocks * slices * acc_elems);
  const S* xp = static_cast<const S*>(x.const_data_ptr());
  const S* gp = static_cast<const S*>(gy.const_data_ptr());
  const int64_t scratch = k.scratch_elems(H, W, K);
  at::parallel_for(0, blocks * slices, 1, [&](int64_t begin, int64_t end) {
    Buffer<T> buf = make_buffer<T>(scratch);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / slices, s = item % slices, c0 = b * k.vl;
      T* a_acc = acc.get() + item * acc_elems;
      for (int64_t n = s * N / slices; n < (s + 1) * N / slices; ++n) {
        GradWeightTile<S, T> a{xp + n * x.stride(0) + c0 * x.stride(1), x.stride(1), x.stride(2), x.stride(3),
                            gp + n * gy.stride(0) + c0 * gy.stride(1), gy.stride(1), gy.stride(2), gy.stride(3),
                            a_acc, with_bias ? a_acc + K * kpad * k.vl : nullptr,
                            static_cast<int>(std::min<int64_t>(k.vl, C - c0)), H, W, K};
        if constexpr (std::is_same_v<S, T>) {
          k.grad_weight_tile(a, buf.get());
        } else {
          k.grad_weight_tile_bf16(a, buf.get());
        }
      }
    }
  });
  T* gwp = gw.data_ptr<T>();
  T* gbp = with_bias ? gb.data_ptr<T>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t b = c / k.vl, l = c % k.vl;
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) {
        T s = 0;
        for (int64_t sl = 0; sl < slices; ++sl) s += acc[(b * slices + sl) * acc_elems + (i * kpad + j) * k.vl + l];
        gwp[(c * K + i) * K + j] = s;
      }
    if (gbp) {
      T s = 0;
      for (int64_t sl = 0; sl < slices; ++sl) s += acc[(b * slices + sl) * acc_elems + K * kpad * k.vl + l];
      gbp[c] = s;
    }
  }
}

std::tuple<at::Tensor, std::optional<at::Tensor>> backward_weight_cpu(const at::Tensor& grad_out,
                                                                      const at::Tensor& x, int64_t kernel_size,
                                                                      bool with_bias) {
  check_dw_backward_weight(grad_out, x, kernel_size);
  const char* op = "replk_mm::dwconv2d_backward_weight";
  check_cpu(x, "x", op);
  // accumulated in the compute type (float32 for bfloat16), returned in x's type
  at::Tensor gw, gb;
  dispatch_dtype(x.scalar_type(), [&](auto s) {
    using S = decltype(s);
    const auto options = x.options().dtype(compute_dtype<S>());
    // grad_weight_impl writes every element; an empty batch has zero gradients
    const auto make = [&](at::IntArrayRef size) {
      return x.numel() > 0 ? at::empty(size, options) : at::zeros(size, options);
    };
    gw = make({x.size(1), 1, kernel_size, kernel_size});
    if (with_bias) gb = make({x.size(1)});
    if (x.numel() > 0) grad_weight_impl<S>(grad_out, x, kernel_size, with_bias, gw, gb);
  });
  return {gw.to(x.scalar_type()), with_bias ? std::optional<at::Tensor>(gb.to(x.scalar_type())) : std::nullopt};
}

}  // namespace
}  // namespace replk::cpu

TORCH_LIBRARY_IMPL(replk_mm, CPU, m) {
  m.impl("dwconv2d_forward", &replk::cpu::forward_cpu);
  m.impl("dwconv2d_backward_input", &replk::cpu::backward_input_cpu);
  m.impl("dwconv2d_backward_weight", &replk::cpu::backward_weight_cpu);
}
