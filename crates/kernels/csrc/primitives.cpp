// MLX primitives over our kernels, and the C ABI the Rust crate calls.
//
// Compiled against exactly the headers of the MLX we link (DEP_MLX_INCLUDE from mlx-sys), with
// the same standard library and ABI as libmlx. The ops build lazy graph nodes: the output array
// carries our primitive and its inputs, and MLX evaluates it on the CPU stream like its own
// (eval / async_eval). Anything we do not handle returns "not handled" so that the caller uses
// MLX's own op instead (GPU streams, other modes, shapes MLX would reject, …).

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/c/array.h"
#include "mlx/c/private/array.h"
#include "mlx/c/private/stream.h"
#include "mlx/c/stream.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace mlxnk {
namespace {

constexpr int kOk = 0;
constexpr int kError = 1;
constexpr int kNotHandled = 2;

thread_local std::string last_error;

bool float_type(mx::Dtype t) { return t == mx::float32 || t == mx::bfloat16 || t == mx::float16; }

FType ftype(mx::Dtype t) {
  if (t == mx::bfloat16) return FType::BF16;
  if (t == mx::float16) return FType::F16;
  return FType::F32;
}

bool supported_params(int group_size, int bits) {
  const bool gs_ok = group_size == 32 || group_size == 64 || group_size == 128;
  const bool bits_ok = bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
  return gs_ok && bits_ok;
}

// ---------------------------------------------------------------------------------------------
// Evaluation helpers (run inside MLX's CPU task; they must not throw).

// Copies the elements of `a` to dst in row-major order (itemsize bytes each).
void copy_row_major(const mx::array& a, uint8_t* dst) {
  if (a.size() == 0) return;
  const size_t es = a.itemsize();
  const uint8_t* src = a.data<uint8_t>();
  const int nd = static_cast<int>(a.ndim());
  if (nd == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  const auto& shape = a.shape();
  const auto& strides = a.strides();
  const int64_t inner = shape[nd - 1];
  const int64_t inner_stride = strides[nd - 1];
  const int64_t outer = static_cast<int64_t>(a.size()) / inner;
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  for (int64_t o = 0; o < outer; ++o) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * strides[d];
    const uint8_t* p = src + off * static_cast<int64_t>(es);
    if (inner_stride == 1) {
      std::memcpy(dst, p, static_cast<size_t>(inner) * es);
      dst += inner * es;
    } else {
      for (int64_t i = 0; i < inner; ++i, dst += es) {
        std::memcpy(dst, p + i * inner_stride * static_cast<int64_t>(es), es);
      }
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

// The bytes of `a` in row-major order: a pointer into `a` when it is row contiguous, else a
// copy in buf.
const uint8_t* row_major_bytes(const mx::array& a, std::vector<uint8_t>& buf) {
  if (a.flags().row_contiguous) return a.data<uint8_t>();
  buf.resize(a.nbytes());
  copy_row_major(a, buf.data());
  return buf.data();
}

// `x` as row-major float32: a pointer into x when it already is, else converted once into buf.
const float* as_f32(const mx::array& x, std::vector<float>& buf) {
  if (x.dtype() == mx::float32 && x.flags().row_contiguous) return x.data<float>();
  std::vector<uint8_t> raw;
  const uint8_t* p = row_major_bytes(x, raw);
  const size_t n = x.size();
  buf.resize(n);
  if (x.dtype() == mx::float32) {
    std::memcpy(buf.data(), p, n * 4);
  } else {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    if (x.dtype() == mx::bfloat16) {
      for (size_t i = 0; i < n; ++i) buf[i] = bf16_to_f32(h[i]);
    } else {
      for (size_t i = 0; i < n; ++i) buf[i] = f16_to_f32(h[i]);
    }
  }
  return buf.data();
}

// A float32 [B, H, L, D] array whose rows of D are contiguous, as a pointer and its batch and
// head strides in elements: read in place when it already is (a cache's view of its first L
// positions is), else converted once into buf.
const float* strided_rows_f32(const mx::array& a, std::vector<float>& buf, int64_t strides[2]) {
  const int64_t L = a.shape(2), D = a.shape(3);
  const bool rows = (D <= 1 || a.strides(3) == 1) && (L <= 1 || a.strides(2) == D);
  if (a.dtype() == mx::float32 && rows) {
    strides[0] = a.strides(0);
    strides[1] = a.strides(1);
    return a.data<float>();
  }
  strides[1] = L * D;
  strides[0] = a.shape(1) * strides[1];
  return as_f32(a, buf);
}

// Writes n float results to out's buffer in out's dtype.
void store_output(mx::array& out, const float* y, size_t n) {
  if (out.dtype() == mx::float32) {
    float* o = out.data<float>();
    if (o != y) std::memcpy(o, y, n * 4);
    return;
  }
  uint16_t* o = out.data<uint16_t>();
  if (out.dtype() == mx::bfloat16) {
    for (size_t i = 0; i < n; ++i) o[i] = f32_to_bf16(y[i]);
  } else {
    for (size_t i = 0; i < n; ++i) o[i] = f32_to_f16(y[i]);
  }
}

// The quantized matrix (or stack of them) given by codes/scales/biases, row-major.
struct Weights {
  std::vector<uint8_t> wbuf, sbuf, bbuf;
  QMatrix q{};
  int64_t codes_per_matrix = 0;   // bytes
  int64_t groups_per_matrix = 0;  // scale/bias elements
  size_t scale_size = 4, bias_size = 4;

  Weights(const mx::array& w, const mx::array& s, const mx::array& b, int gs, int bits) {
    const uint8_t* codes = row_major_bytes(w, wbuf);
    q.codes = codes;
    q.codes_end = codes + w.nbytes();
    q.scales = row_major_bytes(s, sbuf);
    q.biases = row_major_bytes(b, bbuf);
    q.scale_type = ftype(s.dtype());
    q.bias_type = ftype(b.dtype());
    q.N = w.shape(-2);
    q.K = static_cast<int64_t>(w.shape(-1)) * 32 / bits;
    q.bits = bits;
    q.group_size = gs;
    codes_per_matrix = q.N * q.K * bits / 8;
    groups_per_matrix = q.N * (q.K / gs);
    scale_size = s.itemsize();
    bias_size = b.itemsize();
  }

  QMatrix matrix(int64_t e) const {
    QMatrix m = q;
    m.codes = q.codes + e * codes_per_matrix;
    m.scales = static_cast<const uint8_t*>(q.scales) + e * groups_per_matrix * scale_size;
    m.biases = static_cast<const uint8_t*>(q.biases) + e * groups_per_matrix * bias_size;
    return m;
  }
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many column chunks to split N output columns of a product with K inputs and M rows
// into: a few per thread (the machine is shared, so chunks are handed out dynamically), never
// more than there are columns, and one when the product is too small to be worth waking the
// pool for.
int64_t column_chunks(int64_t N, int64_t K, int64_t M) {
  const int64_t threads = pool_threads();
  if (threads <= 1 || N * K * M < (int64_t{1} << 16)) return 1;
  return std::max<int64_t>(1, std::min(ceil_div(N, 8), threads * 4));
}

struct Piece {
  QMatrix q;
  const float* x;
  int64_t M;
  float* y;
  int64_t n0, n1;
  const float* blocks;  // x as pack_row_blocks made it, or nullptr
};

// Appends the column chunks of one product y[M, N] = x[M, K] · Wᵀ (leading dimensions K and N).
void add_pieces(std::vector<Piece>& pieces, const QMatrix& q, const float* x, int64_t M,
                float* y, int64_t chunks, const float* blocks = nullptr) {
  const int64_t N = q.N;
  chunks = std::max<int64_t>(1, std::min(chunks, N));
  int64_t per = ceil_div(N, chunks);
  if (chunks > 1) per = std::min(N, ceil_div(per, 8) * 8);
  for (int64_t n0 = 0; n0 < N; n0 += per) {
    pieces.push_back(Piece{q, x, M, y, n0, std::min(N, n0 + per), blocks});
  }
}

void run_pieces(Isa isa, const std::vector<Piece>& pieces) {
  const std::function<void(int64_t)> fn = [&](int64_t i) {
    const Piece& p = pieces[static_cast<size_t>(i)];
    qmm_columns(isa, p.q, p.x, p.q.K, p.M, p.y, p.q.N, p.n0, p.n1, p.blocks);
  };
  parallel_for(static_cast<int64_t>(pieces.size()), fn);
}

struct LinearParams {
  int group_size;
  int bits;
  bool operator==(const LinearParams&) const = default;
};

// x times each quantized matrix of `in` (after x: w, scales, biases per matrix; one for
// quantized_matmul) as one task:
// x converted and packed once, one pass of the pool over the column pieces of all products
// (a layer's small projections share the threads instead of each waking them). glu: the one
// output is silu(x·W0ᵀ) · (x·W1ᵀ), float32.
void eval_linears(std::vector<mx::array>& outs, const std::vector<mx::array>& in,
                  const std::vector<LinearParams>& params, bool glu, Isa isa) {
  const mx::array& x = in[0];
  const int64_t K = x.shape(-1);
  const int64_t M = K == 0 ? 0 : static_cast<int64_t>(x.size()) / K;
  if (M == 0) return;
  std::vector<float> xbuf;
  const float* xf = as_f32(x, xbuf);
  const std::vector<float> blocks = pack_row_blocks(isa, xf, K, M, K);
  const size_t n = params.size();
  std::vector<Weights> weights;
  weights.reserve(n);  // their QMatrix points into their own buffers: never reallocated
  std::vector<std::vector<float>> ybufs(n);
  std::vector<float*> ys(n);
  std::vector<Piece> pieces;
  for (size_t i = 0; i < n; ++i) {
    weights.emplace_back(in[1 + 3 * i], in[2 + 3 * i], in[3 + 3 * i], params[i].group_size,
                         params[i].bits);
    const int64_t N = weights.back().q.N;
    if (glu || outs[i].dtype() != mx::float32) {
      ybufs[i].resize(static_cast<size_t>(M * N));
      ys[i] = ybufs[i].data();
    } else {
      ys[i] = outs[i].data<float>();
    }
    add_pieces(pieces, weights.back().q, xf, M, ys[i], column_chunks(N, K, M),
               blocks.empty() ? nullptr : blocks.data());
  }
  run_pieces(isa, pieces);
  if (glu) {
    pointwise(PointwiseOp::SiluMul, ys[0], ys[1], M * weights[0].q.N, outs[0].data<float>());
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    store_output(outs[i], ys[i], static_cast<size_t>(M * weights[i].q.N));
  }
}

void eval_dense(mx::array& out, const mx::array& x, const mx::array& w, Isa isa) {
  const int64_t K = x.shape(-1);
  const int64_t N = w.shape(0);
  const int64_t M = K == 0 ? 0 : static_cast<int64_t>(x.size()) / K;
  if (M == 0 || N == 0) return;
  std::vector<float> xbuf;
  std::vector<uint8_t> wbuf;
  const float* xf = as_f32(x, xbuf);
  const DMatrix d{row_major_bytes(w, wbuf), ftype(w.dtype()), N, K};
  float* y = out.data<float>();
  const int64_t chunks = column_chunks(N, K, M);
  const int64_t per = chunks > 1 ? std::min(N, ceil_div(ceil_div(N, chunks), 8) * 8) : N;
  const std::vector<float> blocks = pack_row_blocks(isa, xf, K, M, K);
  const float* packed = blocks.empty() ? nullptr : blocks.data();
  const std::function<void(int64_t)> fn = [&](int64_t i) {
    const int64_t n0 = i * per;
    dense_columns(isa, d, xf, K, M, y, N, n0, std::min(N, n0 + per), packed);
  };
  parallel_for(ceil_div(N, per), fn);
}

void eval_gather(mx::array& out, const mx::array& x, const mx::array& w, const mx::array& s,
                 const mx::array& b, const mx::array& lhs, const mx::array& rhs, int gs,
                 int bits, Isa isa) {
  const int64_t K = x.shape(-1);
  const int64_t M = x.shape(-2);
  const int64_t N = w.shape(-2);
  const int64_t P = static_cast<int64_t>(lhs.size());
  if (P == 0 || M == 0 || N == 0) return;
  const int64_t Bx = K * M == 0 ? 0 : static_cast<int64_t>(x.size()) / (K * M);
  const int64_t E = static_cast<int64_t>(w.size()) / (N * w.shape(-1));

  std::vector<uint32_t> li(static_cast<size_t>(P)), ri(static_cast<size_t>(P));
  copy_row_major(lhs, reinterpret_cast<uint8_t*>(li.data()));
  copy_row_major(rhs, reinterpret_cast<uint8_t*>(ri.data()));

  std::vector<float> xbuf;
  const float* xf = K == 0 ? nullptr : as_f32(x, xbuf);
  Weights weights(w, s, b, gs, bits);
  std::vector<float> ybuf;
  float* y = out.data<float>();
  if (out.dtype() != mx::float32) {
    ybuf.resize(static_cast<size_t>(P * M * N));
    y = ybuf.data();
  }

  // Entries routed to the same matrix are multiplied together, so that each weight tile is
  // decoded once for all of their rows.
  std::vector<std::vector<int64_t>> by_matrix(static_cast<size_t>(E));
  for (int64_t p = 0; p < P; ++p) {
    if (li[p] < Bx && ri[p] < E) {
      by_matrix[ri[p]].push_back(p);
    } else {
      std::fill(y + p * M * N, y + (p + 1) * M * N, 0.0f);  // out of range: zeros
    }
  }
  struct Gathered {
    std::vector<int64_t> entries;
    std::vector<float> x, y;
  };
  std::vector<Gathered> gathered;
  struct Product {
    int64_t e;
    const float* x;
    int64_t rows;
    float* y;
  };
  std::vector<Product> products;
  gathered.reserve(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    auto& entries = by_matrix[e];
    if (entries.empty()) continue;
    if (entries.size() == 1) {
      const int64_t p = entries[0];
      products.push_back(Product{e, xf + li[p] * M * K, M, y + p * M * N});
      continue;
    }
    Gathered g;
    g.entries = std::move(entries);
    const int64_t rows = static_cast<int64_t>(g.entries.size()) * M;
    g.x.resize(static_cast<size_t>(rows * K));
    g.y.resize(static_cast<size_t>(rows * N));
    for (size_t i = 0; i < g.entries.size(); ++i) {
      std::memcpy(g.x.data() + i * M * K, xf + li[g.entries[i]] * M * K,
                  static_cast<size_t>(M * K) * 4);
    }
    gathered.push_back(std::move(g));
    auto& back = gathered.back();
    products.push_back(Product{e, back.x.data(), rows, back.y.data()});
  }

  std::vector<Piece> pieces;
  const int64_t threads = pool_threads();
  for (const auto& pr : products) {
    int64_t chunks = 1;
    if (threads > 1 && N * K * pr.rows >= (int64_t{1} << 14)) {
      chunks = std::min(ceil_div(N, 8), ceil_div(threads * 2, static_cast<int64_t>(products.size())));
    }
    add_pieces(pieces, weights.matrix(pr.e), pr.x, pr.rows, pr.y, chunks);
  }
  run_pieces(isa, pieces);

  for (const auto& g : gathered) {
    for (size_t i = 0; i < g.entries.size(); ++i) {
      std::memcpy(y + g.entries[i] * M * N, g.y.data() + i * M * N,
                  static_cast<size_t>(M * N) * 4);
    }
  }
  store_output(out, y, static_cast<size_t>(P * M * N));
}

// ---------------------------------------------------------------------------------------------
// The primitives.

// Runs fn(inputs, outputs) as the CPU task of `prim` on its stream once every output has a
// buffer. The task sees weak copies: the graph keeps the arrays alive until it has run.
template <class F>
void run_on_cpu(mx::Primitive& prim, const std::vector<mx::array>& inputs,
                std::vector<mx::array>& outputs, F fn) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(prim.stream());
  std::vector<mx::array> ins, outs;
  for (const auto& in : inputs) {
    encoder.set_input_array(in);
    ins.push_back(mx::array::unsafe_weak_copy(in));
  }
  for (auto& out : outputs) {
    encoder.set_output_array(out);
    outs.push_back(mx::array::unsafe_weak_copy(out));
  }
  std::string label;
  if (profiling()) {
    label = prim.name();
    for (const auto& out : outputs) {
      label += " [";
      for (size_t d = 0; d < out.ndim(); ++d) {
        if (d > 0) label += ',';
        label += std::to_string(out.shape(static_cast<int>(d)));
      }
      label += "]";
    }
  }
  encoder.dispatch([ins = std::move(ins), outs = std::move(outs), fn = std::move(fn),
                    label = std::move(label)]() mutable {
    if (label.empty()) {
      fn(ins, outs);
      return;
    }
    const double start = profile_clock();
    fn(ins, outs);
    profile_task(label, start, profile_clock());
  });
}

// The one-output form: fn(inputs, out).
template <class F>
void run_on_cpu(mx::Primitive& prim, const std::vector<mx::array>& inputs, mx::array& out,
                F fn) {
  std::vector<mx::array> outputs{out};  // the same array (arrays are handles)
  run_on_cpu(prim, inputs, outputs,
             [fn = std::move(fn)](const std::vector<mx::array>& in,
                                  std::vector<mx::array>& outs) mutable { fn(in, outs[0]); });
}


// Primitives of ours, one output or several: evaluated on CPU streams only (the engine builds
// them only there and uses `fallback`, MLX's own ops, everywhere else).
[[noreturn]] void cpu_only(const char* name, const char* fallback) {
  throw std::runtime_error(std::string("[mlx-node kernels] ") + name +
                           " runs on CPU streams only; use MLX's " + fallback +
                           " on other devices");
}

class CpuUnaryPrimitive : public mx::UnaryPrimitive {
 public:
  CpuUnaryPrimitive(mx::Stream stream, const char* fallback)
      : mx::UnaryPrimitive(stream), fallback_(fallback) {}

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    cpu_only(name(), fallback_);
  }

 private:
  const char* fallback_;
};

class CpuPrimitive : public mx::Primitive {
 public:
  CpuPrimitive(mx::Stream stream, const char* fallback)
      : mx::Primitive(stream), fallback_(fallback) {}

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    cpu_only(name(), fallback_);
  }

 private:
  const char* fallback_;
};

class QuantizedMatmulCpu : public CpuUnaryPrimitive {
 public:
  QuantizedMatmulCpu(mx::Stream stream, int group_size, int bits, Isa isa)
      : CpuUnaryPrimitive(stream, "quantized_matmul"),
        group_size_(group_size),
        bits_(bits),
        isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out,
               [params = std::vector<LinearParams>{{group_size_, bits_}}, isa = isa_](
                   const std::vector<mx::array>& in, mx::array& y) {
                 std::vector<mx::array> outs{y};  // the same array (arrays are handles)
                 eval_linears(outs, in, params, false, isa);
               });
  }

