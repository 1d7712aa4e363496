// CPU implementation of replk_mm::batch_norm_train_{forward,backward}: training-mode batch
// normalization of a contiguous (N, C, *) tensor with batch statistics.
//
// One task per channel block (at::parallel_for). A channel's N rows of L values are read from
// memory once; the second and third passes over them (centred variance, normalization; or the
// two backward reductions and the input gradient) find them in L1/L2. PyTorch's CPU kernel
// reduces with strided loops and costs 5-8 copies of the tensor per pass; this one costs about
// two (docs/ops.md, "Training-mode batch norm"). Row sums are vectorised in the tensor's type and
// added up in double, so no precision is lost over large N * L.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

namespace replk::cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REPLK_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REPLK_MULTIVERSION
#endif

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

// y = x * scale + shift over one channel's rows.
template <typename T>
REPLK_MULTIVERSION void channel_affine(const T* x, T* y, int64_t N, int64_t L, int64_t row_stride,
                                       T scale, T shift) {
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * row_stride;
    T* q = y + n * row_stride;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) q[i] = p[i] * scale + shift;
  }
}

// sum(dy) and sum(dy * (x - mean)) over one channel's rows.
template <typename T>
REPLK_MULTIVERSION void channel_grad_sums(const T* dy, const T* x, int64_t N, int64_t L,
                                          int64_t row_stride, T mean, double* sum_dy,
                                          double* sum_dy_xc) {
  double a = 0, b = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dy + n * row_stride;
    const T* p = x + n * row_stride;
    T s = 0, t = 0;
#pragma omp simd reduction(+ : s, t)
    for (int64_t i = 0; i < L; ++i) {
      s += g[i];
      t += g[i] * (p[i] - mean);
    }
    a += s;
    b += t;
  }
  *sum_dy = a;
  *sum_dy_xc = b;
}

// dx = (dy - mean_dy - (x - mean) * k) * scale over one channel's rows.
template <typename T>
REPLK_MULTIVERSION void channel_grad_input(const T* dy, const T* x, T* dx, int64_t N, int64_t L,
                                           int64_t row_stride, T mean, T mean_dy, T k, T scale) {
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dy + n * row_stride;
    const T* p = x + n * row_stride;
    T* q = dx + n * row_stride;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) q[i] = (g[i] - mean_dy - (p[i] - mean) * k) * scale;
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

// Channels per task: enough values that a task outweighs the scheduling cost.
int64_t channel_grain(int64_t values_per_channel) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, values_per_channel));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           double eps) {
  check_input(x, "x", kForward);
  check_channel_vector(weight, x, "weight", kForward);
  check_channel_vector(bias, x, "bias", kForward);
  const int64_t N = x.size(0), C = x.size(1), L = C > 0 ? x.numel() / (N * C) : 0;
  TORCH_CHECK(N * L > 1, kForward, ": batch statistics need more than one value per channel, got input ",
              x.sizes());
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({C}, x.options());
  at::Tensor var = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_forward", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* vp = var.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, channel_grain(N * L), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double m, v;
        channel_stats<scalar_t>(xp + c * L, N, L, C * L, &m, &v);
        const double invstd = 1.0 / std::sqrt(v + eps);
        const double scale = wp ? wp[c] * invstd : invstd;
        const double shift = (bp ? bp[c] : 0.0) - m * scale;
        channel_affine<scalar_t>(xp + c * L, yp + c * L, N, L, C * L, static_cast<scalar_t>(scale),
                                 static_cast<scalar_t>(shift));
        mp[c] = static_cast<scalar_t>(m);
        vp[c] = static_cast<scalar_t>(v);
      }
    });
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& mean, const at::Tensor& var,
                                                            const std::optional<at::Tensor>& weight,
                                                            double eps) {
  check_input(x, "x", kBackward);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), kBackward, ": grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), kBackward, ": grad_out must have x's dtype ",
              x.scalar_type(), ", got ", grad_out.scalar_type());
  check_channel_vector(mean, x, "mean", kBackward);
  check_channel_vector(var, x, "var", kBackward);
  check_channel_vector(weight, x, "weight", kBackward);
  const at::Tensor dy = grad_out.contiguous();
  const int64_t N = x.size(0), C = x.size(1), L = C > 0 ? x.numel() / (N * C) : 0;
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::empty({C}, x.options());
  at::Tensor db = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_backward", [&] {
    const scalar_t* gp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* vp = var.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = db.mutable_data_ptr<scalar_t>();
    const double count = static_cast<double>(N * L);
    at::parallel_for(0, C, channel_grain(N * L), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double sum_dy, sum_dy_xc;
        channel_grad_sums<scalar_t>(gp + c * L, xp + c * L, N, L, C * L, mp[c], &sum_dy, &sum_dy_xc);
        const double invstd = 1.0 / std::sqrt(static_cast<double>(vp[c]) + eps);
        dwp[c] = static_cast<scalar_t>(sum_dy_xc * invstd);
        dbp[c] = static_cast<scalar_t>(sum_dy);
        const double scale = (wp ? wp[c] : 1.0) * invstd;
        channel_grad_input<scalar_t>(gp + c * L, xp + c * L, dxp + c * L, N, L, C * L, mp[c],
                                     static_cast<scalar_t>(sum_dy / count),
                                     static_cast<scalar_t>(sum_dy_xc * invstd * invstd / count),
                                     static_cast<scalar_t>(scale));
      }
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
