// Row-wise and element-wise float32 ops the engine runs at every layer, which MLX's CPU
// backend (one thread, no SIMD in the wheel's build, several ops per call) takes tens of
// microseconds each for on decode-sized rows:
//
//   rms_norm:     y = x · (mean(x²) + ε)^-½ · w   over rows of D
//   silu_mul:     y = a · sigmoid(a) · b         (SwiGLU)
//   sigmoid_mul:  y = x · sigmoid(g)             (the attention output gate)
//
// computed in the order of the MLX ops they replace. Large inputs are split over the pool.

#include "kernels.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MLXNK_X86 1
#endif

namespace mlxnk {
namespace {

#if defined(MLXNK_X86)
// exp(x) = 2^n · e^r with n = round(x / ln2) and r = x − n·ln2 (ln2 in two parts, so r is
// exact to float precision), e^r by the minimax polynomial of Cephes' expf; n is put into
// the exponent bits. Results below the smallest normal float become 0, above the largest +inf.
__attribute__((target("avx2,fma"))) inline __m256 exp8_avx2(const __m256 x0) {
  const __m256 hi = _mm256_set1_ps(88.7228391f), lo = _mm256_set1_ps(-87.3365448f);
  const __m256 over = _mm256_cmp_ps(x0, hi, _CMP_GT_OQ);
  const __m256 under = _mm256_cmp_ps(x0, lo, _CMP_LT_OQ);
  const __m256 x = _mm256_max_ps(_mm256_min_ps(x0, hi), lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n as two factors, so n = 128 (x near the top of the range) stays finite.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256 f1 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
  return _mm256_blendv_ps(y, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));  // NaN stays NaN
}

__attribute__((target("avx2,fma"))) void vexp_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8_avx2(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float part[8] = {};
    for (int64_t j = i; j < n; ++j) part[j - i] = x[j];
    _mm256_store_ps(part, exp8_avx2(_mm256_load_ps(part)));
    for (int64_t j = i; j < n; ++j) y[j] = part[j - i];
  }
}
#endif

// Work per task: enough elements that a task outweighs handing it to another thread.
constexpr int64_t kElementsPerTask = 16384;

template <class F>
void split(int64_t n, int64_t unit, F&& f) {
  const int64_t per = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, unit));
  const int64_t tasks = (n + per - 1) / per;
  parallel_for(tasks, [&](int64_t t) { f(t * per, std::min(n, (t + 1) * per)); });
}

}  // namespace

void vexp(Isa isa, const float* x, float* y, int64_t n) {
#if defined(MLXNK_X86)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) {
    vexp_avx2(x, y, n);
    return;
  }
#endif
  (void)isa;
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t D, float* y) {
  split(rows, D, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * D;
      float* yr = y + r * D;
      float sum = 0.0f;
      for (int64_t i = 0; i < D; ++i) sum += xr[i] * xr[i];
      const float scale = 1.0f / std::sqrt(sum / static_cast<float>(D) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * scale * w[i];
    }
  });
}

void pointwise(PointwiseOp op, const float* a, const float* b, int64_t n, float* y) {
  const Isa isa = resolve_isa(Isa::Default);
  split(n, 1, [&](int64_t i0, int64_t i1) {
    // sigmoid(g) = 1 / (1 + exp(−g)), the exponentials a vector at a time into y first.
    const float* g = op == PointwiseOp::SiluMul ? a : b;
    for (int64_t i = i0; i < i1; ++i) y[i] = -g[i];
    vexp(isa, y + i0, y + i0, i1 - i0);
    if (op == PointwiseOp::SiluMul) {
      for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * (1.0f / (1.0f + y[i])) * b[i];
    } else {
      for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * (1.0f / (1.0f + y[i]));
    }
  });
}

}  // namespace mlxnk