  const char* name() const override { return "MlxNodeQuantizedMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const QuantizedMatmulCpu*>(&other);
    return o != nullptr && o->group_size_ == group_size_ && o->bits_ == bits_ && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(-2);
    return {shape};
  }

 private:
  int group_size_;
  int bits_;
  Isa isa_;
};

class GatherQmmCpu : public CpuUnaryPrimitive {
 public:
  GatherQmmCpu(mx::Stream stream, int group_size, int bits, Isa isa)
      : CpuUnaryPrimitive(stream, "gather_qmm"),
        group_size_(group_size),
        bits_(bits),
        isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out,
               [gs = group_size_, bits = bits_, isa = isa_](const std::vector<mx::array>& in,
                                                            mx::array& y) {
                 eval_gather(y, in[0], in[1], in[2], in[3], in[4], in[5], gs, bits, isa);
               });
  }

  const char* name() const override { return "MlxNodeGatherQmm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GatherQmmCpu*>(&other);
    return o != nullptr && o->group_size_ == group_size_ && o->bits_ == bits_ && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[4].shape();
    shape.push_back(inputs[0].shape(-2));
    shape.push_back(inputs[1].shape(-2));
    return {shape};
  }

 private:
  int group_size_;
  int bits_;
  Isa isa_;
};


