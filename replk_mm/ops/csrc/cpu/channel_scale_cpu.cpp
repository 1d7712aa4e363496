// CPU implementation of replk_mm::grn_scale_ and replk_mm::se_scale_: a per-channel scale of a
// channels_last tensor computed from a reduction over its pixels, in two passes over the memory
// (reduce, then scale in place) instead of the 6-9 ATen calls and passes of the same formulas.
//
// Memory: [N][P = H * W][C]. The reduction splits the P rows of an image into tasks of about
// 16 K elements with their own float partial sums, added up in double; the scale pass splits the
// rows alike. Both inner loops run along C (contiguous) and vectorise (`omp simd`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "multiversion.h"
#include "task_grain.h"

namespace replk::cpu {
namespace {

// acc[c] += sum over `rows` rows of x (or of x squared)
REPLK_MULTIVERSION void add_rows(const float* x, int64_t rows, int64_t C, bool square, float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * C;
    if (square) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c] * row[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
    }
  }
}

REPLK_MULTIVERSION void scale_rows(float* x, int64_t rows, int64_t C, const float* scale) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] *= scale[c];
  }
}

// sum of a[i] * b[i]
REPLK_MULTIVERSION float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum over the P rows of one image [P][C] of x (or x squared), per channel
std::vector<double> pixel_sums(const float* x, int64_t P, int64_t C, bool square) {
  const int64_t grain = items_per_task(C), tasks = (P + grain - 1) / grain;
  std::vector<float> partial(tasks * C, 0.f);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      add_rows(x + t * grain * C, std::min(grain, P - t * grain), C, square, partial.data() + t * C);
  });
  std::vector<double> sums(C, 0.0);
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t c = 0; c < C; ++c) sums[c] += partial[t * C + c];
  return sums;
}

void scale_pixels(float* x, int64_t P, int64_t C, const std::vector<float>& scale) {
  at::parallel_for(0, P, items_per_task(C), [&](int64_t begin, int64_t end) {
    scale_rows(x + begin * C, end - begin, C, scale.data());
  });
}

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              op, ": x must be a float32 CPU tensor (N, C, H, W) in channels_last memory, got ",
              x.scalar_type(), " ", x.device(), " of shape ", x.sizes(), " and strides ", x.strides(),
              "; pass x.contiguous(memory_format=torch.channels_last)");
}

// a float32 CPU parameter of the given shape, contiguous
at::Tensor checked_param(const at::Tensor& p, at::IntArrayRef shape, const char* name, const char* op) {
  TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == at::kFloat && p.sizes() == shape, op, ": ",
              name, " must be a float32 CPU tensor of shape ", shape, ", got ", p.scalar_type(), " ",
              p.device(), " of shape ", p.sizes());
  return p.contiguous();
}

at::Tensor& grn_scale_cpu(at::Tensor& x, const at::Tensor& gamma, double eps) {
  const char* op = "replk_mm::grn_scale_";
  check_input(x, op);
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const at::Tensor g = checked_param(gamma, {C}, "gamma", op);
  if (x.numel() == 0) return x;
  const float* gp = g.const_data_ptr<float>();
  float* xp = x.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    float* image = xp + n * P * C;
    std::vector<double> norm = pixel_sums(image, P, C, true);
    double mean = 0.0;
    for (double& v : norm) mean += (v = std::sqrt(v));
    mean /= static_cast<double>(C);
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c)
      scale[c] = static_cast<float>(1.0 + gp[c] * norm[c] / (mean + eps));
    scale_pixels(image, P, C, scale);
  }
  return x;
}

at::Tensor& se_scale_cpu(at::Tensor& x, const at::Tensor& down_weight, const at::Tensor& down_bias,
                         const at::Tensor& up_weight, const at::Tensor& up_bias) {
  const char* op = "replk_mm::se_scale_";
  check_input(x, op);
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(down_weight.dim() == 2, op, ": down_weight must be (hidden, C), got shape ", down_weight.sizes());
  const int64_t hidden = down_weight.size(0);
  const at::Tensor w1 = checked_param(down_weight, {hidden, C}, "down_weight", op);
  const at::Tensor b1 = checked_param(down_bias, {hidden}, "down_bias", op);
  const at::Tensor w2 = checked_param(up_weight, {C, hidden}, "up_weight", op);
  const at::Tensor b2 = checked_param(up_bias, {C}, "up_bias", op);
  if (x.numel() == 0) return x;
  const float *w1p = w1.const_data_ptr<float>(), *b1p = b1.const_data_ptr<float>();
  const float *w2p = w2.const_data_ptr<float>(), *b2p = b2.const_data_ptr<float>();
  float* xp = x.data_ptr<float>();
  std::vector<float> mean(C), h(hidden), scale(C);
  for (int64_t n = 0; n < N; ++n) {
    float* image = xp + n * P * C;
    const std::vector<double> sums = pixel_sums(image, P, C, false);
    for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<float>(sums[c] / static_cast<double>(P));
    // the two small linear layers: vectorised dot products (a scalar double loop cost about
    // 0.1 ms a call at 640 channels)
    for (int64_t j = 0; j < hidden; ++j) h[j] = std::max(b1p[j] + dot(w1p + j * C, mean.data(), C), 0.f);
    for (int64_t c = 0; c < C; ++c)
      scale[c] = 1.f / (1.f + std::exp(-(b2p[c] + dot(w2p + c * hidden, h.data(), hidden))));
    scale_pixels(image, P, C, scale);
  }
  return x;
}

}  // namespace
}  // namespace replk::cpu

TORCH_LIBRARY_IMPL(replk_mm, CPU, m) {
  m.impl("grn_scale_", &replk::cpu::grn_scale_cpu);
  m.impl("se_scale_", &replk::cpu::se_scale_cpu);
}
