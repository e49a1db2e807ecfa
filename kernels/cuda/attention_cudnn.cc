// cuDNN fused flash attention through the backend API, libcudnn loaded at run
// time. See attention_cudnn.h for why; the graphs are documented at
// BuildForward / BuildBackward.
#include "kernels/cuda/attention_cudnn.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/log.h"
#include "kernels/cuda/attention_internal.cuh"

namespace llmt::kernels::cuda::cudnn {

std::string Unsupported(const AttnProblem& p) {
  if (p.hd != 64 && p.hd != 128) {
    return "head dim " + std::to_string(p.hd) + " (cuDNN attention is used for 64 and 128)";
  }
  // Older cuDNN backward engines need a padding mask when T % 128 != 0 (the
  // frontend adds one); this integration has none, so it keeps to whole tiles.
  if (p.T <= 0 || p.T % 128 != 0) {
    return "sequence length " + std::to_string(p.T) + " is not a multiple of 128";
  }
  if (p.NKV <= 0 || p.NH % p.NKV != 0) {
    return std::to_string(p.NH) + " query heads do not group over " + std::to_string(p.NKV) +
           " key/value heads";
  }
  return "";
}

}  // namespace llmt::kernels::cuda::cudnn

#if !defined(LLMT_NO_CUDNN_HEADERS)

#include <cudnn_graph.h>
#include <dlfcn.h>