// Inputs x, then w, scales, biases of each matrix; one output per matrix, or with glu the one
// silu(x·W0ᵀ) · (x·W1ᵀ) (see eval_linears).
class QuantizedLinearsCpu : public CpuPrimitive {
 public:
  QuantizedLinearsCpu(mx::Stream stream, std::vector<LinearParams> params, bool glu, Isa isa)
      : CpuPrimitive(stream, "quantized_matmul"),
        params_(std::move(params)),
        glu_(glu),
        isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    run_on_cpu(*this, inputs, outputs,
               [params = params_, glu = glu_, isa = isa_](const std::vector<mx::array>& in,
                                                          std::vector<mx::array>& outs) {
                 eval_linears(outs, in, params, glu, isa);
               });
  }

  const char* name() const override { return "MlxNodeQuantizedLinears"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const QuantizedLinearsCpu*>(&other);
    return o != nullptr && o->params_ == params_ && o->glu_ == glu_ && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    std::vector<mx::Shape> shapes;
    for (size_t i = 0; i < (glu_ ? 1 : params_.size()); ++i) {
      auto shape = inputs[0].shape();
      shape.back() = inputs[1 + 3 * i].shape(-2);
      shapes.push_back(std::move(shape));
    }
    return shapes;
  }

 private:
  std::vector<LinearParams> params_;
  bool glu_;
  Isa isa_;
};


