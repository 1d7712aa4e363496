// CPU implementation of replk_mm::batch_norm_train_{forward,backward}: training-mode batch
// normalization of a contiguous (N, C, *) tensor with batch statistics, optionally followed by a
// fused ReLU or GELU.
//
// One task per channel block (at::parallel_for). A channel's N rows of L values are read from
// memory once; the second and third passes over them (centred variance, normalization; or the
// two backward reductions and the input gradient) find them in L1/L2. PyTorch's CPU kernel
// reduces with strided loops and costs 5-8 copies of the tensor per pass; this one costs about
// two (docs/ops.md, "Training-mode batch norm"). Row sums are vectorised in the tensor's type and
// added up in double, so no precision is lost over large N * L. A fused activation is applied in
// the normalization pass, and its derivative in the backward's first pass from the
// pre-activation recomputed out of x, so neither the normalized tensor nor its gradient is ever
// materialised.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "multiversion.h"
#include "task_grain.h"

namespace replk::cpu {
namespace {

enum class Activation { kNone, kReLU, kGELU };

// exp(x) for x <= 0 in float, written so that GCC vectorises it under `omp simd` (no libm call):
// x = n ln2 + f, |f| <= ln2 / 2, exp(f) by its degree-6 Taylor-Horner polynomial (relative error
// ~2e-7), 2^n assembled in the exponent bits. Below -87 the result is flushed to exp(-87).
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float f = (x - n * 0.693145752f) - n * 1.42860677e-6f;     // ln2 split in two parts
  float p = 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f * f + f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Phi(z) = (1 + erf(z / sqrt 2)) / 2 and phi(z) = exp(-z^2 / 2) / sqrt(2 pi), the standard normal
// CDF and density: in float, erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7) on the
// shared exponential; in double, through libm.
template <typename T>
inline void normal_cdf_pdf(T z, T* cdf, T* pdf) {
  if constexpr (std::is_same_v<T, float>) {
    const float u = (z < 0 ? -z : z) * 0.707106781f;
    const float e = exp_nonpositive(-u * u);
    const float t = 1.0f / (1.0f + 0.3275911f * u);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                       t * (-1.453152027f + t * 1.061405429f))));
    const float erf_abs = 1.0f - poly * e;
    *cdf = 0.5f * (1.0f + (z < 0 ? -erf_abs : erf_abs));
    *pdf = 0.398942280f * e;
  } else {
    *cdf = 0.5 * (1.0 + std::erf(z * 0.70710678118654752));
    *pdf = 0.39894228040143268 * std::exp(-0.5 * z * z);
  }
}

// act(z) (activate) and act'(z) (activation_derivative); GELU is the exact (erf) form, and
// ReLU'(0) = 0 as in PyTorch.
template <typename T, Activation A>
inline T activate(T z) {
  if constexpr (A == Activation::kReLU) {
    return z > 0 ? z : T(0);
  } else if constexpr (A == Activation::kGELU) {
    T cdf, pdf;
    normal_cdf_pdf(z, &cdf, &pdf);
    return z * cdf;
  } else {
    return z;
  }
}

template <typename T, Activation A>
inline T activation_derivative(T z) {
  if constexpr (A == Activation::kReLU) {
    return z > 0 ? T(1) : T(0);
  } else if constexpr (A == Activation::kGELU) {
    T cdf, pdf;
    normal_cdf_pdf(z, &cdf, &pdf);
    return cdf + z * pdf;
  } else {
    return T(1);
  }
}

// Statistics of one channel: rows x[n * row_stride + i], n < N, i < L.
template <typename T>
REPLK_MULTIVERSION void channel_stats(const T* x, int64_t N, int64_t L, int64_t row_stride,
                                      double* mean, double* var) {
  double sum = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * row_stride;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < L; ++i) s += p[i];
    sum += s;
  }
  const double m = sum / static_cast<double>(N * L);
  const T mt = static_cast<T>(m);
  double sq = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * row_stride;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < L; ++i) s += (p[i] - mt) * (p[i] - mt);
    sq += s;
  }
  *mean = m;
  *var = sq / static_cast<double>(N * L);
}

