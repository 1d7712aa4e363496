// Op schemas of the Winograd F(2x2, 3x3) transforms of the inference form's 3x3 convs; the
// kernels register in cpu/winograd_cpu.cpp, the Python side is replk_mm/ops/winograd.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(replk_mm, m) {
  // x: a float32 (N, C, H, W) channels_last tensor -> out: (16, P, C), P = N * ceil(H/2) *
  // ceil(W/2) tiles, out[4 i + j] = (B^T d B)[i][j] of each tile's 4x4 input patch d (zero
  // padding 1).
  m.def("winograd_input_transform(Tensor x, Tensor(a!) out) -> Tensor(a!)");
  // m: the 16 products M[t] = V[t] U[t], each (P, K); bias: (K,) -> y: (N, K, height, width)
  // channels_last, each 2x2 output tile A^T M A + bias (then ReLU if relu).
  m.def("winograd_output_transform(Tensor[] m, Tensor bias, int height, int width, bool relu) -> Tensor");
}