// Inputs: qkv, z, a, b, conv_weight, conv_state, neg_a, dt_bias, norm_weight, state (all
// float32); outputs: y, the new conv window, the new state.
class GatedDeltaCpu : public CpuPrimitive {
 public:
  GatedDeltaCpu(mx::Stream stream, int key_heads, int value_heads, float eps, Isa isa)
      : CpuPrimitive(stream, "ops"), hk_(key_heads), hv_(value_heads), eps_(eps), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    // No input is donated to an output: each output's node holds the inputs, so none is
    // ever the only reference; the kernel reads the old state while it writes the new one.
    run_on_cpu(*this, inputs, outputs,
               [hk = hk_, hv = hv_, eps = eps_, isa = isa_](const std::vector<mx::array>& in,
                                                            std::vector<mx::array>& outs) {
                 eval_gated_delta(in, outs, hk, hv, eps, isa);
               });
  }

  const char* name() const override { return "MlxNodeGatedDelta"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GatedDeltaCpu*>(&other);
    return o != nullptr && o->hk_ == hk_ && o->hv_ == hv_ && o->eps_ == eps_ && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[1].shape(), inputs[5].shape(), inputs[9].shape()};
  }

 private:
  static void eval_gated_delta(const std::vector<mx::array>& in, std::vector<mx::array>& out,
                               int hk, int hv, float eps, Isa isa) {
    const mx::array& qkv = in[0];
    const mx::array& state = in[9];
    DeltaArgs a{};
    a.shape.B = qkv.shape(0);
    a.shape.T = qkv.shape(1);
    a.shape.Hk = hk;
    a.shape.Hv = hv;
    a.shape.dk = state.shape(2);
    a.shape.dv = state.shape(3);
    a.shape.K = in[4].shape(1);
    std::vector<std::vector<float>> bufs(10);
    const float* p[10];
    for (size_t i = 0; i < 10; ++i) p[i] = as_f32(in[i], bufs[i]);
    a.qkv = p[0];
    a.z = p[1];
    a.a = p[2];
    a.b = p[3];
    a.conv_weight = p[4];
    a.conv_state_in = p[5];
    a.neg_a = p[6];
    a.dt_bias = p[7];
    a.norm_weight = p[8];
    a.eps = eps;
    a.y = out[0].data<float>();
    a.conv_state_out = out[1].data<float>();
    a.state_in = p[9];
    a.state = out[2].data<float>();
    gated_delta(isa, a);
  }

  int hk_;
  int hv_;
  float eps_;
  Isa isa_;
};


// rms_norm (inputs x, w; op < 0) or a PointwiseOp (inputs a, b), float32.
class PointwiseCpu : public CpuUnaryPrimitive {
 public:
  PointwiseCpu(mx::Stream stream, int op, float eps)
      : CpuUnaryPrimitive(stream, "ops"), op_(op), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out,
               [op = op_, eps = eps_](const std::vector<mx::array>& in, mx::array& y) {
                 std::vector<float> abuf, bbuf;
                 const float* pa = as_f32(in[0], abuf);
                 const float* pb = as_f32(in[1], bbuf);
                 if (op < 0) {
                   const int64_t D = in[0].shape(-1);
                   const int64_t rows = D == 0 ? 0 : static_cast<int64_t>(in[0].size()) / D;
                   rms_norm(pa, pb, eps, rows, D, y.data<float>());
                 } else {
                   pointwise(static_cast<PointwiseOp>(op), pa, pb,
                             static_cast<int64_t>(in[0].size()), y.data<float>());
                 }
               });
  }

  const char* name() const override { return "MlxNodePointwise"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const PointwiseCpu*>(&other);
    return o != nullptr && o->op_ == op_ && o->eps_ == eps_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  int op_;
  float eps_;
};


// Inputs h, x, w (float32); outputs h + x and rms_norm(h + x) · w (see add_rms_norm).
class AddRmsNormCpu : public CpuPrimitive {
 public:
  AddRmsNormCpu(mx::Stream stream, float eps)
      : CpuPrimitive(stream, "add and fast::rms_norm"), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    run_on_cpu(*this, inputs, outputs,
               [eps = eps_](const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
                 std::vector<float> hbuf, xbuf, wbuf;
                 const int64_t D = in[0].shape(-1);
                 const int64_t rows = D == 0 ? 0 : static_cast<int64_t>(in[0].size()) / D;
                 add_rms_norm(as_f32(in[0], hbuf), as_f32(in[1], xbuf), as_f32(in[2], wbuf), eps,
                              rows, D, outs[0].data<float>(), outs[1].data<float>());
               });
  }

  const char* name() const override { return "MlxNodeAddRmsNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const AddRmsNormCpu*>(&other);
    return o != nullptr && o->eps_ == eps_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }

 private:
  float eps_;
};


