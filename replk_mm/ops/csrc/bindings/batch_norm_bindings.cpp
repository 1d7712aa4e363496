// Op schemas of training-mode batch normalization (batch statistics); the kernels register in cpu/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(replk_mm, m) {
  // (y, mean, var): y = act((x - mean) / sqrt(var + eps) * weight + bias) with the biased batch
  // statistics of each channel of a contiguous (N, C, *) x; activation: none, relu or gelu (exact).
  m.def("batch_norm_train_forward(Tensor x, Tensor? weight, Tensor? bias, float eps,"
        " str activation='none') -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of the forward above, from its x, mean and var.
  m.def("batch_norm_train_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight,"
        " Tensor? bias, float eps, str activation='none') -> (Tensor, Tensor, Tensor)");
}