// y = act(x * scale + shift) over one channel's rows.
template <typename T, Activation A>
REPLK_MULTIVERSION void channel_affine(const T* x, T* y, int64_t N, int64_t L, int64_t row_stride,
                                       T scale, T shift) {
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * row_stride;
    T* q = y + n * row_stride;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) q[i] = activate<T, A>(p[i] * scale + shift);
  }
}

// sum(dz) and sum(dz * (x - mean)) over one channel's rows, where dz = dy * act'(x * scale + shift)
// is the gradient at the normalized values; with an activation dz is also stored in `dz_out` for
// the second pass (no activation: dz = dy, nothing stored).
template <typename T, Activation A>
REPLK_MULTIVERSION void channel_grad_sums(const T* dy, const T* x, T* dz_out, int64_t N, int64_t L,
                                          int64_t row_stride, T mean, T scale, T shift,
                                          double* sum_dz, double* sum_dz_xc) {
  double a = 0, b = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dy + n * row_stride;
    const T* p = x + n * row_stride;
    T* d = dz_out + n * row_stride;
    T s = 0, t = 0;
#pragma omp simd reduction(+ : s, t)
    for (int64_t i = 0; i < L; ++i) {
      T dz = g[i];
      if constexpr (A != Activation::kNone) {
        dz *= activation_derivative<T, A>(p[i] * scale + shift);
        d[i] = dz;
      }
      s += dz;
      t += dz * (p[i] - mean);
    }
    a += s;
    b += t;
  }
  *sum_dz = a;
  *sum_dz_xc = b;
}

// dx = (dz - mean_dz - (x - mean) * k) * scale over one channel's rows (dx may alias dz).
template <typename T>
REPLK_MULTIVERSION void channel_grad_input(const T* dz, const T* x, T* dx, int64_t N, int64_t L,
                                           int64_t row_stride, T mean, T mean_dz, T k, T scale) {
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dz + n * row_stride;
    const T* p = x + n * row_stride;
    T* q = dx + n * row_stride;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) q[i] = (g[i] - mean_dz - (p[i] - mean) * k) * scale;
  }
}

constexpr const char* kForward = "replk_mm::batch_norm_train_forward";
constexpr const char* kBackward = "replk_mm::batch_norm_train_backward";

void check_input(const at::Tensor& x, const char* name, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 2, op, ": ", name, " must have shape (N, C, *), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", x.scalar_type(), "; use torch.batch_norm for other dtypes");
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous (N, C, *), got strides ", x.strides(),
              "; call .contiguous() or use torch.batch_norm for channels_last tensors");
}

void check_channel_vector(const std::optional<at::Tensor>& v, const at::Tensor& x, const char* name,
                          const char* op) {
  if (!v.has_value()) return;
  TORCH_CHECK(v->dim() == 1 && v->size(0) == x.size(1) && v->is_contiguous(), op, ": ", name,
              " must be a contiguous (C,) tensor with C=", x.size(1), ", got ", v->sizes());
  TORCH_CHECK(v->scalar_type() == x.scalar_type() && v->device() == x.device(), op, ": ", name,
              " must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
              v->scalar_type(), ", ", v->device());
}

Activation parse_activation(c10::string_view name, const char* op) {
  const std::string_view n(name.data(), name.size());
  if (n == "none") return Activation::kNone;
  if (n == "relu") return Activation::kReLU;
  if (n == "gelu") return Activation::kGELU;
  TORCH_CHECK(false, op, ": unknown activation '", std::string(n), "'; choose one of none, relu, gelu");
}

// Calls f(std::integral_constant<Activation, A>{}) for the activation `a`.
template <typename F>
void dispatch_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::kReLU: return f(std::integral_constant<Activation, Activation::kReLU>{});
    case Activation::kGELU: return f(std::integral_constant<Activation, Activation::kGELU>{});
    default: return f(std::integral_constant<Activation, Activation::kNone>{});
  }
}