namespace llmt::kernels::cuda {
namespace cudnn {
namespace {

// ---- the library ---------------------------------------------------------------------
// The entry points used, resolved with dlsym (decltype of the header's
// declarations keeps the signatures exact without linking libcudnn).
struct Api {
  void* lib = nullptr;
  std::string name;
  std::string error;
  size_t version = 0;
  decltype(&cudnnGetVersion) GetVersion = nullptr;
  decltype(&cudnnGetErrorString) GetErrorString = nullptr;
  decltype(&cudnnGetLastErrorString) GetLastErrorString = nullptr;
  decltype(&cudnnCreate) Create = nullptr;
  decltype(&cudnnSetStream) SetStream = nullptr;
  decltype(&cudnnBackendCreateDescriptor) CreateDescriptor = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) DestroyDescriptor = nullptr;
  decltype(&cudnnBackendSetAttribute) SetAttribute = nullptr;
  decltype(&cudnnBackendGetAttribute) GetAttribute = nullptr;
  decltype(&cudnnBackendFinalize) Finalize = nullptr;
  decltype(&cudnnBackendExecute) Execute = nullptr;
};

template <typename F>
bool Resolve(Api& api, F& fn, const char* symbol) {
  fn = reinterpret_cast<F>(dlsym(api.lib, symbol));
  if (fn == nullptr && api.error.empty()) {
    api.error = api.name + " has no symbol " + symbol + " (cuDNN 9 is needed)";
  }
  return fn != nullptr;
}

const Api& GetApi() {
  static const Api api = [] {
    Api a;
    const char* env = std::getenv("LLMT_CUDNN_LIB");
    a.name = env != nullptr && *env != '\0' ? env : "libcudnn.so.9";
    a.lib = dlopen(a.name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (a.lib == nullptr) {
      const char* e = dlerror();
      a.error = "cannot load " + a.name + ": " + (e != nullptr ? e : "unknown error") +
                " (put cuDNN 9's lib directory on LD_LIBRARY_PATH or set LLMT_CUDNN_LIB to "
                "the library's path)";
      return a;
    }
    Resolve(a, a.GetVersion, "cudnnGetVersion");
    Resolve(a, a.GetErrorString, "cudnnGetErrorString");
    Resolve(a, a.GetLastErrorString, "cudnnGetLastErrorString");
    Resolve(a, a.Create, "cudnnCreate");
    Resolve(a, a.SetStream, "cudnnSetStream");
    Resolve(a, a.CreateDescriptor, "cudnnBackendCreateDescriptor");
    Resolve(a, a.DestroyDescriptor, "cudnnBackendDestroyDescriptor");
    Resolve(a, a.SetAttribute, "cudnnBackendSetAttribute");
    Resolve(a, a.GetAttribute, "cudnnBackendGetAttribute");
    Resolve(a, a.Finalize, "cudnnBackendFinalize");
    Resolve(a, a.Execute, "cudnnBackendExecute");
    if (!a.error.empty()) return a;
    a.version = a.GetVersion();
    if (a.version < 90000) {
      a.error = a.name + " is cuDNN " + std::to_string(a.version) + "; cuDNN 9 is needed";
    }
    return a;
  }();
  return api;
}

// "CUDNN_STATUS_NOT_SUPPORTED (message)" with cuDNN's last error message.
std::string StatusText(cudnnStatus_t st) {
  const Api& api = GetApi();
  std::string s = api.GetErrorString(st);
  char buf[1024] = {0};
  api.GetLastErrorString(buf, sizeof(buf));
  if (buf[0] != '\0') s += std::string(" (") + buf + ")";
  return s;
}

// ---- descriptors -----------------------------------------------------------------------
// Owns one backend descriptor.
class Desc {
 public:
  Desc() = default;
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  ~Desc() {
    if (d_ != nullptr) GetApi().DestroyDescriptor(d_);
  }
  cudnnBackendDescriptor_t get() const { return d_; }
  cudnnBackendDescriptor_t* out() { return &d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims = std::array<int64_t, 4>;

// Unique ids of the tensors the caller binds to memory (the variant pack);
// virtual tensors are numbered from kFirstVirtual.
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kScale,
  kNegInf,
  kDO,
  kDQ,
  kDK,
  kDV,
  kSoftmaxSum,
  kDQAccum,
  kOne,
  kFirstVirtual = 100,
};

// Builds one operation graph's descriptors. Every call after the first
// failure is a no-op returning nullptr; error() names that failure.
class GraphBuilder {
 public:
  const std::string& error() const { return error_; }
  const std::vector<cudnnBackendDescriptor_t>& ops() const { return ops_; }
  // Moves every descriptor built (ops and tensors) to `keep`, which must
  // outlive any plan made from them.
  void Release(std::vector<std::unique_ptr<Desc>>* keep) {
    for (auto& d : owned_) keep->push_back(std::move(d));
    owned_.clear();
  }

  cudnnBackendDescriptor_t Tensor(const char* name, Dims dim, Dims stride, cudnnDataType_t type,
                                  int64_t uid, bool is_virtual, bool by_value = false) {
    cudnnBackendDescriptor_t t = New(CUDNN_BACKEND_TENSOR_DESCRIPTOR, name);
    const int64_t align = 16;
    Set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, name, "DATA_TYPE");
    Set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim.data(), name, "DIMENSIONS");
    Set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride.data(), name, "STRIDES");
    Set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, name, "UNIQUE_ID");
    Set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, name, "BYTE_ALIGNMENT");
    if (is_virtual) {
      const bool v = true;
      Set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, name, "IS_VIRTUAL");
    }
    if (by_value) {
      const bool v = true;
      Set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &v, name, "IS_BY_VALUE");
    }
    Finalize(t, name);
    return t;
  }
  // An intermediate tensor (never in memory).
  cudnnBackendDescriptor_t Virtual(const char* name, Dims dim, Dims stride, cudnnDataType_t type) {
    return Tensor(name, dim, stride, type, next_virtual_++, /*is_virtual=*/true);
  }
  // A float scalar passed by value (dims and strides all 1).
  cudnnBackendDescriptor_t Scalar(const char* name, int64_t uid) {
    return Tensor(name, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, uid, false, true);
  }

  // c = a b (batched over the first two dims, broadcast where one is smaller).
  void Matmul(const char* name, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
              cudnnBackendDescriptor_t c) {
    cudnnBackendDescriptor_t m = New(CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name, "MATMUL_COMP_TYPE");
    Finalize(m, name);
    cudnnBackendDescriptor_t op = New(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, name, "ADESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, name, "BDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, name, "CDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m, name, "DESC");
    AddOp(op, name);
  }

  // y = mode(x[, b[, t]]) in `prec`; axis >= 0 only for GEN_INDEX.
  void Pointwise(const char* name, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                 cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = New(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    Set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, name, "POINTWISE_MODE");
    Set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, name, "MATH_PREC");
    if (axis >= 0) Set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, name, "AXIS");
    Finalize(pw, name);
    cudnnBackendDescriptor_t op = New(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, name, "PW_DESCRIPTOR");
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, name, "XDESC");
    if (b != nullptr) SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, name, "BDESC");
    if (t != nullptr) SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, name, "TDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, name, "YDESC");
    AddOp(op, name);
  }
  // Binary and unary shorthands, computing in fp32.
  void Pw(const char* name, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
          cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y) {
    Pointwise(name, mode, CUDNN_DATA_FLOAT, x, b, nullptr, y);
  }

  // y = reduce(x) over the dims where y is 1 (or grouped: y's head dim a
  // divisor of x's).
  void Reduction(const char* name, cudnnReduceTensorOp_t op_type, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t r = New(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &op_type, name,
        "REDUCTION_OPERATOR");
    Set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name, "COMP_TYPE");
    Finalize(r, name);
    cudnnBackendDescriptor_t op = New(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, name, "XDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, name, "YDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r, name, "DESC");
    AddOp(op, name);
  }

  // y = x seen with other dims/strides (here: a transpose of the last two).
  void Reshape(const char* name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = New(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    SetDesc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, name, "XDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, name, "YDESC");
    AddOp(op, name);
  }

 private:
  cudnnBackendDescriptor_t New(cudnnBackendDescriptorType_t type, const char* what) {
    if (!error_.empty()) return nullptr;
    auto d = std::make_unique<Desc>();
    const cudnnStatus_t st = GetApi().CreateDescriptor(type, d->out());
    if (st != CUDNN_STATUS_SUCCESS) {
      Fail(std::string(what) + ": cudnnBackendCreateDescriptor(" + std::to_string(type) +
           ") failed: " + StatusText(st));
      return nullptr;
    }
    owned_.push_back(std::move(d));
    return owned_.back()->get();
  }
  void Set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t attr,
           cudnnBackendAttributeType_t type, int64_t n, const void* value, const char* what,
           const char* attr_name) {
    if (!error_.empty() || d == nullptr) return;
    const cudnnStatus_t st = GetApi().SetAttribute(d, attr, type, n, value);
    if (st != CUDNN_STATUS_SUCCESS) {
      Fail(std::string(what) + ": setting " + attr_name + " failed: " + StatusText(st));
    }
  }
  void SetDesc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t attr,
               cudnnBackendDescriptor_t value, const char* what, const char* attr_name) {
    Set(d, attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what, attr_name);
  }
  void Finalize(cudnnBackendDescriptor_t d, const char* what) {
    if (!error_.empty() || d == nullptr) return;
    const cudnnStatus_t st = GetApi().Finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) {
      Fail(std::string(what) + ": finalize failed: " + StatusText(st));
    }
  }
  void AddOp(cudnnBackendDescriptor_t op, const char* name) {
    Finalize(op, name);
    if (error_.empty()) ops_.push_back(op);
  }
  void Fail(std::string msg) {
    if (error_.empty()) error_ = "cuDNN attention graph: " + std::move(msg);
  }

  std::string error_;
  std::vector<std::unique_ptr<Desc>> owned_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_ = kFirstVirtual;
};

