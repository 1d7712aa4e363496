// Host side of the tiled depth-wise kernels: layout, block shape, shared memory, launches.
//
// Shared by the CUDA build and the host emulation. The includer provides, in namespace replk::rt:
//   size_t smem_optin_bytes();                          per-block dynamic shared memory limit
//   void allow_smem(kernel, bytes);                     cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
//   void launch(kernel, grid, block, smem, args...);    launch on the current stream + error check
// (csrc/cuda/dwconv_cuda.cu and csrc/common/cuda_emulation.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "dwconv_kernels.cuh"
#include "dwconv_tc_kernels.cuh"

namespace replk::dwconv {

// Blocks a weight-gradient launch aims for before it splits the batch over blocks.
constexpr int64_t kTargetWeightGradBlocks = 2048;
constexpr size_t kMaxSmemForOccupancy = 100 * 1024;

inline size_t forward_smem_bytes(int k, int cb) {
  const int rows = kTileH + k - 1;
  const int pitch = (kTileW + k - 1) | 1;
  return sizeof(float) * size_t(cb) * (size_t(forward_plane(rows * pitch, cb)) + size_t(k) * k);
}

inline int weight_grad_splits(int k, int cb) {
  const int blocks_per_side = padded_k(k) / kCols;
  const int tap_blocks = blocks_per_side * blocks_per_side;
  const int threads_per_channel = kWeightGradThreads / cb;
  return tap_blocks >= threads_per_channel ? 1 : threads_per_channel / tap_blocks;
}

inline size_t weight_grad_smem_bytes(int k, int cb) {
  const int kp = padded_k(k);
  const size_t rows = kTileH + kp - 1;
  const size_t pitch = size_t(kTileW + kp - 1) | 1;
  const size_t reduction =
      weight_grad_splits(k, cb) > 1 ? size_t(kWeightGradThreads) * (kRows * kCols + 1) : 0;
  return sizeof(float) * (size_t(cb) * (rows * pitch + kTileH * kTileW) + reduction);
}

// The weight-gradient kernels share the partial layout: the same tiles.
static_assert(kTcGradTileH == kTileH && kTcTileW == kTileW, "one tile grid for both weight gradients");

// Dynamic shared memory of the tensor-core kernels (16-bit tiles).
inline size_t forward_tc_smem_bytes(int k, int cb) {
  const int steps = band_steps(k);
  return 2 * size_t(cb) *
         (size_t(kTcTileH + k - 1) * tc_pitch(band_cols(steps)) + size_t(k) * band_stride(steps));
}

inline size_t weight_grad_tc_smem_bytes(int k, int cb) {
  const int steps = band_steps(kTcTileW);
  const size_t rows = kTcGradTileH + 16 * tc_kh_blocks(k) - 1;
  const size_t pitch = tc_pitch(kTcTileW * (tc_kw_chunks(k) - 1) + band_cols(steps));
  const size_t reduction = tc_weight_grad_splits(k, cb) > 1 ? size_t(kTcThreads) * 4 * kTcBlocksN : 0;
  return 2 * size_t(cb) * (rows * pitch + size_t(kTcGradTileH) * band_stride(steps)) +
         sizeof(float) * (reduction + size_t(cb) * mma::kWarpSize);
}

inline void check_supported(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              op, ": the CUDA kernels support float32, float16 and bfloat16, got ", t.scalar_type(),
              "; convert the tensors (e.g. .float()) or run on the CPU");
}

// The tensor-core kernels take 16-bit inputs only.
inline void check_tensor_core_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op,
              ": the tensor-core kernels take float16 and bfloat16, got ", t.scalar_type(),
              "; use the CUDA-core op (replk_mm::dwconv2d_*) for float32");
}

inline Geometry make_geometry(const at::Tensor& x, int64_t k, const char* op, int tile_h = kTileH) {
  TORCH_CHECK(k >= 1 && k % 2 == 1, op, ": kernel size must be odd, got ", k,
              "; zero-pad an even kernel to the next odd size");
  const int64_t max_side = std::numeric_limits<int>::max() - 2 * std::max(tile_h, kTileW);
  TORCH_CHECK(x.size(2) <= max_side && x.size(3) <= max_side, op, ": H and W must be below ", max_side,
              ", got ", x.sizes());
  Geometry g{};
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.k = static_cast<int>(k);
  g.tiles_x = static_cast<int>((g.width + kTileW - 1) / kTileW);
  g.tiles_y = static_cast<int>((g.height + tile_h - 1) / tile_h);
  return g;
}