// The normalization's per-channel affine map z = x * scale + shift, computed from the rounded
// mean and variance that the forward returns, so the backward recomputes the same z.
struct ChannelAffine {
  double invstd, scale, shift;
};
template <typename T>
ChannelAffine channel_affine_params(T mean, T var, const T* weight, const T* bias, int64_t c, double eps) {
  const double invstd = 1.0 / std::sqrt(static_cast<double>(var) + eps);
  const double scale = weight ? weight[c] * invstd : invstd;
  return {invstd, scale, (bias ? bias[c] : 0.0) - static_cast<double>(mean) * scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           double eps, c10::string_view activation) {
  check_input(x, "x", kForward);
  check_channel_vector(weight, x, "weight", kForward);
  check_channel_vector(bias, x, "bias", kForward);
  const Activation act = parse_activation(activation, kForward);
  const int64_t N = x.size(0), C = x.size(1), L = C > 0 ? x.numel() / (N * C) : 0;
  TORCH_CHECK(N * L > 1, kForward, ": batch statistics need more than one value per channel, got input ",
              x.sizes());
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({C}, x.options());
  at::Tensor var = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_forward", [&] {
    dispatch_activation(act, [&](auto a) {
      constexpr Activation A = decltype(a)::value;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* wp = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
      scalar_t* vp = var.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, C, items_per_task(N * L, 2 * kTaskElems), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double m, v;
          channel_stats<scalar_t>(xp + c * L, N, L, C * L, &m, &v);
          mp[c] = static_cast<scalar_t>(m);
          vp[c] = static_cast<scalar_t>(v);
          const ChannelAffine f = channel_affine_params<scalar_t>(mp[c], vp[c], wp, bp, c, eps);
          channel_affine<scalar_t, A>(xp + c * L, yp + c * L, N, L, C * L, static_cast<scalar_t>(f.scale),
                                      static_cast<scalar_t>(f.shift));
        }
      });
    });
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& mean, const at::Tensor& var,
                                                            const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            double eps, c10::string_view activation) {
  check_input(x, "x", kBackward);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), kBackward, ": grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), kBackward, ": grad_out must have x's dtype ",
              x.scalar_type(), ", got ", grad_out.scalar_type());
  check_channel_vector(mean, x, "mean", kBackward);
  check_channel_vector(var, x, "var", kBackward);
  check_channel_vector(weight, x, "weight", kBackward);
  check_channel_vector(bias, x, "bias", kBackward);
  const Activation act = parse_activation(activation, kBackward);
  const at::Tensor dy = grad_out.contiguous();
  const int64_t N = x.size(0), C = x.size(1), L = C > 0 ? x.numel() / (N * C) : 0;
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::empty({C}, x.options());
  at::Tensor db = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_backward", [&] {
    dispatch_activation(act, [&](auto a) {
      constexpr Activation A = decltype(a)::value;
      const scalar_t* gp = dy.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* mp = mean.const_data_ptr<scalar_t>();
      const scalar_t* vp = var.const_data_ptr<scalar_t>();
      const scalar_t* wp = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
      scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
      scalar_t* dbp = db.mutable_data_ptr<scalar_t>();
      const double count = static_cast<double>(N * L);
      at::parallel_for(0, C, items_per_task(N * L, 2 * kTaskElems), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const ChannelAffine f = channel_affine_params<scalar_t>(mp[c], vp[c], wp, bp, c, eps);
          double sum_dz, sum_dz_xc;
          channel_grad_sums<scalar_t, A>(gp + c * L, xp + c * L, dxp + c * L, N, L, C * L, mp[c],
                                         static_cast<scalar_t>(f.scale), static_cast<scalar_t>(f.shift),
                                         &sum_dz, &sum_dz_xc);
          dwp[c] = static_cast<scalar_t>(sum_dz_xc * f.invstd);
          dbp[c] = static_cast<scalar_t>(sum_dz);
          // with an activation the first pass left dz in dx; without one dz is dy
          const scalar_t* dz = A == Activation::kNone ? gp + c * L : dxp + c * L;
          channel_grad_input<scalar_t>(dz, xp + c * L, dxp + c * L, N, L, C * L, mp[c],
                                       static_cast<scalar_t>(sum_dz / count),
                                       static_cast<scalar_t>(sum_dz_xc * f.invstd * f.invstd / count),
                                       static_cast<scalar_t>(f.scale));
        }
      });
    });
  });
  return {dx, dw, db};
}

}  // namespace
}  // namespace replk::cpu

TORCH_LIBRARY_IMPL(replk_mm, CPU, m) {
  m.impl("batch_norm_train_forward", &replk::cpu::forward_cpu);
  m.impl("batch_norm_train_backward", &replk::cpu::backward_cpu);
}