// Shapes and strides of the packed layout (attention.cuh): qkv rows of
// ld = (NH + 2 NKV) hd elements, out / dout rows of C = NH hd.
struct Layout {
  int64_t B, T, NH, NKV, hd, ld, C;
  explicit Layout(const AttnProblem& p)
      : B(p.B),
        T(p.T),
        NH(p.NH),
        NKV(p.NKV),
        hd(p.hd),
        ld(static_cast<int64_t>(p.NH + 2 * p.NKV) * p.hd),
        C(static_cast<int64_t>(p.NH) * p.hd) {}
  // [B, heads, T, hd] inside qkv (Q, K, V, and dQ, dK, dV in dqkv).
  Dims QkvDim(int64_t heads) const { return {B, heads, T, hd}; }
  Dims QkvStride() const { return {T * ld, hd, ld, 1}; }
  // The same, transposed to [B, heads, hd, T] (K^T, V^T).
  Dims QkvDimT(int64_t heads) const { return {B, heads, hd, T}; }
  Dims QkvStrideT() const { return {T * ld, hd, 1, ld}; }
  // out / dout [B, NH, T, hd].
  Dims ODim() const { return {B, NH, T, hd}; }
  Dims OStride() const { return {T * C, hd, C, 1}; }
  // Scores [B, NH, T, T] (virtual), row-major, and transposed strides.
  Dims SDim() const { return {B, NH, T, T}; }
  Dims SStride() const { return {NH * T * T, T * T, T, 1}; }
  Dims SStrideT() const { return {NH * T * T, T * T, 1, T}; }
  // Per-row statistics [B, NH, T, 1] (lse, softmax sums).
  Dims RowDim() const { return {B, NH, T, 1}; }
  Dims RowStride() const { return {NH * T, T, 1, 1}; }
  // Packed [B, NH, T, hd] (dQ accumulator, per-query-head dK/dV).
  Dims FullStride() const { return {NH * T * hd, T * hd, hd, 1}; }
};

constexpr cudnnDataType_t kBf16 = CUDNN_DATA_BFLOAT16;
constexpr cudnnDataType_t kF32 = CUDNN_DATA_FLOAT;

// The causal mask on scores s: y = (row >= col) ? s : -inf (the frontend's
// diagonal-band node with right bound 0, top-left aligned).
cudnnBackendDescriptor_t CausalMask(GraphBuilder& g, const Layout& L, cudnnBackendDescriptor_t s,
                                    cudnnBackendDescriptor_t neg_inf) {
  auto row = g.Virtual("row_index", L.SDim(), L.SStride(), CUDNN_DATA_INT32);
  g.Pointwise("gen_row_index", CUDNN_POINTWISE_GEN_INDEX, kF32, s, nullptr, nullptr, row, 2);
  auto col = g.Virtual("col_index", L.SDim(), L.SStride(), CUDNN_DATA_INT32);
  g.Pointwise("gen_col_index", CUDNN_POINTWISE_GEN_INDEX, kF32, s, nullptr, nullptr, col, 3);
  auto keep = g.Virtual("row_ge_col", L.SDim(), L.SStride(), CUDNN_DATA_BOOLEAN);
  g.Pointwise("row_ge_col", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr, keep);
  auto masked = g.Virtual("masked_scores", L.SDim(), L.SStride(), kF32);
  g.Pointwise("causal_select", CUDNN_POINTWISE_BINARY_SELECT, kF32, s, neg_inf, keep, masked);
  return masked;
}

// scale * Q K^T [B, NH, T, T] (fp32, virtual): both graphs start so.
cudnnBackendDescriptor_t ScaledScores(GraphBuilder& g, const Layout& L,
                                      cudnnBackendDescriptor_t q, cudnnBackendDescriptor_t kt,
                                      cudnnBackendDescriptor_t scale) {
  auto s = g.Virtual("S", L.SDim(), L.SStride(), kF32);
  g.Matmul("matmul Q K^T", q, kt, s);
  auto ss = g.Virtual("S*scale", L.SDim(), L.SStride(), kF32);
  g.Pw("mul S scale", CUDNN_POINTWISE_MUL, s, scale, ss);
  return ss;
}

