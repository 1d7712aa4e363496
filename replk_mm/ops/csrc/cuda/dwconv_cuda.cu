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

at::Tensor dwconv2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  replk::check_dw_forward(x, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  return replk::dwconv::forward(x, weight, bias, /*flip=*/false, "replk_mm::dwconv2d_forward");
}

at::Tensor dwconv2d_backward_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight) {
  replk::check_dw_backward_input(grad_out, weight);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  return replk::dwconv::forward(grad_out, weight, std::nullopt, /*flip=*/true, "replk_mm::dwconv2d_backward_input");
}

std::tuple<at::Tensor, std::optional<at::Tensor>> dwconv2d_backward_weight_cuda(const at::Tensor& grad_out,
                                                                                const at::Tensor& x,
                                                                                int64_t kernel_size, bool with_bias) {
  replk::check_dw_backward_weight(grad_out, x, kernel_size);
  const c10::cuda::CUDAGuard guard(x.device());
  return replk::dwconv::weight_grad(grad_out, x, kernel_size, with_bias, "replk_mm::dwconv2d_backward_weight");
}

constexpr char kForwardOp[] = "replk_mm::dwconv2d_forward";

}  // namespace

TORCH_LIBRARY_IMPL(replk_mm, CUDA, m) {
  m.impl("dwconv2d_forward", &dwconv2d_forward_cuda);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_cuda);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cuda);
}

TORCH_LIBRARY_IMPL(replk_mm, AutocastCUDA, m) {
  m.impl("dwconv2d_forward",
         &replk::dwconv::forward_autocast<kForwardOp, c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}