// Input x (float32); output the uint32 argmax of its last axis, like MLX's argmax.
class ArgmaxCpu : public CpuUnaryPrimitive {
 public:
  ArgmaxCpu(mx::Stream stream, Isa isa) : CpuUnaryPrimitive(stream, "argmax"), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out, [isa = isa_](const std::vector<mx::array>& in, mx::array& y) {
      std::vector<float> xbuf;
      const int64_t n = in[0].shape(-1);
      argmax_rows(isa, as_f32(in[0], xbuf), static_cast<int64_t>(y.size()), n,
                  y.data<uint32_t>());
    });
  }

  const char* name() const override { return "MlxNodeArgmax"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const ArgmaxCpu*>(&other);
    return o != nullptr && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.pop_back();
    return {shape};
  }

 private:
  Isa isa_;
};


// Inputs q, k, v (float32); output o like MLX's scaled_dot_product_attention.
class AttentionCpu : public CpuUnaryPrimitive {
 public:
  AttentionCpu(mx::Stream stream, float scale, bool causal, Isa isa)
      : CpuUnaryPrimitive(stream, "scaled_dot_product_attention"),
        scale_(scale),
        causal_(causal),
        isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out,
               [scale = scale_, causal = causal_, isa = isa_](const std::vector<mx::array>& in,
                                                              mx::array& y) {
                 const mx::array &q = in[0], &k = in[1], &v = in[2];
                 std::vector<float> qbuf, kbuf, vbuf;
                 AttentionArgs a{};
                 a.q = as_f32(q, qbuf);
                 int64_t kstrides[2], vstrides[2];
                 a.k = strided_rows_f32(k, kbuf, kstrides);
                 a.v = strided_rows_f32(v, vbuf, vstrides);
                 a.k_batch_stride = kstrides[0];
                 a.k_head_stride = kstrides[1];
                 a.v_batch_stride = vstrides[0];
                 a.v_head_stride = vstrides[1];
                 a.o = y.data<float>();
                 a.B = q.shape(0);
                 a.Hq = q.shape(1);
                 a.T = q.shape(2);
                 a.D = q.shape(3);
                 a.Hkv = k.shape(1);
                 a.L = k.shape(2);
                 a.Dv = v.shape(3);
                 a.scale = scale;
                 a.causal = causal;
                 attention(isa, a);
               });
  }

  const char* name() const override { return "MlxNodeAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const AttentionCpu*>(&other);
    return o != nullptr && o->scale_ == scale_ && o->causal_ == causal_ && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[2].shape(-1);
    return {shape};
  }

 private:
  float scale_;
  bool causal_;
  Isa isa_;
};


// x · wᵀ for a dense w [N, K] of any float type and float32 x.
class DenseMatmulCpu : public CpuUnaryPrimitive {
 public:
  DenseMatmulCpu(mx::Stream stream, Isa isa)
      : CpuUnaryPrimitive(stream, "matmul"), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out, [isa = isa_](const std::vector<mx::array>& in, mx::array& y) {
      eval_dense(y, in[0], in[1], isa);
    });
  }

  const char* name() const override { return "MlxNodeDenseMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const DenseMatmulCpu*>(&other);
    return o != nullptr && o->isa_ == isa_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

 private:
  Isa isa_;
};


// Inputs x [B, N, T, D] and freqs [dims / 2] (float32); NeoX rotary embedding from `offset`.
class RopeCpu : public CpuUnaryPrimitive {
 public:
  RopeCpu(mx::Stream stream, int dims, int offset)
      : CpuUnaryPrimitive(stream, "fast::rope"), dims_(dims), offset_(offset) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    run_on_cpu(*this, inputs, out,
               [dims = dims_, offset = offset_](const std::vector<mx::array>& in, mx::array& y) {
                 const mx::array& x = in[0];
                 std::vector<float> xbuf, fbuf;
                 RopeArgs a{};
                 a.x = as_f32(x, xbuf);
                 a.freqs = as_f32(in[1], fbuf);
                 a.y = y.data<float>();
                 a.B = x.shape(0);
                 a.N = x.shape(1);
                 a.T = x.shape(2);
                 a.D = x.shape(3);
                 a.dims = dims;
                 a.offset = offset;
                 rope(a);
               });
  }

  const char* name() const override { return "MlxNodeRope"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const RopeCpu*>(&other);
    return o != nullptr && o->dims_ == dims_ && o->offset_ == offset_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  int dims_;
  int offset_;
};

// ---------------------------------------------------------------------------------------------
// Graph construction.

Isa isa_arg(int isa) {
  if (isa < 0 || isa > 4) return resolve_isa(Isa::Default);
  return resolve_isa(static_cast<Isa>(isa));
}

// Whether codes/scales/biases form the affine quantized matrices we handle (K > 0 inputs),
// with `batch_dims` leading dimensions (0 for one matrix).
bool weights_ok(const mx::array& w, const mx::array& s, const mx::array& b, int gs, int bits,
                size_t batch_dims) {
  if (w.dtype() != mx::uint32 || w.ndim() != batch_dims + 2) return false;
  if (!float_type(s.dtype()) || s.dtype() != b.dtype()) return false;
  if (s.ndim() != w.ndim() || b.shape() != s.shape()) return false;
  const int64_t K = static_cast<int64_t>(w.shape(-1)) * 32 / bits;
  if (K == 0 || K * bits != static_cast<int64_t>(w.shape(-1)) * 32 || K % gs != 0) return false;
  for (size_t d = 0; d + 1 < w.ndim(); ++d) {
    if (s.shape(static_cast<int>(d)) != w.shape(static_cast<int>(d))) return false;
  }
  return s.shape(-1) == K / gs;
}

int quantized_matmul(mlx_array* res, mlx_array x_in, mlx_array w_in, mlx_array s_in,
                     mlx_array b_in, int gs, int bits, int isa, mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu || !supported_params(gs, bits)) {
    return kNotHandled;
  }
  if (x_in.ctx == nullptr || b_in.ctx == nullptr) return kNotHandled;
  const mx::array& x = mlx_array_get_(x_in);
  const mx::array& w = mlx_array_get_(w_in);
  const mx::array& s = mlx_array_get_(s_in);
  const mx::array& b = mlx_array_get_(b_in);
  if (x.ndim() < 1 || !float_type(x.dtype()) || !weights_ok(w, s, b, gs, bits, 0)) {
    return kNotHandled;
  }
  if (static_cast<int64_t>(x.shape(-1)) * bits != static_cast<int64_t>(w.shape(-1)) * 32) {
    return kNotHandled;
  }
  auto shape = x.shape();
  shape.back() = w.shape(-2);
  const mx::Dtype dtype = mx::promote_types(x.dtype(), s.dtype());
  mlx_array_set_(*res, mx::array(std::move(shape), dtype,
                                 std::make_shared<QuantizedMatmulCpu>(stream, gs, bits, isa_arg(isa)),
                                 {x, w, s, b}));
  return kOk;
}