// Forward: S = scale * Q K^T, causal mask, softmax with its statistics
// (max, sum of exponentials, lse = max + log(sum)), O = P V with P in bf16.
void BuildForward(GraphBuilder& g, const Layout& L) {
  auto q = g.Tensor("Q", L.QkvDim(L.NH), L.QkvStride(), kBf16, kQ, false);
  auto kt = g.Tensor("K^T", L.QkvDimT(L.NKV), L.QkvStrideT(), kBf16, kK, false);
  auto v = g.Tensor("V", L.QkvDim(L.NKV), L.QkvStride(), kBf16, kV, false);
  auto o = g.Tensor("O", L.ODim(), L.OStride(), kBf16, kO, false);
  auto stats = g.Tensor("lse", L.RowDim(), L.RowStride(), kF32, kStats, false);
  auto scale = g.Scalar("scale", kScale);
  auto neg_inf = g.Scalar("-inf", kNegInf);

  auto masked = CausalMask(g, L, ScaledScores(g, L, q, kt, scale), neg_inf);
  auto max = g.Virtual("row_max", L.RowDim(), L.RowStride(), kF32);
  g.Reduction("softmax max", CUDNN_REDUCE_TENSOR_MAX, masked, max);
  auto sub = g.Virtual("S-max", L.SDim(), L.SStride(), kF32);
  g.Pw("softmax sub", CUDNN_POINTWISE_SUB, masked, max, sub);
  auto e = g.Virtual("exp(S-max)", L.SDim(), L.SStride(), kF32);
  g.Pw("softmax exp", CUDNN_POINTWISE_EXP, sub, nullptr, e);
  auto sum = g.Virtual("row_sum", L.RowDim(), L.RowStride(), kF32);
  g.Reduction("softmax sum", CUDNN_REDUCE_TENSOR_ADD, e, sum);
  auto log = g.Virtual("log(sum)", L.RowDim(), L.RowStride(), kF32);
  g.Pw("softmax log", CUDNN_POINTWISE_LOG, sum, nullptr, log);
  g.Pw("softmax stats", CUDNN_POINTWISE_ADD, max, log, stats);
  auto p = g.Virtual("P", L.SDim(), L.SStride(), kBf16);
  g.Pw("softmax div", CUDNN_POINTWISE_DIV, e, sum, p);
  g.Matmul("bmm2 P V", p, v, o);
}

// dX for a key/value-head tensor from a per-query-head product: with GQA the
// product is per query head and summed over each group by a reduction.
void KvHeadProduct(GraphBuilder& g, const Layout& L, const char* name,
                   cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t out) {
  if (L.NH == L.NKV) {
    g.Matmul(name, a, b, out);
    return;
  }
  auto full = g.Virtual(name, L.ODim(), L.FullStride(), kBf16);
  g.Matmul(name, a, b, full);
  g.Reduction(name, CUDNN_REDUCE_TENSOR_ADD, full, out);
}

// Backward (FlashAttention-2's, as cuDNN's frontend composes it):
//   softmax_sum = rowsum(dO * O)                     (in memory: the Dsum scratch)
//   P  = exp(scale * Q K^T - lse), causal            (recomputed)
//   dV = P^T dO
//   dS = scale * P * (dO V^T - softmax_sum)
//   dK = dS^T Q,  dQ = dS K (accumulated in fp32 memory, then converted; or,
//                             deterministic, written directly)
void BuildBackward(GraphBuilder& g, const Layout& L, bool deterministic) {
  auto q = g.Tensor("Q", L.QkvDim(L.NH), L.QkvStride(), kBf16, kQ, false);
  auto kt = g.Tensor("K^T", L.QkvDimT(L.NKV), L.QkvStrideT(), kBf16, kK, false);
  auto vt = g.Tensor("V^T", L.QkvDimT(L.NKV), L.QkvStrideT(), kBf16, kV, false);
  auto o = g.Tensor("O", L.ODim(), L.OStride(), kBf16, kO, false);
  auto dout = g.Tensor("dO", L.ODim(), L.OStride(), kBf16, kDO, false);
  auto stats = g.Tensor("lse", L.RowDim(), L.RowStride(), kF32, kStats, false);
  auto dq = g.Tensor("dQ", L.QkvDim(L.NH), L.QkvStride(), kBf16, kDQ, false);
  auto dk = g.Tensor("dK", L.QkvDim(L.NKV), L.QkvStride(), kBf16, kDK, false);
  auto dv = g.Tensor("dV", L.QkvDim(L.NKV), L.QkvStride(), kBf16, kDV, false);
  auto scale = g.Scalar("scale", kScale);
  auto neg_inf = g.Scalar("-inf", kNegInf);
  auto one = g.Scalar("one", kOne);

  // softmax_sum. The product's strides are the frontend's (immaterial: virtual).
  auto dout_o = g.Virtual("dO*O", L.ODim(), {L.NH * L.T * L.hd, L.T * L.hd, L.NH * L.hd, 1}, kF32);
  g.Pw("mul dO O", CUDNN_POINTWISE_MUL, dout, o, dout_o);
  auto rsum = g.Virtual("rowsum(dO*O)", L.RowDim(), L.RowStride(), kF32);
  g.Reduction("reduce dO O", CUDNN_REDUCE_TENSOR_ADD, dout_o, rsum);
  auto softmax_sum = g.Tensor("softmax_sum", L.RowDim(), L.RowStride(), kF32, kSoftmaxSum, false);
  g.Pw("softmax_sum", CUDNN_POINTWISE_MUL, rsum, one, softmax_sum);

  // P.
  auto sm = g.Virtual("S-lse", L.SDim(), L.SStride(), kF32);
  g.Pw("sub S lse", CUDNN_POINTWISE_SUB, ScaledScores(g, L, q, kt, scale), stats, sm);
  auto masked = CausalMask(g, L, sm, neg_inf);
  auto p = g.Virtual("P", L.SDim(), L.SStride(), kF32);
  g.Pw("exp", CUDNN_POINTWISE_EXP, masked, nullptr, p);

  // dV = P^T dO.
  auto pt = g.Virtual("P^T", L.SDim(), L.SStrideT(), kBf16);
  g.Reshape("reshape P", p, pt);
  KvHeadProduct(g, L, "matmul P^T dO", pt, dout, dv);

  // dS.
  auto dp = g.Virtual("dP", L.SDim(), L.SStride(), kF32);
  g.Matmul("matmul dO V^T", dout, vt, dp);
  auto dps = g.Virtual("dP-softmax_sum", L.SDim(), L.SStride(), kF32);
  g.Pw("sub dP softmax_sum", CUDNN_POINTWISE_SUB, dp, softmax_sum, dps);
  auto ds = g.Virtual("dP*P", L.SDim(), L.SStride(), kF32);
  g.Pw("mul dP P", CUDNN_POINTWISE_MUL, dps, p, ds);
  auto dss = g.Virtual("dS", L.SDim(), L.SStride(), kF32);
  g.Pw("mul dS scale", CUDNN_POINTWISE_MUL, ds, scale, dss);

  // dK = dS^T Q.
  auto dst = g.Virtual("dS^T", L.SDim(), L.SStrideT(), kBf16);
  g.Reshape("reshape dS", dss, dst);
  KvHeadProduct(g, L, "matmul dS^T Q", dst, q, dk);

  // dQ = dS K, into an fp32 accumulator in memory, then to bf16.
  auto k = g.Virtual("K", L.QkvDim(L.NKV), L.QkvStride(), kF32);
  g.Reshape("reshape K", kt, k);
  if (deterministic) {
    g.Matmul("matmul dS K", dss, k, dq);
    return;
  }
  auto dq_acc = g.Tensor("dQ_accum", L.ODim(), L.FullStride(), kF32, kDQAccum, false);
  g.Matmul("matmul dS K", dss, k, dq_acc);
  g.Pw("dQ", CUDNN_POINTWISE_IDENTITY, dq_acc, nullptr, dq);
}

