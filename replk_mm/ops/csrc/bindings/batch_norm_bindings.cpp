// Op schemas of training-mode batch normalization (batch statistics) and its autograd, written in
// C++ so that a backward step costs no Python (203 calls in a RepLKNet-31B step); the kernels
// register in cpu/, the fake (meta) kernels in replk_mm/ops/batch_norm.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

TORCH_LIBRARY_FRAGMENT(replk_mm, m) {
  // (y, mean, var): y = act((x - mean) / sqrt(var + eps) * weight + bias) with the biased batch
  // statistics of each channel of a contiguous (N, C, *) x; activation: none, relu or gelu (exact).
  m.def("batch_norm_train_forward(Tensor x, Tensor? weight, Tensor? bias, float eps,"
        " str activation='none') -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of the forward above, from its x, mean and var.
  m.def("batch_norm_train_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight,"
        " Tensor? bias, float eps, str activation='none') -> (Tensor, Tensor, Tensor)");
}

namespace {

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Triple call_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("replk_mm::batch_norm_train_forward", "")
                             .typed<Triple(const at::Tensor&, const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&, double, c10::string_view)>();
  return op.call(x, weight, bias, eps, activation);
}

Triple call_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
                     const at::Tensor& var, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("replk_mm::batch_norm_train_backward", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&, double, c10::string_view)>();
  return op.call(grad_out, x, mean, var, weight, bias, eps, activation);
}

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class BatchNormTrain : public torch::autograd::Function<BatchNormTrain> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, var] = call_forward(x, weight, bias, eps, activation);
    ctx->save_for_backward({x, mean, var, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->mark_non_differentiable({mean, var});
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [grad_x, grad_weight, grad_bias] =
        call_backward(grads[0], saved[0], saved[1], saved[2], defined_or_none(saved[3]),
                      defined_or_none(saved[4]), ctx->saved_data["eps"].toDouble(), activation);
    // needs_input_grad counts the tensor inputs that were given: x, then weight and bias if present
    const bool has_weight = saved[3].defined(), has_bias = saved[4].defined();
    const auto keep = [&](const at::Tensor& g, bool given, size_t edge) {
      return given && ctx->needs_input_grad(edge) ? g : at::Tensor();
    };
    return {keep(grad_x, true, 0), keep(grad_weight, has_weight, 1), keep(grad_bias, has_bias, has_weight ? 2 : 1),
            at::Tensor(), at::Tensor()};
  }
};

Triple forward_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
  const variable_list out = BatchNormTrain::apply(x, weight, bias, eps, activation);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(replk_mm, Autograd, m) {
  m.impl("batch_norm_train_forward", &forward_autograd);
}