// The most channels per block (channels_last only) whose shared memory fits the device.
template <typename SmemOf>
int choose_channels_per_block(bool channels_last, int max_cb, SmemOf smem_of, int64_t k, const char* op) {
  const size_t limit = rt::smem_optin_bytes();
  TORCH_CHECK(smem_of(1) <= limit, op, ": kernel size ", k, " needs ", smem_of(1),
              " bytes of shared memory per block, this device allows ", limit,
              "; use a smaller kernel or the CPU implementation");
  int cb = 1;
  if (channels_last) {
    for (int c = max_cb; c > 1; c /= 2) {
      if (smem_of(c) <= std::min(limit, kMaxSmemForOccupancy)) {
        cb = c;
        break;
      }
    }
  }
  return cb;
}

inline void check_grid(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": the launch needs ", blocks,
              " blocks, more than the 2^31 - 1 a grid allows; split the batch");
}

template <typename Fn>
void dispatch_floating(at::ScalarType dtype, Fn&& fn) {
  AT_DISPATCH_SWITCH(dtype, "replk_mm::dwconv2d", AT_DISPATCH_CASE(at::kFloat, [&] { fn(scalar_t{}); })
                                    AT_DISPATCH_CASE(at::kHalf, [&] { fn(scalar_t{}); })
                                        AT_DISPATCH_CASE(at::kBFloat16, [&] { fn(scalar_t{}); }));
}

// The forward kernel of a dtype and layout: CUDA cores, or tensor cores (16-bit dtypes only).
template <typename scalar_t>
auto forward_kernel(bool channels_last, bool tensor_cores) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    if (tensor_cores) {
      return channels_last ? &dwconv_forward_tc_kernel<scalar_t, true> : &dwconv_forward_tc_kernel<scalar_t, false>;
    }
  }
  return channels_last ? &dwconv_forward_kernel<scalar_t, true> : &dwconv_forward_kernel<scalar_t, false>;
}

template <typename scalar_t>
auto weight_grad_kernel(bool channels_last, bool tensor_cores) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    if (tensor_cores) {
      return channels_last ? &dwconv_weight_grad_tc_kernel<scalar_t, true>
                           : &dwconv_weight_grad_tc_kernel<scalar_t, false>;
    }
  }
  return channels_last ? &dwconv_weight_grad_kernel<scalar_t, true> : &dwconv_weight_grad_kernel<scalar_t, false>;
}

// conv2d(x, weight, bias, padding=K/2, groups=C), or with `flip` the input gradient (rotated filter), on
// the CUDA cores or (`tensor_cores`, float16 / bfloat16) the tensor cores.
inline at::Tensor forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                          const std::optional<at::Tensor>& bias_in, bool flip, const char* op,
                          bool tensor_cores = false) {
  check_supported(x_in, op);
  if (tensor_cores) {
    check_tensor_core_dtype(x_in, op);
  }
  const auto format = x_in.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor weight = weight_in.contiguous();
  const std::optional<at::Tensor> bias =
      bias_in.has_value() ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  Geometry g = make_geometry(x, weight.size(-1), op, tensor_cores ? kTcTileH : kTileH);
  if (y.numel() == 0) {
    return y;
  }
  const auto smem_of = [&](int cb) {
    return tensor_cores ? forward_tc_smem_bytes(g.k, cb) : forward_smem_bytes(g.k, cb);
  };
  g.cb = choose_channels_per_block(channels_last, 8, smem_of, g.k, op);
  g.c_groups = (g.channels + g.cb - 1) / g.cb;
  const int64_t blocks = int64_t(g.tiles_x) * g.tiles_y * g.c_groups * g.batch;
  check_grid(blocks, op);
  const size_t smem = smem_of(g.cb);
  const int threads = tensor_cores ? kTcThreads : g.cb * kForwardThreadsPerChannel;
  dispatch_floating(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto kernel = forward_kernel<scalar_t>(channels_last, tensor_cores);
    rt::allow_smem(kernel, smem);
    rt::launch(kernel, dim3(static_cast<unsigned int>(blocks)), dim3(static_cast<unsigned int>(threads)), smem,
               x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
               bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), g,
               flip);
  });
  return y;
}

// out = the sum over the first dimension of partial (P, count...) as out's dtype, in a fixed order.
inline void reduce_partials(const at::Tensor& partial, at::Tensor& out, const char* op) {
  const int64_t count = out.numel();
  const int64_t blocks = (count + 255) / 256;
  check_grid(blocks, op);
  dispatch_floating(out.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    rt::launch(&dwconv_reduce_partials_kernel<scalar_t>, dim3(static_cast<unsigned int>(blocks)), dim3(256),
               0, partial.const_data_ptr<float>(), partial.numel() / count, count,
               out.mutable_data_ptr<scalar_t>());
  });
}