void Build(GraphBuilder& g, const AttnProblem& p) {
  const Layout L(p);
  if (p.backward) {
    BuildBackward(g, L, p.deterministic);
  } else {
    BuildForward(g, L);
  }
}

// ---- plans and execution ---------------------------------------------------------------
// An executable plan for one problem shape, with the descriptors it was made
// from.
struct Plan {
  std::vector<std::unique_ptr<Desc>> keep;
  Desc graph;
  std::unique_ptr<Desc> plan;
  std::vector<std::unique_ptr<Desc>> configs;
  int64_t workspace = 0;
  std::string error;  // why there is no plan (then the caller falls back)
};

// One handle and one workspace per device.
struct DeviceState {
  cudnnHandle_t handle = nullptr;
  std::string handle_error;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<std::tuple<bool, bool, int, int, int, int, int>, std::unique_ptr<Plan>> plans;
};

std::mutex g_mu;
std::atomic<int64_t> g_executions{0};
std::map<int, DeviceState>& Devices() {
  static auto* d = new std::map<int, DeviceState>();
  return *d;
}

// "forward (B 64, T 1024, heads 12/12, hd 64)".
std::string Name(const AttnProblem& p) {
  return std::string(p.backward ? "backward" : "forward") + " (B " + std::to_string(p.B) +
         ", T " + std::to_string(p.T) + ", heads " + std::to_string(p.NH) + "/" +
         std::to_string(p.NKV) + ", hd " + std::to_string(p.hd) +
         (p.backward && p.deterministic ? ", deterministic)" : ")");
}

// Engine configs for the finalized graph from heuristics `mode` (created
// into plan->configs, which owns them). Returns "" or what failed.
std::string Configs(Plan* plan, cudnnBackendHeurMode_t mode,
                    std::vector<cudnnBackendDescriptor_t>* cfgs) {
  const Api& api = GetApi();
  Desc heur;
  auto failed = [](const char* what, cudnnStatus_t st) {
    return std::string(what) + " failed: " + StatusText(st);
  };
  cudnnStatus_t st = api.CreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, heur.out());
  if (st != CUDNN_STATUS_SUCCESS) return failed("creating the heuristics", st);
  cudnnBackendDescriptor_t graph = plan->graph.get();
  st = api.SetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                        CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
  if (st != CUDNN_STATUS_SUCCESS) return failed("setting the heuristics' graph", st);
  st = api.SetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  if (st != CUDNN_STATUS_SUCCESS) return failed("setting the heuristics' mode", st);
  st = api.Finalize(heur.get());
  if (st != CUDNN_STATUS_SUCCESS) return failed("finalizing the heuristics", st);
  int64_t count = 0;
  st = api.GetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                        0, &count, nullptr);
  if (st != CUDNN_STATUS_SUCCESS) return failed("counting the engine configs", st);
  const size_t first = plan->configs.size();
  for (int64_t i = 0; i < count; ++i) {
    plan->configs.push_back(std::make_unique<Desc>());
    st = api.CreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, plan->configs.back()->out());
    if (st != CUDNN_STATUS_SUCCESS) return failed("creating an engine config", st);
  }
  std::vector<cudnnBackendDescriptor_t> got_cfgs;
  for (size_t i = first; i < plan->configs.size(); ++i) got_cfgs.push_back(plan->configs[i]->get());
  int64_t got = 0;
  if (count > 0) {
    st = api.GetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                          CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, got_cfgs.data());
    if (st != CUDNN_STATUS_SUCCESS) return failed("reading the engine configs", st);
  }
  got_cfgs.resize(static_cast<size_t>(std::max<int64_t>(0, std::min(got, count))));
  *cfgs = std::move(got_cfgs);
  return "";
}

