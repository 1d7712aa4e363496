// Autocast rule of replk_mm's depth-wise conv: the forward runs in the autocast dtype (float16 or
// bfloat16) with x, weight and bias cast to it; the backward ops receive tensors already in that
// dtype from autograd and need no rule.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

namespace replk::dwconv {

// `Op` is "namespace::dwconv2d_forward"; `kDevice` / `kKey` the autocast device and dispatch key.
template <const char* Op, c10::DeviceType kDevice, c10::DispatchKey kKey>
at::Tensor forward_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(Op, "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(kDevice);
  return op.call(at::autocast::cached_cast(dtype, x, kDevice), at::autocast::cached_cast(dtype, weight, kDevice),
                 at::autocast::cached_cast(dtype, bias, kDevice));
}

}  // namespace replk::dwconv
