// Scaled dot-product attention in float32 for the CPU: per query row, the scores against
// every key it may see (all of them, or causally the ones up to its own position when the
// queries are the last T of the L keys), a softmax and the weighted sum of the values, with
// grouped key/value heads (query head h reads key head h / (Hq / Hkv)). The order follows
// MLX's own CPU path: q scaled first, scores, max-shifted exponentials, then the sum (each
// score summed in vector-wide partial sums rather than in one running sum).
// Query rows are spread over the pool.

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MLXNK_X86 1
#endif

namespace mlxnk {
namespace {

// q · k over n elements in kLanes independent partial sums (vector lanes once compiled for
// an ISA), added pairwise at the end: one running sum is a chain of n dependent adds, which
// at head size 256 made the scores, not the memory, the cost of a long context.
constexpr int64_t kLanes = 16;
// Output columns of the weighted sum of values kept in registers at once.
constexpr int64_t kBlock = 64;

inline __attribute__((always_inline)) float dot(const float* __restrict q,
                                                const float* __restrict k, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += q[i + l] * k[i + l];
  }
  for (int64_t l = 0; i < n; ++i, ++l) acc[l] += q[i] * k[i];
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

inline __attribute__((always_inline)) void attend_row(Isa isa, const AttentionArgs& a,
                                                      int64_t row, float* __restrict scores,
                                                      float* __restrict qs) {
  const int64_t t = row % a.T;
  const int64_t bh = row / a.T;
  const int64_t h = bh % a.Hq, b = bh / a.Hq;
  const int64_t kh = h / (a.Hq / a.Hkv);
  const float* __restrict q = a.q + row * a.D;
  const float* k = a.k + b * a.k_batch_stride + kh * a.k_head_stride;
  const float* v = a.v + b * a.v_batch_stride + kh * a.v_head_stride;
  float* __restrict o = a.o + row * a.Dv;
  const int64_t seen = a.causal ? std::min(a.L, a.L - a.T + t + 1) : a.L;
  for (int64_t i = 0; i < a.D; ++i) qs[i] = q[i] * a.scale;
  float top = -INFINITY;
  for (int64_t j = 0; j < seen; ++j) {
    const float s = dot(qs, k + j * a.D, a.D);
    scores[j] = s;
    top = std::max(top, s);
  }
  for (int64_t j = 0; j < seen; ++j) scores[j] -= top;
  vexp(isa, scores, scores, seen);
  float sum = 0.0f;
  for (int64_t j = 0; j < seen; ++j) sum += scores[j];
  const float inv = 1.0f / sum;
  // A block of output columns sums over every key in registers; summing into the whole row
  // loaded and stored it once per key, the cost of a long context.
  for (int64_t c0 = 0; c0 < a.Dv; c0 += kBlock) {
    const int64_t width = std::min(kBlock, a.Dv - c0);
    float acc[kBlock] = {};
    if (width == kBlock) {
      for (int64_t j = 0; j < seen; ++j) {
        const float* __restrict vj = v + j * a.Dv + c0;
        const float p = scores[j];
        for (int64_t c = 0; c < kBlock; ++c) acc[c] += p * vj[c];
      }
    } else {
      for (int64_t j = 0; j < seen; ++j) {
        const float* __restrict vj = v + j * a.Dv + c0;
        const float p = scores[j];
        for (int64_t c = 0; c < width; ++c) acc[c] += p * vj[c];
      }
    }
    for (int64_t c = 0; c < width; ++c) o[c0 + c] = acc[c] * inv;
  }
}

void attend_rows_portable(const AttentionArgs& a, int64_t r0, int64_t r1, float* scores,
                          float* qs) {
  for (int64_t r = r0; r < r1; ++r) attend_row(Isa::Portable, a, r, scores, qs);
}

#if defined(MLXNK_X86)
__attribute__((target("avx2,fma"))) void attend_rows_avx2(const AttentionArgs& a, int64_t r0,
                                                           int64_t r1, float* scores,
                                                           float* qs) {
  for (int64_t r = r0; r < r1; ++r) attend_row(Isa::Avx2, a, r, scores, qs);
}
#endif

}  // namespace

void attention(Isa isa, const AttentionArgs& a) {
  const int64_t rows = a.B * a.Hq * a.T;
  if (rows == 0) return;
  auto fn = attend_rows_portable;
#if defined(MLXNK_X86)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) fn = attend_rows_avx2;
#else
  (void)isa;
#endif
  // About 64k multiply-adds per task.
  const int64_t per_row = std::max<int64_t>(1, a.L * (a.D + a.Dv));
  const int64_t per_task = std::max<int64_t>(1, (int64_t{1} << 16) / per_row);
  const int64_t tasks = (rows + per_task - 1) / per_task;
  parallel_for(tasks, [&](int64_t task) {
    std::vector<float> scores(static_cast<size_t>(a.L)), qs(static_cast<size_t>(a.D));
    fn(a, task * per_task, std::min(rows, (task + 1) * per_task), scores.data(), qs.data());
  });
}

}  // namespace mlxnk