// Builds the problem's graph and an executable plan from the first engine
// config (heuristics mode A, then the fallback list) that finalizes.
std::unique_ptr<Plan> MakePlan(cudnnHandle_t handle, const AttnProblem& p) {
  auto plan = std::make_unique<Plan>();
  const Api& api = GetApi();
  GraphBuilder g;
  Build(g, p);
  if (!g.error().empty()) {
    plan->error = g.error();
    return plan;
  }
  g.Release(&plan->keep);
  const std::vector<cudnnBackendDescriptor_t>& ops = g.ops();
  const std::string name = "cuDNN attention " + Name(p);
  auto fail = [&](const std::string& what, cudnnStatus_t st) {
    plan->error = name + ": " + what + " failed: " + StatusText(st);
    return std::move(plan);
  };
  cudnnStatus_t st = api.CreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR,
                                          plan->graph.out());
  if (st != CUDNN_STATUS_SUCCESS) return fail("creating the operation graph", st);
  st = api.SetAttribute(plan->graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS,
                        CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()),
                        ops.data());
  if (st != CUDNN_STATUS_SUCCESS) return fail("setting the graph's operations", st);
  st = api.SetAttribute(plan->graph.get(), CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE,
                        1, &handle);
  if (st != CUDNN_STATUS_SUCCESS) return fail("setting the graph's handle", st);
  st = api.Finalize(plan->graph.get());
  if (st != CUDNN_STATUS_SUCCESS) return fail("finalizing the operation graph", st);

  std::string tried;
  for (const auto& [mode, mode_name] :
       {std::pair{CUDNN_HEUR_MODE_A, "A"}, std::pair{CUDNN_HEUR_MODE_FALLBACK, "fallback"}}) {
    std::vector<cudnnBackendDescriptor_t> cfgs;
    const std::string err = Configs(plan.get(), mode, &cfgs);
    if (!err.empty()) {
      tried += std::string(" [heuristics ") + mode_name + ": " + err + "]";
      continue;
    }
    if (cfgs.empty()) tried += std::string(" [heuristics ") + mode_name + ": no engine configs]";
    for (size_t i = 0; i < cfgs.size(); ++i) {
      auto candidate = std::make_unique<Desc>();
      st = api.CreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, candidate->out());
      cudnnBackendDescriptor_t cfg = cfgs[i];
      if (st == CUDNN_STATUS_SUCCESS) {
        st = api.SetAttribute(candidate->get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                              CUDNN_TYPE_HANDLE, 1, &handle);
      }
      if (st == CUDNN_STATUS_SUCCESS) {
        st = api.SetAttribute(candidate->get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg);
      }
      if (st == CUDNN_STATUS_SUCCESS) st = api.Finalize(candidate->get());
      if (st != CUDNN_STATUS_SUCCESS) {
        tried += std::string(" [heuristics ") + mode_name + " config " + std::to_string(i) +
                 ": " + StatusText(st) + "]";
        continue;
      }
      int64_t ws = 0, n = 0;
      st = api.GetAttribute(candidate->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                            CUDNN_TYPE_INT64, 1, &n, &ws);
      if (st != CUDNN_STATUS_SUCCESS) return fail("reading the plan's workspace size", st);
      plan->plan = std::move(candidate);
      plan->workspace = ws;
      LLMT_LOG(Info) << name << ": heuristics " << mode_name << " config " << i << " of "
                     << cfgs.size() << ", workspace " << ws << " bytes";
      return plan;
    }
  }
  plan->error = name + ": no engine config made a plan:" + tried;
  return plan;
}

// The device's state with its handle (created on first use), or nullptr and
// *why.
DeviceState* Device(std::string* why) {
  int dev = 0;
  LLMT_CUDA_CHECK(cudaGetDevice(&dev));
  DeviceState& s = Devices()[dev];
  if (s.handle == nullptr && s.handle_error.empty()) {
    const cudnnStatus_t st = GetApi().Create(&s.handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      s.handle = nullptr;
      s.handle_error = "cudnnCreate on device " + std::to_string(dev) + " failed: " +
                       StatusText(st);
    }
  }
  if (s.handle == nullptr) {
    *why = s.handle_error;
    return nullptr;
  }
  return &s;
}

// The problem's plan (built on first use), or nullptr and *why.
Plan* GetPlan(DeviceState& s, const AttnProblem& p, std::string* why) {
  const auto key = std::make_tuple(p.backward, p.deterministic, p.B, p.T, p.NH, p.NKV, p.hd);
  auto it = s.plans.find(key);
  if (it == s.plans.end()) it = s.plans.emplace(key, MakePlan(s.handle, p)).first;
  if (!it->second->error.empty()) {
    *why = it->second->error;
    return nullptr;
  }
  return it->second.get();
}

