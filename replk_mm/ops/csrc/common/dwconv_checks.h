// Argument checks of the replk_mm::dwconv2d_* ops, shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace replk {

inline void check_dw_weight(const at::Tensor& weight, int64_t C, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1, op,
              ": weight must have shape (C, 1, K, K) with C=", C, ", got ", weight.sizes());
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1, op,
              ": kernel must be square with an odd size, got ", weight.size(2), "x", weight.size(3),
              "; zero-pad an even kernel to the next odd size");
}

inline void check_dw_input(const at::Tensor& x, const char* name, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": ", name, " must have shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                  x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              op, ": unsupported dtype ", x.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb,
                       const char* op) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ",
              a.device(), " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " and ", nb,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// forward(x, weight, bias)
inline void check_dw_forward(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias) {
  const char* op = "replk_mm::dwconv2d_forward";
  check_dw_input(x, "x", op);
  check_dw_weight(weight, x.size(1), op);
  check_same(x, weight, "x", "weight", op);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), op, ": bias must have shape (",
                x.size(1), ",), got ", bias->sizes());
    check_same(x, *bias, "x", "bias", op);
  }
}

// backward_input(grad_out, weight)
inline void check_dw_backward_input(const at::Tensor& grad_out, const at::Tensor& weight) {
  const char* op = "replk_mm::dwconv2d_backward_input";
  check_dw_input(grad_out, "grad_out", op);
  check_dw_weight(weight, grad_out.size(1), op);
  check_same(grad_out, weight, "grad_out", "weight", op);
}

// backward_weight(grad_out, x, kernel_size, with_bias)
inline void check_dw_backward_weight(const at::Tensor& grad_out, const at::Tensor& x,
                                     int64_t kernel_size) {
  const char* op = "replk_mm::dwconv2d_backward_weight";
  check_dw_input(x, "x", op);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out and x must have the same shape, got ",
              grad_out.sizes(), " and ", x.sizes());
  check_same(grad_out, x, "grad_out", "x", op);
  TORCH_CHECK(kernel_size > 0 && kernel_size % 2 == 1, op, ": kernel_size must be odd and positive, got ",
              kernel_size);
}

}  // namespace replk
