// Op schemas of the depth-wise convolution; the kernels register per device in cpu/ and cuda/.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(replk_mm, m) {
  // y = conv2d(x, weight, bias, padding=K//2, groups=C); x (N, C, H, W), weight (C, 1, K, K), K odd.
  m.def("dwconv2d_forward(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // grad_x = dwconv2d_forward(grad_out, flip(weight), None).
  m.def("dwconv2d_backward_input(Tensor grad_out, Tensor weight) -> Tensor");
  // (grad_weight (C, 1, K, K), grad_bias (C,) if with_bias else None).
  m.def("dwconv2d_backward_weight(Tensor grad_out, Tensor x, int kernel_size, bool with_bias)"
        " -> (Tensor, Tensor?)");
  // The same three ops on tensor cores (CUDA only: float16 / bfloat16 on compute capability 8.0+); one
  // more implementation that replk_mm.ops.depthwise_conv2d measures, not a replacement.
  m.def("dwconv2d_forward_tc(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("dwconv2d_backward_input_tc(Tensor grad_out, Tensor weight) -> Tensor");
  m.def("dwconv2d_backward_weight_tc(Tensor grad_out, Tensor x, int kernel_size, bool with_bias)"
        " -> (Tensor, Tensor?)");
}

// `import replk_mm._ext` loads the library, which registers the ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