// Grows the device's workspace (never shrinks it) to at least `bytes` for
// its plans. Returns "" or why the allocation failed (then there is none).
std::string GrowWorkspace(DeviceState& s, size_t bytes) {
  if (bytes <= s.workspace_bytes) return "";
  // The old buffer may still be in use by queued work on any stream.
  if (s.workspace != nullptr) {
    LLMT_CUDA_CHECK(cudaDeviceSynchronize());
    LLMT_CUDA_CHECK(cudaFree(s.workspace));
  }
  s.workspace = nullptr;
  s.workspace_bytes = 0;
  const cudaError_t err = cudaMalloc(&s.workspace, bytes);
  if (err != cudaSuccess) {
    s.workspace = nullptr;
    (void)cudaGetLastError();  // not sticky: clear it for the caller
    return "cuDNN attention workspace: cannot allocate " + std::to_string(bytes) +
           " bytes: " + CudaErrorString(err);
  }
  s.workspace_bytes = bytes;
  LLMT_LOG(Info) << "cuDNN attention workspace: " << (bytes >> 20) << " MiB";
  return "";
}
// The same inside a call, where failing is fatal.
char* Workspace(DeviceState& s, size_t bytes) {
  if (std::string e = GrowWorkspace(s, bytes); !e.empty()) Fatal(e);
  return static_cast<char*>(s.workspace);
}

// A call's workspace: the plan's, then (the non-deterministic backward) the
// fp32 dQ accumulator [B, NH, T, hd] at AccumulatorOffset.
size_t AccumulatorOffset(const Plan& plan) {
  return (static_cast<size_t>(plan.workspace) + 255) / 256 * 256;
}
size_t WorkspaceBytes(const Plan& plan, const AttnProblem& p) {
  const size_t acc = p.backward && !p.deterministic
                         ? static_cast<size_t>(p.B) * p.NH * p.T * p.hd * sizeof(float)
                         : 0;
  return std::max<size_t>(AccumulatorOffset(plan) + acc, 1);
}

// Binds the memory and runs the plan on `stream`; fatal on failure (a
// planned graph that fails to execute leaves the step unusable).
void Execute(DeviceState& s, Plan& plan, const std::vector<int64_t>& uids,
             const std::vector<void*>& ptrs, void* workspace, cudaStream_t stream,
             const char* what) {
  const Api& api = GetApi();
  auto check = [&](cudnnStatus_t st, const char* step) {
    if (st != CUDNN_STATUS_SUCCESS) {
      Fatal(std::string("cuDNN attention ") + what + ": " + step + " failed: " + StatusText(st));
    }
  };
  check(api.SetStream(s.handle, stream), "cudnnSetStream");
  Desc pack;
  check(api.CreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, pack.out()),
        "creating the variant pack");
  check(api.SetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                         static_cast<int64_t>(uids.size()), uids.data()),
        "setting the variant pack's ids");
  check(api.SetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                         static_cast<int64_t>(ptrs.size()), ptrs.data()),
        "setting the variant pack's pointers");
  check(api.SetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                         &workspace),
        "setting the variant pack's workspace");
  check(api.Finalize(pack.get()), "finalizing the variant pack");
  check(api.Execute(s.handle, plan.plan->get(), pack.get()), "cudnnBackendExecute");
  g_executions.fetch_add(1);
  LLMT_CUDA_CHECK_LAUNCH((std::string("cuDNN attention ") + what).c_str(), stream);
}

// The mask's fill value: -inf, or the lowest float before cuDNN 9.10 (what
// the frontend passes to each version).
float NegInf() {
  return GetApi().version < 91000 ? std::numeric_limits<float>::lowest()
                                  : -std::numeric_limits<float>::infinity();
}

AttnProblem ProblemOf(const internal::AttnDims& d, bool backward, bool deterministic) {
  return AttnProblem{d.B, d.T, d.NH, d.NKV, d.hd, backward, deterministic};
}

// With g_mu held: p's plan (built on first use) and its device's state, or
// nullptr and *why when cuDNN cannot run p here.
Plan* Planned(const AttnProblem& p, DeviceState** state, std::string* why) {
  if (!LoadError().empty()) return *why = LoadError(), nullptr;
  if (std::string u = Unsupported(p); !u.empty()) return *why = u, nullptr;
  *state = Device(why);
  return *state == nullptr ? nullptr : GetPlan(**state, p, why);
}

// cuDNN's tensors are declared 16-byte aligned.
bool Aligned16(const void* a, const void* b, const void* c = nullptr, const void* e = nullptr) {
  for (const void* x : {a, b, c, e}) {
    if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  }
  return true;
}

}  // namespace

const std::string& LoadError() { return GetApi().error; }
int64_t Executions() { return g_executions.load(); }

std::string Describe() {
  const Api& api = GetApi();
  if (!api.error.empty()) return api.error;
  const size_t v = api.version;
  return "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100) + " (" + api.name + ")";
}

std::string CheckGraphDescriptors(const AttnProblem& p, int* n_ops) {
  if (!LoadError().empty()) return LoadError();
  GraphBuilder g;
  Build(g, p);
  if (n_ops != nullptr) *n_ops = static_cast<int>(g.ops().size());
  if (!g.error().empty()) return g.error();
  // The operation graph without a handle (cuDNN >= 9.8 allows it; this
  // checks that the operations connect: no dangling or doubly produced
  // tensor). Engines, and so whether a fused kernel takes the graph, are
  // known only on a GPU.
  if (GetApi().version < 90800) return "";
  const Api& api = GetApi();
  Desc graph;
  cudnnStatus_t st = api.CreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, graph.out());
  if (st == CUDNN_STATUS_SUCCESS) {
    st = api.SetAttribute(graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS,
                          CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(g.ops().size()),
                          g.ops().data());
  }
  if (st == CUDNN_STATUS_SUCCESS) st = api.Finalize(graph.get());
  if (st != CUDNN_STATUS_SUCCESS) {
    return "cuDNN attention graph: the operation graph failed: " + StatusText(st);
  }
  return "";
}

}  // namespace cudnn