// x times `count` quantized matrices (weights: w, scales, biases of each); glu needs count 2,
// matrices of one shape and a float32 result. Not handled unless every product is one
// quantized_matmul would hand us.
int quantized_linears(mlx_array* res, mlx_array x_in, const mlx_array* weights_in,
                      const int* group_sizes, const int* bits, int count, int glu, int isa,
                      mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu || count < 1) return kNotHandled;
  if (glu != 0 && count != 2) return kNotHandled;
  if (x_in.ctx == nullptr) return kNotHandled;
  const mx::array& x = mlx_array_get_(x_in);
  if (x.ndim() < 1 || !float_type(x.dtype())) return kNotHandled;
  std::vector<mx::array> inputs{x};
  std::vector<LinearParams> params;
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  for (int i = 0; i < count; ++i) {
    for (int j = 0; j < 3; ++j) {
      if (weights_in[3 * i + j].ctx == nullptr) return kNotHandled;
    }
    const mx::array& w = mlx_array_get_(weights_in[3 * i]);
    const mx::array& s = mlx_array_get_(weights_in[3 * i + 1]);
    const mx::array& b = mlx_array_get_(weights_in[3 * i + 2]);
    if (!supported_params(group_sizes[i], bits[i]) ||
        !weights_ok(w, s, b, group_sizes[i], bits[i], 0) ||
        static_cast<int64_t>(x.shape(-1)) * bits[i] != static_cast<int64_t>(w.shape(-1)) * 32) {
      return kNotHandled;
    }
    inputs.insert(inputs.end(), {w, s, b});
    params.push_back(LinearParams{group_sizes[i], bits[i]});
    auto shape = x.shape();
    shape.back() = w.shape(-2);
    shapes.push_back(std::move(shape));
    dtypes.push_back(mx::promote_types(x.dtype(), s.dtype()));
  }
  if (glu != 0) {
    if (shapes[0] != shapes[1] || dtypes[0] != mx::float32 || dtypes[1] != mx::float32) {
      return kNotHandled;
    }
    shapes.pop_back();
    dtypes.pop_back();
  }
  auto outs = mx::array::make_arrays(
      std::move(shapes), dtypes,
      std::make_shared<QuantizedLinearsCpu>(stream, std::move(params), glu != 0, isa_arg(isa)),
      inputs);
  for (size_t i = 0; i < outs.size(); ++i) mlx_array_set_(res[i], outs[i]);
  return kOk;
}

// Default gather indices: every batch entry of `a` in order, shaped like a's batch dimensions.
mx::array default_indices(const mx::array& a, const mx::Stream& stream) {
  mx::Shape batch(a.shape().begin(), a.shape().end() - 2);
  int64_t count = 1;
  for (auto d : batch) count *= d;
  return mx::reshape(mx::arange(0.0, static_cast<double>(count), 1.0, mx::uint32, stream), batch,
                     stream);
}

int gather_qmm(mlx_array* res, mlx_array x_in, mlx_array w_in, mlx_array s_in, mlx_array b_in,
               mlx_array lhs_in, mlx_array rhs_in, int gs, int bits, int isa,
               mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu || !supported_params(gs, bits)) {
    return kNotHandled;
  }
  if (x_in.ctx == nullptr || b_in.ctx == nullptr) return kNotHandled;
  if (lhs_in.ctx == nullptr && rhs_in.ctx == nullptr) {
    return quantized_matmul(res, x_in, w_in, s_in, b_in, gs, bits, isa, stream_in);
  }
  const mx::array& x = mlx_array_get_(x_in);
  const mx::array& w = mlx_array_get_(w_in);
  const mx::array& s = mlx_array_get_(s_in);
  const mx::array& b = mlx_array_get_(b_in);
  if (x.ndim() < 2 || w.ndim() < 3 || !float_type(x.dtype()) ||
      !weights_ok(w, s, b, gs, bits, w.ndim() - 2)) {
    return kNotHandled;
  }
  if (static_cast<int64_t>(x.shape(-1)) * bits != static_cast<int64_t>(w.shape(-1)) * 32) {
    return kNotHandled;
  }
  auto index = [&](mlx_array given, const mx::array& of) -> std::optional<mx::array> {
    if (given.ctx == nullptr) return default_indices(of, stream);
    const mx::array& i = mlx_array_get_(given);
    if (!mx::issubdtype(i.dtype(), mx::integer)) return std::nullopt;
    return mx::astype(i, mx::uint32, stream);
  };
  auto lhs = index(lhs_in, x);
  auto rhs = index(rhs_in, w);
  if (!lhs || !rhs) return kNotHandled;
  std::vector<mx::array> both;
  try {
    both = mx::broadcast_arrays({*lhs, *rhs}, stream);
  } catch (const std::exception&) {
    return kNotHandled;  // MLX's op reports the shapes
  }
  auto shape = both[0].shape();
  shape.push_back(x.shape(-2));
  shape.push_back(w.shape(-2));
  const mx::Dtype dtype = mx::promote_types(x.dtype(), s.dtype());
  mlx_array_set_(*res, mx::array(std::move(shape), dtype,
                                 std::make_shared<GatherQmmCpu>(stream, gs, bits, isa_arg(isa)),
                                 {x, w, s, b, both[0], both[1]}));
  return kOk;
}

bool f32_with_shape(const mx::array& a, std::initializer_list<int64_t> shape) {
  if (a.dtype() != mx::float32 || a.ndim() != shape.size()) return false;
  int d = 0;
  for (int64_t n : shape) {
    if (a.shape(d++) != n) return false;
  }
  return true;
}

