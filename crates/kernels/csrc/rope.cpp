// Rotary position embedding, NeoX layout (the rotated pairs are (i, i + dims/2)), in float32:
// for position p = offset + t and frequency f_i, θ = p · f_i and
//   y_i = x_i cos θ − x_{i+h} sin θ,   y_{i+h} = x_i sin θ + x_{i+h} cos θ   (h = dims / 2),
// dimensions from `dims` on copied. The frequencies come in as an array that the caller made
// with MLX's own ops (as MLX's rope computes them), so that θ rounds the same; the cosines and
// sines of a position are computed once for all heads.

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mlxnk {

void rope(const RopeArgs& a) {
  const int64_t h = a.dims / 2;
  const int64_t rows = a.B * a.N * a.T;
  if (rows == 0) return;
  std::vector<float> cs(static_cast<size_t>(a.T * h)), sn(cs.size());
  for (int64_t t = 0; t < a.T; ++t) {
    const float p = static_cast<float>(a.offset + t);
    for (int64_t i = 0; i < h; ++i) {
      const float theta = p * a.freqs[i];
      cs[t * h + i] = std::cos(theta);
      sn[t * h + i] = std::sin(theta);
    }
  }
  const int64_t per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.D));
  const int64_t tasks = (rows + per_task - 1) / per_task;
  parallel_for(tasks, [&](int64_t task) {
    const int64_t end = std::min(rows, (task + 1) * per_task);
    for (int64_t r = task * per_task; r < end; ++r) {
      const int64_t t = r % a.T;
      const float* x = a.x + r * a.D;
      float* y = a.y + r * a.D;
      const float* c = cs.data() + t * h;
      const float* s = sn.data() + t * h;
      for (int64_t i = 0; i < h; ++i) {
        const float x1 = x[i], x2 = x[i + h];
        y[i] = x1 * c[i] - x2 * s[i];
        y[i + h] = x1 * s[i] + x2 * c[i];
      }
      for (int64_t i = a.dims; i < a.D; ++i) y[i] = x[i];
    }
  });
}

}  // namespace mlxnk