namespace internal {

bool CudnnFlashForward(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                       cudaStream_t stream, std::string* why) {
  using namespace cudnn;  // NOLINT: this file's own namespace
  if (!Aligned16(out, qkv)) return *why = "qkv/out not 16-byte aligned", false;
  const AttnProblem p = ProblemOf(d, false, false);
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState* s = nullptr;
  Plan* plan = Planned(p, &s, why);
  if (plan == nullptr) return false;
  char* ws = Workspace(*s, WorkspaceBytes(*plan, p));
  float scale = d.scale, neg_inf = NegInf();
  const int64_t kv = static_cast<int64_t>(d.NKV) * d.hd;
  bf16* q = const_cast<bf16*>(qkv);
  const std::vector<int64_t> uids = {kQ, kK, kV, kO, kStats, kScale, kNegInf};
  const std::vector<void*> ptrs = {q, q + d.C, q + d.C + kv, out, lse, &scale, &neg_inf};
  Execute(*s, *plan, uids, ptrs, ws, stream, "forward");
  return true;
}

size_t CudnnPrepare(const AttnDims& d, bool fwd, bool bwd, bool deterministic,
                    std::string* error, std::string* why_not) {
  using namespace cudnn;  // NOLINT: this file's own namespace
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState* s = nullptr;
  size_t bytes = 0;
  for (const auto& [wanted, p] : {std::pair{fwd, ProblemOf(d, false, false)},
                                  std::pair{bwd, ProblemOf(d, true, deterministic)}}) {
    std::string why;
    if (Plan* plan = wanted ? Planned(p, &s, &why) : nullptr; plan != nullptr) {
      bytes = std::max(WorkspaceBytes(*plan, p), bytes);
    } else if (wanted && why_not->empty()) {
      *why_not = why;
    }
  }
  if (bytes == 0) return 0;
  *error = GrowWorkspace(*s, bytes);
  return error->empty() ? s->workspace_bytes : 0;
}

bool CudnnFlashBackward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, float* Dsum, const AttnDims& d, bool deterministic,
                        cudaStream_t stream, std::string* why) {
  using namespace cudnn;  // NOLINT: this file's own namespace
  if (!Aligned16(dqkv, dout, qkv, out)) {
    return *why = "qkv/dqkv/out/dout not 16-byte aligned", false;
  }
  const AttnProblem p = ProblemOf(d, true, deterministic);
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState* s = nullptr;
  Plan* plan = Planned(p, &s, why);
  if (plan == nullptr) return false;
  const size_t bytes = WorkspaceBytes(*plan, p);
  char* ws = Workspace(*s, bytes);
  float scale = d.scale, neg_inf = NegInf(), one = 1.f;
  const int64_t kv = static_cast<int64_t>(d.NKV) * d.hd;
  bf16* q = const_cast<bf16*>(qkv);
  std::vector<int64_t> uids = {kQ, kK,  kV,  kO,          kDO,    kStats,  kDQ,
                               kDK, kDV, kSoftmaxSum, kScale, kNegInf, kOne};
  std::vector<void*> ptrs = {q,
                             q + d.C,
                             q + d.C + kv,
                             const_cast<bf16*>(out),
                             const_cast<bf16*>(dout),
                             const_cast<float*>(lse),
                             dqkv,
                             dqkv + d.C,
                             dqkv + d.C + kv,
                             Dsum,
                             &scale,
                             &neg_inf,
                             &one};
  if (!deterministic) {
    char* acc = ws + AccumulatorOffset(*plan);
    // Before cuDNN 9.6 the accumulator must start at zero (the frontend
    // cleared it); later versions clear it themselves.
    if (GetApi().version < 90600) {
      LLMT_CUDA_CHECK(cudaMemsetAsync(acc, 0, bytes - AccumulatorOffset(*plan), stream));
    }
    uids.push_back(kDQAccum);
    ptrs.push_back(acc);
  }
  Execute(*s, *plan, uids, ptrs, ws, stream, "backward");
  return true;
}

}  // namespace internal
}  // namespace llmt::kernels::cuda

#else  // LLMT_NO_CUDNN_HEADERS: built without cuDNN's headers.

namespace llmt::kernels::cuda {
namespace cudnn {

const std::string& LoadError() {
  static const std::string e = "llmt was built without cuDNN's headers (cudnn_graph.h)";
  return e;
}
std::string Describe() { return LoadError(); }
std::string CheckGraphDescriptors(const AttnProblem&, int*) { return LoadError(); }
int64_t Executions() { return 0; }

}  // namespace cudnn

namespace internal {

bool CudnnFlashForward(bf16*, float*, const bf16*, const AttnDims&, cudaStream_t,
                       std::string* why) {
  *why = cudnn::LoadError();
  return false;
}
size_t CudnnPrepare(const AttnDims&, bool, bool, bool, std::string*, std::string* why_not) {
  *why_not = cudnn::LoadError();
  return 0;
}

bool CudnnFlashBackward(bf16*, const bf16*, const bf16*, const bf16*, const float*, float*,
                        const AttnDims&, bool, cudaStream_t, std::string* why) {
  *why = cudnn::LoadError();
  return false;
}

}  // namespace internal
}  // namespace llmt::kernels::cuda

#endif  // LLMT_NO_CUDNN_HEADERS
