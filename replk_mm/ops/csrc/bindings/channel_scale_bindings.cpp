// Op schemas of the in-place channel scalings of UniRepLKNet's inference form (GRN and SE); the
// kernels register in cpu/channel_scale_cpu.cpp, the Python side is replk_mm/ops/channel_scale.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(replk_mm, m) {
  // x *= 1 + gamma * g / (mean_c(g) + eps), g = the L2 norm of each channel over the pixels of
  // its image; x: a float32 (N, C, H, W) channels_last tensor, gamma: (C,).
  m.def("grn_scale_(Tensor(a!) x, Tensor gamma, float eps) -> Tensor(a!)");
  // x *= sigmoid(up(relu(down(mean of each channel over the pixels of its image)))), down / up:
  // linear layers, weights (hidden, C) / (C, hidden), biases (hidden,) / (C,).
  m.def("se_scale_(Tensor(a!) x, Tensor down_weight, Tensor down_bias, Tensor up_weight,"
        " Tensor up_bias) -> Tensor(a!)");
}
