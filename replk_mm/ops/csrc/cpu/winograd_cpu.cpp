// CPU transforms of Winograd F(2x2, 3x3) for a 3x3 conv, stride 1, padding 1 (replk_mm::
// winograd_input_transform / winograd_output_transform); the 16 matrix products between them run
// in oneDNN (replk_mm/ops/winograd.py).
//
// The output is cut into 2x2 tiles; tile p = (n, ty, tx) reads the 4x4 input patch d whose
// top-left pixel is (2 ty - 1, 2 tx - 1), zero outside the image. With the transforms
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  A^T = [1 1 1 0; 0 1 -1 -1],
//   V[t][p][c] = (B^T d_c B)[i][j],  M[t] = V[t] U[t],  y tile = A^T M A + bias  (t = 4 i + j)
// with U[t] = (G g G^T)[i][j] the transformed weights. V goes into a buffer of the caller's:
// a fresh one of hundreds of MB costs more in page faults than the transform itself. Memory: x and y channels_last
// [N][H][W][C]; V and each M[t] [P][C]. One task per run of tiles; the inner loops run along the
// channels (contiguous) and vectorise (`omp simd`); rows outside the image read a zero row and
// write a scratch row, so the loops have no branches.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "multiversion.h"
#include "task_grain.h"

namespace replk::cpu {
namespace {

// the 16 transformed values of one tile: src[4 i + j] = the input pixel (row i, column j) of the
// patch, dst + t * stride = where value t goes
REPLK_MULTIVERSION void input_tile(const float* const* src, int64_t C, float* dst, int64_t stride) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    float r[4][4];
    for (int j = 0; j < 4; ++j) {
      const float d0 = src[j][c], d1 = src[4 + j][c], d2 = src[8 + j][c], d3 = src[12 + j][c];
      r[0][j] = d0 - d2;
      r[1][j] = d1 + d2;
      r[2][j] = d2 - d1;
      r[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {
      dst[(4 * i + 0) * stride + c] = r[i][0] - r[i][2];
      dst[(4 * i + 1) * stride + c] = r[i][1] + r[i][2];
      dst[(4 * i + 2) * stride + c] = r[i][2] - r[i][1];
      dst[(4 * i + 3) * stride + c] = r[i][1] - r[i][3];
    }
  }
}

// one output tile: m[t] + offset = the tile's row of M[t], dst[2 a + b] = output pixel (a, b)
REPLK_MULTIVERSION void output_tile(const float* const* m, int64_t offset, const float* bias, int64_t K,
                                    bool relu, float* const* dst) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) {
    float o[2][4];
    for (int j = 0; j < 4; ++j) {
      const float m0 = m[j][offset + k], m1 = m[4 + j][offset + k], m2 = m[8 + j][offset + k],
                  m3 = m[12 + j][offset + k];
      o[0][j] = m0 + m1 + m2;
      o[1][j] = m1 - m2 - m3;
    }
    for (int a = 0; a < 2; ++a) {
      float y0 = o[a][0] + o[a][1] + o[a][2] + bias[k];
      float y1 = o[a][1] - o[a][2] - o[a][3] + bias[k];
      if (relu) {
        y0 = std::max(y0, 0.f);
        y1 = std::max(y1, 0.f);
      }
      dst[2 * a][k] = y0;
      dst[2 * a + 1][k] = y1;
    }
  }
}

void check_float_cpu(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " ", t.device());
}

at::Tensor& winograd_input_transform_cpu(const at::Tensor& x, at::Tensor& v) {
  const char* op = "replk_mm::winograd_input_transform";
  check_float_cpu(x, "x", op);
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": x must be (N, C, H, W) in channels_last memory, got shape ", x.sizes(), " and strides ",
              x.strides(), "; pass x.contiguous(memory_format=torch.channels_last)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2, P = N * th * tw;
  check_float_cpu(v, "out", op);
  TORCH_CHECK(v.dim() == 3 && v.size(0) == 16 && v.size(1) == P && v.size(2) == C && v.is_contiguous(), op,
              ": out must be a contiguous (16, ", P, ", ", C, ") tensor for x of shape ", x.sizes(), ", got shape ",
              v.sizes(), " and strides ", v.strides());
  if (v.numel() == 0) return v;
  const std::vector<float> zeros(C, 0.f);
  const float* xp = x.const_data_ptr<float>();
  float* vp = v.data_ptr<float>();
  at::parallel_for(0, P, items_per_task(16 * C), [&](int64_t begin, int64_t end) {
    const float* src[16];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (th * tw), ty = p / tw % th, tx = p % tw;
      for (int i = 0; i < 4; ++i) {
        const int64_t h = 2 * ty - 1 + i;
        for (int j = 0; j < 4; ++j) {
          const int64_t w = 2 * tx - 1 + j;
          src[4 * i + j] = (h >= 0 && h < H && w >= 0 && w < W) ? xp + ((n * H + h) * W + w) * C : zeros.data();
        }
      }
      input_tile(src, C, vp + p * C, P * C);
    }
  });
  return v;
}

at::Tensor winograd_output_transform_cpu(at::TensorList m, const at::Tensor& bias, int64_t height,
                                         int64_t width, bool relu) {
  const char* op = "replk_mm::winograd_output_transform";
  TORCH_CHECK(m.size() == 16, op, ": m must hold the 16 products M[t] (P, K), got ", m.size(), " tensors");
  TORCH_CHECK(height > 0 && width > 0, op, ": height and width must be positive, got ", height, " x ", width);
  TORCH_CHECK(m[0].dim() == 2, op, ": each m[t] must be a (P, K) matrix, got shape ", m[0].sizes());
  const int64_t P = m[0].size(0), K = m[0].size(1);
  const int64_t th = (height + 1) / 2, tw = (width + 1) / 2;
  TORCH_CHECK(P % (th * tw) == 0, op, ": m holds ", P, " tiles, not a multiple of the ", th * tw,
              " tiles of a ", height, " x ", width, " output");
  std::vector<const float*> mp(16);
  for (int t = 0; t < 16; ++t) {
    check_float_cpu(m[t], ("m[" + std::to_string(t) + "]").c_str(), op);
    TORCH_CHECK(m[t].sizes() == m[0].sizes() && m[t].is_contiguous(), op,
                ": every m[t] must be a contiguous matrix of shape ", m[0].sizes(), ", got m[", t, "] of shape ",
                m[t].sizes(), " and strides ", m[t].strides());
    mp[t] = m[t].const_data_ptr<float>();
  }
  check_float_cpu(bias, "bias", op);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == K, op, ": bias must have shape (", K, "), got ", bias.sizes());
  const at::Tensor b = bias.contiguous();
  const int64_t N = P / (th * tw);
  at::Tensor y = at::empty({N, K, height, width}, m[0].options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const float* bp = b.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, P, items_per_task(16 * K), [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(K);
    float* dst[4];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (th * tw), ty = p / tw % th, tx = p % tw;
      for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 2; ++c) {
          const int64_t h = 2 * ty + a, w = 2 * tx + c;
          dst[2 * a + c] = (h < height && w < width) ? yp + ((n * height + h) * width + w) * K : scratch.data();
        }
      output_tile(mp.data(), p * K, bp, K, relu, dst);
    }
  });
  return y;
}

}  // namespace
}  // namespace replk::cpu

TORCH_LIBRARY_IMPL(replk_mm, CPU, m) {
  m.impl("winograd_input_transform", &replk::cpu::winograd_input_transform_cpu);
  m.impl("winograd_output_transform", &replk::cpu::winograd_output_transform_cpu);
}