// (grad_weight (C, 1, K, K), grad_bias (C,) or None). Deterministic (per-block partials summed in a
// fixed order) when torch.use_deterministic_algorithms(True), float atomics otherwise. On the CUDA cores
// or (`tensor_cores`, float16 / bfloat16) the tensor cores.
inline std::tuple<at::Tensor, std::optional<at::Tensor>> weight_grad(const at::Tensor& grad_out_in,
                                                                     const at::Tensor& x_in, int64_t k,
                                                                     bool with_bias, const char* op,
                                                                     bool tensor_cores = false) {
  check_supported(x_in, op);
  if (tensor_cores) {
    check_tensor_core_dtype(x_in, op);
  }
  const auto format = x_in.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor grad_out = grad_out_in.contiguous(format);
  Geometry g = make_geometry(x, k, op);
  at::Tensor grad_w = at::empty({g.channels, 1, k, k}, x.options().memory_format(at::MemoryFormat::Contiguous));
  std::optional<at::Tensor> grad_b =
      with_bias ? std::optional<at::Tensor>(at::empty({g.channels}, grad_w.options())) : std::nullopt;
  if (g.channels == 0) {
    return {grad_w, grad_b};
  }
  if (x.numel() == 0) {
    grad_w.zero_();
    if (grad_b.has_value()) {
      grad_b->zero_();
    }
    return {grad_w, grad_b};
  }
  const int blocks_per_side = padded_k(g.k) / kCols;
  const int tap_blocks = blocks_per_side * blocks_per_side;
  const auto smem_of = [&](int cb) {
    if (tensor_cores) {
      return weight_grad_tc_smem_bytes(g.k, cb);
    }
    // More channels per block only while each channel keeps a thread per tap block.
    return cb > 1 && tap_blocks * cb > kWeightGradThreads ? std::numeric_limits<size_t>::max()
                                                          : weight_grad_smem_bytes(g.k, cb);
  };
  // The tensor-core kernel sums channel cbi's bias gradient in warp cbi: at most kTcWarps channels.
  g.cb = choose_channels_per_block(channels_last, tensor_cores ? kTcWarps : 8, smem_of, g.k, op);
  g.c_groups = (g.channels + g.cb - 1) / g.cb;
  const int64_t tiles = int64_t(g.tiles_x) * g.tiles_y;
  const int64_t wanted_chunks = (kTargetWeightGradBlocks + tiles * g.c_groups - 1) / (tiles * g.c_groups);
  const int64_t chunks = std::clamp<int64_t>(wanted_chunks, 1, g.batch);
  g.images_per_block = static_cast<int>(std::min<int64_t>((g.batch + chunks - 1) / chunks,
                                                          std::numeric_limits<int>::max()));
  g.image_chunks = (g.batch + g.images_per_block - 1) / g.images_per_block;
  const int64_t blocks = tiles * g.c_groups * g.image_chunks;
  check_grid(blocks, op);

  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int64_t num_partials = deterministic ? g.image_chunks * tiles : 1;
  const auto float_options = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  const int64_t kk = int64_t(k) * k;
  at::Tensor partial_w = deterministic ? at::empty({num_partials, g.channels, kk}, float_options)
                                       : at::zeros({g.channels, kk}, float_options);
  std::optional<at::Tensor> partial_b;
  if (with_bias) {
    partial_b = deterministic ? at::empty({num_partials, g.channels}, float_options)
                              : at::zeros({g.channels}, float_options);
  }
  const size_t smem = smem_of(g.cb);
  dispatch_floating(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto kernel = weight_grad_kernel<scalar_t>(channels_last, tensor_cores);
    rt::allow_smem(kernel, smem);
    rt::launch(kernel, dim3(static_cast<unsigned int>(blocks)),
               dim3(static_cast<unsigned int>(tensor_cores ? kTcThreads : kWeightGradThreads)), smem,
               grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
               partial_w.mutable_data_ptr<float>(),
               partial_b.has_value() ? partial_b->mutable_data_ptr<float>() : nullptr, g, !deterministic);
  });
  reduce_partials(partial_w, grad_w, op);
  if (with_bias) {
    reduce_partials(*partial_b, *grad_b, op);
  }
  return {grad_w, grad_b};
}

}  // namespace replk::dwconv