// The inputs in GatedDeltaCpu's order; not handled unless every one is float32 and of the
// shapes the mixing implies.
int gated_delta_op(mlx_array* y_out, mlx_array* conv_out, mlx_array* state_out,
                   const mlx_array* in, int key_heads, int value_heads, float eps, int isa,
                   mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  for (int i = 0; i < 10; ++i) {
    if (in[i].ctx == nullptr) return kNotHandled;
  }
  std::vector<mx::array> inputs;
  for (int i = 0; i < 10; ++i) inputs.push_back(mlx_array_get_(in[i]));
  const mx::array& qkv = inputs[0];
  const mx::array& state = inputs[9];
  if (qkv.ndim() != 3 || state.ndim() != 4 || inputs[4].ndim() != 2) return kNotHandled;
  const int64_t B = qkv.shape(0), T = qkv.shape(1), C = qkv.shape(2);
  const int64_t hk = key_heads, hv = value_heads;
  const int64_t dk = state.shape(2), dv = state.shape(3), K = inputs[4].shape(1);
  if (hk < 1 || hv < 1 || hv % hk != 0 || K < 1 || C != 2 * hk * dk + hv * dv) {
    return kNotHandled;
  }
  const bool shapes_ok =
      f32_with_shape(qkv, {B, T, C}) && f32_with_shape(inputs[1], {B, T, hv * dv}) &&
      f32_with_shape(inputs[2], {B, T, hv}) && f32_with_shape(inputs[3], {B, T, hv}) &&
      f32_with_shape(inputs[4], {C, K}) && f32_with_shape(inputs[5], {B, K - 1, C}) &&
      f32_with_shape(inputs[6], {hv}) && f32_with_shape(inputs[7], {hv}) &&
      f32_with_shape(inputs[8], {dv}) && f32_with_shape(state, {B, hv, dk, dv});
  if (!shapes_ok) return kNotHandled;
  const auto shapes = std::vector<mx::Shape>{inputs[1].shape(), inputs[5].shape(), state.shape()};
  auto outs = mx::array::make_arrays(
      shapes, {mx::float32, mx::float32, mx::float32},
      std::make_shared<GatedDeltaCpu>(stream, key_heads, value_heads, eps, isa_arg(isa)), inputs);
  mlx_array_set_(*y_out, outs[0]);
  mlx_array_set_(*conv_out, outs[1]);
  mlx_array_set_(*state_out, outs[2]);
  return kOk;
}

// op < 0: rms_norm(a, w = b, eps) over a's last axis; else the PointwiseOp of a and b (same
// shapes). Not handled unless float32 on a CPU stream.
int pointwise_op(mlx_array* res, int op, mlx_array a_in, mlx_array b_in, float eps,
                 mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  if (a_in.ctx == nullptr || b_in.ctx == nullptr || op > 1) return kNotHandled;
  const mx::array& a = mlx_array_get_(a_in);
  const mx::array& b = mlx_array_get_(b_in);
  if (a.dtype() != mx::float32 || b.dtype() != mx::float32 || a.ndim() < 1) return kNotHandled;
  const bool shapes_ok = op < 0 ? (b.ndim() == 1 && b.shape(0) == a.shape(-1)) : a.shape() == b.shape();
  if (!shapes_ok) return kNotHandled;
  mlx_array_set_(*res, mx::array(a.shape(), mx::float32,
                                 std::make_shared<PointwiseCpu>(stream, op, eps), {a, b}));
  return kOk;
}

// h, x [.., D] and w [D], float32 on a CPU stream; not handled otherwise.
int add_rms_norm_op(mlx_array* sum_out, mlx_array* y_out, mlx_array h_in, mlx_array x_in,
                    mlx_array w_in, float eps, mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  if (h_in.ctx == nullptr || x_in.ctx == nullptr || w_in.ctx == nullptr) return kNotHandled;
  const mx::array& h = mlx_array_get_(h_in);
  const mx::array& x = mlx_array_get_(x_in);
  const mx::array& w = mlx_array_get_(w_in);
  for (const auto* a : {&h, &x, &w}) {
    if (a->dtype() != mx::float32) return kNotHandled;
  }
  if (h.ndim() < 1 || x.shape() != h.shape() || w.ndim() != 1 || w.shape(0) != h.shape(-1)) {
    return kNotHandled;
  }
  auto outs = mx::array::make_arrays({h.shape(), h.shape()}, {mx::float32, mx::float32},
                                     std::make_shared<AddRmsNormCpu>(stream, eps), {h, x, w});
  mlx_array_set_(*sum_out, outs[0]);
  mlx_array_set_(*y_out, outs[1]);
  return kOk;
}

// x [.., n] float32 with n ≥ 1 on a CPU stream; not handled otherwise.
int argmax_op(mlx_array* res, mlx_array x_in, int isa, mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu || x_in.ctx == nullptr) {
    return kNotHandled;
  }
  const mx::array& x = mlx_array_get_(x_in);
  if (x.dtype() != mx::float32 || x.ndim() < 1 || x.shape(-1) == 0) return kNotHandled;
  auto shape = x.shape();
  shape.pop_back();
  mlx_array_set_(*res, mx::array(std::move(shape), mx::uint32,
                                 std::make_shared<ArgmaxCpu>(stream, isa_arg(isa)), {x}));
  return kOk;
}

// q [B, Hq, T, D], k [B, Hkv, L, D], v [B, Hkv, L, Dv], Hq a multiple of Hkv, T ≤ L when
// causal; not handled otherwise or unless float32 on a CPU stream.
int attention_op(mlx_array* res, mlx_array q_in, mlx_array k_in, mlx_array v_in, float scale,
                 int causal, int isa, mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  if (q_in.ctx == nullptr || k_in.ctx == nullptr || v_in.ctx == nullptr) return kNotHandled;
  const mx::array& q = mlx_array_get_(q_in);
  const mx::array& k = mlx_array_get_(k_in);
  const mx::array& v = mlx_array_get_(v_in);
  for (const auto* a : {&q, &k, &v}) {
    if (a->dtype() != mx::float32 || a->ndim() != 4) return kNotHandled;
  }
  const bool ok = k.shape(0) == q.shape(0) && v.shape(0) == q.shape(0) &&
                  k.shape(3) == q.shape(3) && v.shape(1) == k.shape(1) &&
                  v.shape(2) == k.shape(2) && k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0 &&
                  k.shape(2) > 0 && (causal == 0 || q.shape(2) <= k.shape(2));
  if (!ok) return kNotHandled;
  auto shape = q.shape();
  shape.back() = v.shape(3);
  mlx_array_set_(*res, mx::array(std::move(shape), mx::float32,
                                 std::make_shared<AttentionCpu>(stream, scale, causal != 0,
                                                                isa_arg(isa)),
                                 {q, k, v}));
  return kOk;
}

// x [.., K] float32 times wᵀ, w [N, K] of a float type; not handled otherwise.
int dense_matmul(mlx_array* res, mlx_array x_in, mlx_array w_in, int isa, mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  if (x_in.ctx == nullptr || w_in.ctx == nullptr) return kNotHandled;
  const mx::array& x = mlx_array_get_(x_in);
  const mx::array& w = mlx_array_get_(w_in);
  if (x.dtype() != mx::float32 || !float_type(w.dtype()) || x.ndim() < 1 || w.ndim() != 2 ||
      x.shape(-1) != w.shape(1) || w.shape(1) == 0) {
    return kNotHandled;
  }
  auto shape = x.shape();
  shape.back() = w.shape(0);
  mlx_array_set_(*res, mx::array(std::move(shape), mx::float32,
                                 std::make_shared<DenseMatmulCpu>(stream, isa_arg(isa)), {x, w}));
  return kOk;
}

