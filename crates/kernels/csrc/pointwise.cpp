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

namespace mlxnk {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Work per task: enough elements that a task outweighs handing it to another thread.
constexpr int64_t kElementsPerTask = 16384;

template <class F>
void split(int64_t n, int64_t unit, F&& f) {
  const int64_t per = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, unit));
  const int64_t tasks = (n + per - 1) / per;
  parallel_for(tasks, [&](int64_t t) { f(t * per, std::min(n, (t + 1) * per)); });
}

}  // namespace

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
  split(n, 1, [&](int64_t i0, int64_t i1) {
    if (op == PointwiseOp::SiluMul) {
      for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * sigmoid(a[i]) * b[i];
    } else {
      for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * sigmoid(b[i]);
    }
  });
}

}  // namespace mlxnk
