// Portable instantiation of the depth-wise kernels (any x86-64 or other CPU; float32 and float64):
// the same algorithm over small fixed-size arrays that the compiler vectorises for the base ISA.
#include "dwconv_cpu_kernels.h"

namespace {

template <typename E, int L>
struct Generic {
  using T = E;
  struct alignas(sizeof(E) * L) V {
    E v[L];
  };
  static constexpr int VL = L, WB = 4, TJMAX = 8;
  static V load(const T* p) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = p[l];
    return r;
  }
  static V loadu(const T* p) { return load(p); }
  static void store(T* p, const V& a) {
    for (int l = 0; l < L; ++l) p[l] = a.v[l];
  }
  static void storeu(T* p, const V& a) { store(p, a); }
  static V zero() { return V{}; }
  static V add(const V& a, const V& b) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = a.v[l] + b.v[l];
    return r;
  }
  static V fma(const V& a, const V& b, const V& c) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static V set1(T a) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = a;
    return r;
  }
  using M = unsigned;  // bit l: lane l
  static M range_mask(int lo, int hi) { return hi <= lo ? 0u : ((1u << hi) - 1) & ~((1u << lo) - 1); }
  static V maskz_loadu(M m, const T* p) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = (m >> l & 1u) ? p[l] : T(0);
    return r;
  }
  static void mask_storeu(T* p, M m, const V& a) {
    for (int l = 0; l < L; ++l)
      if (m >> l & 1u) p[l] = a.v[l];
  }
  static void transpose_in(const T* in, int64_t sc, int64_t W, T* out) {
    for (int c = 0; c < L; ++c)
      for (int64_t w = 0; w < W; ++w) out[w * L + c] = in[c * sc + w];
  }
  static void transpose_out(const T* in, int64_t W, T* out, int64_t sc) {
    for (int c = 0; c < L; ++c)
      for (int64_t w = 0; w < W; ++w) out[c * sc + w] = in[w * L + c];
  }
};

}  // namespace

namespace replk::cpu {
Kernels<float> kernels_generic_f32() { return make_kernels<Generic<float, 4>>("generic", 3, 0); }
Kernels<double> kernels_generic_f64() { return make_kernels<Generic<double, 4>>("generic", 3, 0); }
}  // namespace replk::cpu