// x [B, N, T, D] float32, freqs [dims / 2] float32, dims even and ≤ D, offset ≥ 0.
int rope_op(mlx_array* res, mlx_array x_in, mlx_array f_in, int dims, int offset,
            mlx_stream stream_in) {
  const mx::Stream stream = mlx_stream_get_(stream_in);
  if (stream.device.type != mx::Device::DeviceType::cpu) return kNotHandled;
  if (x_in.ctx == nullptr || f_in.ctx == nullptr) return kNotHandled;
  const mx::array& x = mlx_array_get_(x_in);
  const mx::array& f = mlx_array_get_(f_in);
  if (x.dtype() != mx::float32 || f.dtype() != mx::float32 || x.ndim() != 4 || f.ndim() != 1) {
    return kNotHandled;
  }
  if (dims <= 0 || dims % 2 != 0 || dims > x.shape(3) || f.shape(0) != dims / 2 || offset < 0) {
    return kNotHandled;
  }
  mlx_array_set_(*res, mx::array(x.shape(), mx::float32,
                                 std::make_shared<RopeCpu>(stream, dims, offset), {x, f}));
  return kOk;
}

template <class F>
int guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    last_error = e.what();
    return kError;
  } catch (...) {
    last_error = "unknown C++ exception";
    return kError;
  }
}

}  // namespace
}  // namespace mlxnk

extern "C" {

// Status of every op: 0 = *res holds the output, 1 = error (mlxnk_last_error says what),
// 2 = not handled here (other device, mode or shapes): the caller uses MLX's own op.

// quantized_matmul(x, w, scales, biases, transpose = true, group_size, bits), affine mode.
int mlxnk_quantized_matmul(mlx_array* res, mlx_array x, mlx_array w, mlx_array scales,
                           mlx_array biases, int group_size, int bits, int isa,
                           mlx_stream stream) {
  return mlxnk::guarded([&] {
    return mlxnk::quantized_matmul(res, x, w, scales, biases, group_size, bits, isa, stream);
  });
}

// x times `count` quantized matrices (weights: w, scales, biases of each; group_sizes and
// bits: one each) as one node: res[i] = quantized_matmul(x, w_i, …), or with glu = 1 (count 2,
// float32) the one output res[0] = silu(x·W0ᵀ) · (x·W1ᵀ). res holds count (glu: 1) handles.
int mlxnk_quantized_linears(mlx_array* res, mlx_array x, const mlx_array* weights,
                            const int* group_sizes, const int* bits, int count, int glu, int isa,
                            mlx_stream stream) {
  return mlxnk::guarded([&] {
    return mlxnk::quantized_linears(res, x, weights, group_sizes, bits, count, glu, isa, stream);
  });
}

// gather_qmm(x, w, scales, biases, lhs_indices, rhs_indices, transpose = true, …); an index
// array with a null ctx means "not given".
int mlxnk_gather_qmm(mlx_array* res, mlx_array x, mlx_array w, mlx_array scales,
                     mlx_array biases, mlx_array lhs_indices, mlx_array rhs_indices,
                     int group_size, int bits, int isa, mlx_stream stream) {
  return mlxnk::guarded([&] {
    return mlxnk::gather_qmm(res, x, w, scales, biases, lhs_indices, rhs_indices, group_size,
                             bits, isa, stream);
  });
}

// The Gated DeltaNet mixing of one layer (gated_delta.cpp): `inputs` are qkv, z, a, b,
// conv_weight, conv_state, neg_a, dt_bias, norm_weight, state; the outputs y, the new conv
// window and the new state.
int mlxnk_gated_delta(mlx_array* y, mlx_array* conv_state, mlx_array* state,
                      const mlx_array* inputs, int key_heads, int value_heads, float eps,
                      int isa, mlx_stream stream) {
  return mlxnk::guarded([&] {
    return mlxnk::gated_delta_op(y, conv_state, state, inputs, key_heads, value_heads, eps, isa,
                                 stream);
  });
}

// op −1: rms_norm(x = a, weight = b, eps) over the last axis; 0: a · sigmoid(a) · b;
// 1: a · sigmoid(b). Float32 only.
int mlxnk_pointwise(mlx_array* res, int op, mlx_array a, mlx_array b, float eps,
                    mlx_stream stream) {
  return mlxnk::guarded([&] { return mlxnk::pointwise_op(res, op, a, b, eps, stream); });
}

// sum = h + x and y = rms_norm(sum, weight = w, eps) over the last axis, float32.
int mlxnk_add_rms_norm(mlx_array* sum, mlx_array* y, mlx_array h, mlx_array x, mlx_array w,
                       float eps, mlx_stream stream) {
  return mlxnk::guarded([&] { return mlxnk::add_rms_norm_op(sum, y, h, x, w, eps, stream); });
}

// argmax(x, axis = −1) as uint32, float32 x.
int mlxnk_argmax(mlx_array* res, mlx_array x, int isa, mlx_stream stream) {
  return mlxnk::guarded([&] { return mlxnk::argmax_op(res, x, isa, stream); });
}

// scaled_dot_product_attention(q, k, v, scale, mask = causal ? "causal" : none), float32.
int mlxnk_attention(mlx_array* res, mlx_array q, mlx_array k, mlx_array v, float scale,
                    int causal, int isa, mlx_stream stream) {
  return mlxnk::guarded(
      [&] { return mlxnk::attention_op(res, q, k, v, scale, causal, isa, stream); });
}

// matmul(x, transpose(w)) for float32 x and a dense w [N, K] of any float type.
int mlxnk_dense_matmul(mlx_array* res, mlx_array x, mlx_array w, int isa, mlx_stream stream) {
  return mlxnk::guarded([&] { return mlxnk::dense_matmul(res, x, w, isa, stream); });
}

// fast::rope(x, dims, traditional = false, base, scale = 1, offset) with the frequencies given
// (MLX's exp(−i · ln(base) / (dims / 2))), float32.
int mlxnk_rope(mlx_array* res, mlx_array x, mlx_array freqs, int dims, int offset,
               mlx_stream stream) {
  return mlxnk::guarded([&] { return mlxnk::rope_op(res, x, freqs, dims, offset, stream); });
}

// The message of this thread's last error (valid until its next call).
const char* mlxnk_last_error(void) { return mlxnk::last_error.c_str(); }

// The ISA a request (0 default, 1 portable, 2 avx2, 3 neon) runs as on this machine.
int mlxnk_resolve_isa(int isa) { return static_cast<int>(mlxnk::isa_arg(isa)); }

// The number of threads the kernels use (the calling thread included).
int mlxnk_threads(void) { return mlxnk::pool_threads(); }

}  // extern "C"
