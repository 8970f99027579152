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

// The largest non-NaN value of x[0, n) (−inf when there is none): maxps returns its second
// operand when either is NaN, so a NaN in x leaves the running maximum as it was.
__attribute__((target("avx2,fma"))) float max_avx2(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    m2 = _mm256_max_ps(_mm256_loadu_ps(x + i + 16), m2);
    m3 = _mm256_max_ps(_mm256_loadu_ps(x + i + 24), m3);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
  float m = -INFINITY;
  for (float v : lanes) m = v > m ? v : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// The first index of x[0, n) equal to v (n when there is none).
__attribute__((target("avx2,fma"))) int64_t find_avx2(const float* x, int64_t n, float v) {
  const __m256 vv = _mm256_set1_ps(v);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vv, _CMP_EQ_OQ));
    if (mask != 0) return i + __builtin_ctz(static_cast<unsigned>(mask));
  }
  for (; i < n; ++i) {
    if (x[i] == v) return i;
  }
  return n;
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

void add_rms_norm(const float* h, const float* x, const float* w, float eps, int64_t rows,
                  int64_t D, float* sum, float* y) {
  split(rows * D, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) sum[i] = h[i] + x[i];
  });
  rms_norm(sum, w, eps, rows, D, y);
}

// The largest value first (ignoring NaNs), then the first index that holds it: the index MLX's
// strict `x > best` scan from element 0 ends on, unless element 0 is NaN (nothing is greater
// than a NaN, so MLX stays at 0).
void argmax_rows(Isa isa, const float* x, int64_t rows, int64_t n, uint32_t* out) {
#if defined(MLXNK_X86)
  const bool simd = isa == Isa::Avx2 || isa == Isa::Avx512;
#else
  (void)isa;
  const bool simd = false;
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * n;
    int64_t at = 0;
    if (n > 0 && !std::isnan(row[0])) {
#if defined(MLXNK_X86)
      if (simd) at = find_avx2(row, n, max_avx2(row, n));
#endif
      for (int64_t i = 1; !simd && i < n; ++i) {
        if (row[i] > row[at]) at = i;
      }
    }
    out[r] = static_cast<uint32_t>(at);
  }
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
