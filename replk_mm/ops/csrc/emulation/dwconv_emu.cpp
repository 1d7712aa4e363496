// The CUDA kernels of csrc/cuda/ compiled for the host under common/cuda_emulation.h and registered
// as torch.ops.replk_mm_emu.* on CPU tensors (same schemas as replk_mm::*), for the tests.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda_emulation.h"
#include "dwconv_autocast.h"
#include "dwconv_checks.h"
#include "dwconv_launch.cuh"

namespace {

// The emulated ops on the CUDA cores (`kTensorCores` false) or the tensor cores (the *_tc ops).
template <bool kTensorCores>
at::Tensor dwconv2d_forward_emu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  replk::check_dw_forward(x, weight, bias);
  const char* op = kTensorCores ? "replk_mm_emu::dwconv2d_forward_tc" : "replk_mm_emu::dwconv2d_forward";
  return replk::dwconv::forward(x, weight, bias, /*flip=*/false, op, kTensorCores);
}

template <bool kTensorCores>
at::Tensor dwconv2d_backward_input_emu(const at::Tensor& grad_out, const at::Tensor& weight) {
  replk::check_dw_backward_input(grad_out, weight);
  const char* op =
      kTensorCores ? "replk_mm_emu::dwconv2d_backward_input_tc" : "replk_mm_emu::dwconv2d_backward_input";
  return replk::dwconv::forward(grad_out, weight, std::nullopt, /*flip=*/true, op, kTensorCores);
}

template <bool kTensorCores>
std::tuple<at::Tensor, std::optional<at::Tensor>> dwconv2d_backward_weight_emu(const at::Tensor& grad_out,
                                                                               const at::Tensor& x,
                                                                               int64_t kernel_size, bool with_bias) {
  replk::check_dw_backward_weight(grad_out, x, kernel_size);
  const char* op =
      kTensorCores ? "replk_mm_emu::dwconv2d_backward_weight_tc" : "replk_mm_emu::dwconv2d_backward_weight";
  return replk::dwconv::weight_grad(grad_out, x, kernel_size, with_bias, op, kTensorCores);
}

constexpr char kForwardOp[] = "replk_mm_emu::dwconv2d_forward";

}  // namespace

// The *_tc ops run the tensor-core kernels (float16 / bfloat16; mma.sync emulated as a warp collective).
TORCH_LIBRARY(replk_mm_emu, m) {
  m.def("dwconv2d_forward(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("dwconv2d_backward_input(Tensor grad_out, Tensor weight) -> Tensor");
  m.def("dwconv2d_backward_weight(Tensor grad_out, Tensor x, int kernel_size, bool with_bias)"
        " -> (Tensor, Tensor?)");
  m.def("dwconv2d_forward_tc(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("dwconv2d_backward_input_tc(Tensor grad_out, Tensor weight) -> Tensor");
  m.def("dwconv2d_backward_weight_tc(Tensor grad_out, Tensor x, int kernel_size, bool with_bias)"
        " -> (Tensor, Tensor?)");
}

TORCH_LIBRARY_IMPL(replk_mm_emu, CPU, m) {
  m.impl("dwconv2d_forward", &dwconv2d_forward_emu<false>);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_emu<false>);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_emu<false>);
  m.impl("dwconv2d_forward_tc", &dwconv2d_forward_emu<true>);
  m.impl("dwconv2d_backward_input_tc", &dwconv2d_backward_input_emu<true>);
  m.impl("dwconv2d_backward_weight_tc", &dwconv2d_backward_weight_emu<true>);
}

// The CUDA autocast rule, exercised on the CPU (torch.autocast('cpu', dtype=...)).
TORCH_LIBRARY_IMPL(replk_mm_emu, AutocastCPU, m) {
  m.impl("dwconv2d_forward",
         &replk::dwconv::forward_autocast<kForwardOp, c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

// `import replk_mm._ext_cuda_emu` loads the library, which registers the ops above.
static PyModuleDef emu_module = {PyModuleDef_HEAD_INIT, "_ext_cuda_emu",
                                 "Host emulation of replk_mm's CUDA kernels (tests only).", -1, nullptr,
                                 nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__ext_cuda_emu() { return PyModule_Create(&emu_module); }
