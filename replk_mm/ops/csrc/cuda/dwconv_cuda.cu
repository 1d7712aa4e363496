// CUDA implementation of the replk_mm::dwconv2d_* ops (schemas in csrc/bindings/) and their autocast rule.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "dwconv_checks.h"

// The launch interface dwconv_launch.cuh expects (emulated on the host in common/cuda_emulation.h).
namespace replk::rt {

inline size_t smem_optin_bytes() {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
  return static_cast<size_t>(bytes);
}

template <typename... KernelArgs>
void allow_smem(void (*kernel)(KernelArgs...), size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  kernel<<<grid, block, smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace replk::rt

#include "dwconv_autocast.h"
#include "dwconv_launch.cuh"

namespace {

// The tensor-core kernels issue mma.sync m16n8k16 (compute capability 8.0 and newer).
void check_tensor_cores(const at::Tensor& t, const char* op) {
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, t.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, t.device().index()));
  TORCH_CHECK(major >= 8, op, ": the tensor-core kernels need compute capability 8.0 or newer (mma.sync m16n8k16), ",
              t.device(), " has ", major, ".", minor, "; use the CUDA-core op without the _tc suffix");
}

// The ops on the CUDA cores (`kTensorCores` false) or the tensor cores (the *_tc ops).
template <bool kTensorCores>
at::Tensor dwconv2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  replk::check_dw_forward(x, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const char* op = kTensorCores ? "replk_mm::dwconv2d_forward_tc" : "replk_mm::dwconv2d_forward";
  if (kTensorCores) {
    check_tensor_cores(x, op);
  }
  return replk::dwconv::forward(x, weight, bias, /*flip=*/false, op, kTensorCores);
}

template <bool kTensorCores>
at::Tensor dwconv2d_backward_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight) {
  replk::check_dw_backward_input(grad_out, weight);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const char* op = kTensorCores ? "replk_mm::dwconv2d_backward_input_tc" : "replk_mm::dwconv2d_backward_input";
  if (kTensorCores) {
    check_tensor_cores(grad_out, op);
  }
  return replk::dwconv::forward(grad_out, weight, std::nullopt, /*flip=*/true, op, kTensorCores);
}

template <bool kTensorCores>
std::tuple<at::Tensor, std::optional<at::Tensor>> dwconv2d_backward_weight_cuda(const at::Tensor& grad_out,
                                                                                const at::Tensor& x,
                                                                                int64_t kernel_size, bool with_bias) {
  replk::check_dw_backward_weight(grad_out, x, kernel_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const char* op = kTensorCores ? "replk_mm::dwconv2d_backward_weight_tc" : "replk_mm::dwconv2d_backward_weight";
  if (kTensorCores) {
    check_tensor_cores(x, op);
  }
  return replk::dwconv::weight_grad(grad_out, x, kernel_size, with_bias, op, kTensorCores);
}

constexpr char kForwardOp[] = "replk_mm::dwconv2d_forward";
constexpr char kForwardTcOp[] = "replk_mm::dwconv2d_forward_tc";

}  // namespace

TORCH_LIBRARY_IMPL(replk_mm, CUDA, m) {
  m.impl("dwconv2d_forward", &dwconv2d_forward_cuda<false>);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_cuda<false>);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cuda<false>);
  m.impl("dwconv2d_forward_tc", &dwconv2d_forward_cuda<true>);
  m.impl("dwconv2d_backward_input_tc", &dwconv2d_backward_input_cuda<true>);
  m.impl("dwconv2d_backward_weight_tc", &dwconv2d_backward_weight_cuda<true>);
}

TORCH_LIBRARY_IMPL(replk_mm, AutocastCUDA, m) {
  m.impl("dwconv2d_forward",
         &replk::dwconv::forward_autocast<kForwardOp, c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
  m.impl("dwconv2d_forward_tc",
         &replk::dwconv::forward_autocast<kForwardTcOp, c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}
