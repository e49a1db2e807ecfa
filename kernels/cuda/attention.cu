// Flash attention, SIMT implementation (fp32 arithmetic for fp32 and bf16
// storage), the dispatch between it and the tensor-core kernels, and RoPE.
//
// Work decomposition of the SIMT kernels. A block of 256 threads owns 64 rows
// (query rows in the forward and dQ kernels, key rows in the dK/dV kernel);
// each row is owned by a group of kG = 4 consecutive threads, thread `sub` of
// the group holding head dimensions sub, sub + 4, sub + 8, ... in registers
// (interleaved so that the 4 threads read consecutive shared-memory words).
// A dot product over the head dimension is 1/4 of the dims per thread plus
// two xor-shuffles within the group. The other operand streams through
// shared memory in tiles of 32 rows converted to fp32. All threads of a block
// run the same loops (masking is done on values, never by skipping shuffles).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>

#include "common/log.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/device_util.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::AttnDims;
using internal::CeilDiv;
using internal::FromF;
using internal::GridFor;
using internal::ToF;

constexpr int kG = 4;      // threads per row
constexpr int kRows = 64;  // rows owned by a block
constexpr int kTile = 32;  // streamed rows per shared-memory tile
constexpr int kSimtThreads = kRows * kG;
static_assert(kRows % kTile == 0, "query tiles must align with key blocks");

AttentionImpl g_impl = AttentionImpl::kAuto;

// LLMT_ATTN_BWD (see attention.cuh): a comma-separated list of variant
// names; unset, "" or "auto" = auto, "own"/"default" = the own default
// kernels. Fatal on anything else, so an A/B run cannot silently measure the
// default under a misspelt name.
AttentionBackwardVariant ParseBackwardVariant(const char* env) {
  AttentionBackwardVariant v;
  const std::string s(env == nullptr ? "" : env);
  if (s.empty() || s == "auto") {
    v.cudnn_auto = true;
    return v;
  }
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t end = std::min(s.find(',', pos), s.size());
    const std::string name = s.substr(pos, end - pos);
    if (name == "dq64") {
      v.dq64 = true;
    } else if (name == "dkdv8") {
      v.dkdv8 = true;
    } else if (name == "ds") {
      v.ds = true;
    } else if (name == "wgmma") {
      v.wgmma = true;
    } else if (name == "wgmma-ss") {
      v.wgmma = v.wgmma_ss = true;
    } else if (name == "wgmma-fused") {
      v.wgmma = v.wgmma_fused = true;
    } else if (name == "wgmma-fused-2wg") {
      v.wgmma = v.wgmma_fused = v.wgmma_fused_2wg = true;
    } else if (name == "cudnn") {
      v.cudnn = true;
    } else if (name == "cudnn-det") {
      v.cudnn = v.cudnn_det = true;
    } else if (name == "auto") {
      v.cudnn_auto = true;
    } else if (!name.empty() && name != "default" && name != "own") {
      Fatal("LLMT_ATTN_BWD: unknown variant '" + name +
            "' (expected a comma-separated list of dq64, dkdv8, ds, wgmma, wgmma-ss, wgmma-fused, "
            "wgmma-fused-2wg, cudnn, cudnn-det, auto, or own)");
    }
    pos = end + 1;
  }
  return v;
}

// Read once, on the first backward or Get/Set call.
AttentionBackwardVariant& BackwardVariant() {
  static AttentionBackwardVariant v = [] {
    const char* env = std::getenv("LLMT_ATTN_BWD");
    const AttentionBackwardVariant parsed = ParseBackwardVariant(env);  // fatal if unknown
    if (env != nullptr && *env != '\0' && std::string(env) != "auto") {
      LLMT_LOG(Info) << "cuda attention backward variant: " << env << " (LLMT_ATTN_BWD)";
    }
    return parsed;
  }();
  return v;
}

// LLMT_ATTN_FWD (see attention.cuh), read once on first use.
AttentionForwardVariant& ForwardVariant() {
  static AttentionForwardVariant v = [] {
    const char* env = std::getenv("LLMT_ATTN_FWD");
    const std::string s = env == nullptr ? "" : env;
    if (s.empty() || s == "auto") return AttentionForwardVariant::kAuto;
    static const std::pair<const char*, AttentionForwardVariant> kNames[] = {
        {"own", AttentionForwardVariant::kDefault},
        {"default", AttentionForwardVariant::kDefault},
        {"m64", AttentionForwardVariant::kM64},
        {"m64n128", AttentionForwardVariant::kM64N128},
        {"wgmma", AttentionForwardVariant::kWgmma},
        {"wgmma-pipe", AttentionForwardVariant::kWgmmaPipe},
        {"wgmma-2wg", AttentionForwardVariant::kWgmma2Wg},
        {"wgmma-pipe-2wg", AttentionForwardVariant::kWgmmaPipe2Wg},
        {"cudnn", AttentionForwardVariant::kCudnn}};
    for (const auto& [name, variant] : kNames) {
      if (s == name) {
        LLMT_LOG(Info) << "cuda attention forward variant: " << s << " (LLMT_ATTN_FWD)";
        return variant;
      }
    }
    Fatal("LLMT_ATTN_FWD: unknown variant '" + s +
          "' (expected m64, m64n128, wgmma, wgmma-pipe, wgmma-2wg, wgmma-pipe-2wg, cudnn, auto, "
          "or own)");
  }();
  return v;
}

bool IsWgmma(AttentionForwardVariant v) {
  return v == AttentionForwardVariant::kWgmma || v == AttentionForwardVariant::kWgmmaPipe ||
         v == AttentionForwardVariant::kWgmma2Wg || v == AttentionForwardVariant::kWgmmaPipe2Wg;
}

// Whether a requested wgmma variant can run here; warns once per process
// when it cannot (then the mma kernels run).
bool WgmmaUsable() {
  if (internal::WgmmaAvailable()) return true;
  static bool warned = false;
  if (!warned) {
    warned = true;
    LLMT_LOG(Warning) << "cuda attention: the wgmma kernels need a compute-capability-9.0 "
                         "device (and a passing self-check); using the mma kernels";
  }
  return false;
}

// cuDNN attention did not run: says so once per distinct reason (the own
// kernels run instead) -- a warning when cuDNN was asked for by name, an info
// line under auto, where the own kernels are the expected fallback.
void NoteCudnnFallback(const char* what, const std::string& why, bool requested) {
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mu);
  if (seen.insert(std::string(what) + ": " + why).second) {
    if (requested) {
      LLMT_LOG(Warning) << "cuda attention: cuDNN " << what << " not used: " << why
                        << "; running the own kernels";
    } else {
      LLMT_LOG(Info) << "cuda attention: cuDNN " << what << " not used (auto): " << why
                     << "; running the own kernels";
    }
  }
}

// Whether auto may still pick cuDNN: PrepareAttention turns it off for the
// process when cuDNN's workspace cannot be allocated.
bool& CudnnAutoOn() {
  static bool on = true;
  return on;
}

// Whether a call tries cuDNN first: named (kCudnn, "cudnn*"), or auto while
// CudnnAutoOn(). Auto runs cuDNN's deterministic backward.
bool TriesCudnn(AttentionForwardVariant v) {
  return v == AttentionForwardVariant::kCudnn ||
         (v == AttentionForwardVariant::kAuto && CudnnAutoOn());
}
bool TriesCudnn(const AttentionBackwardVariant& v) {
  return v.cudnn || (v.cudnn_auto && CudnnAutoOn());
}
bool CudnnDeterministic(const AttentionBackwardVariant& v) { return v.cudnn ? v.cudnn_det : true; }

// Sum over the kG = 4 threads of a row group (lanes 4i .. 4i+3).
__device__ __forceinline__ float GroupSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// ---- forward -----------------------------------------------------------------
// Block (x, y): query rows [tile*64, tile*64 + 64) of (batch, head) y, with
// tile = gridDim.x - 1 - x so that the longest rows (most keys) start first.
template <typename T, int HD>
__global__ void __launch_bounds__(kSimtThreads)
    FlashFwdSimt(T* out, float* lse, const T* qkv, AttnDims d) {
  constexpr int D = HD / kG;
  __shared__ float Ks[kTile][HD];
  __shared__ float Vs[kTile][HD];
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, g = h / d.group;
  const int sub = threadIdx.x % kG;
  const int t = tile * kRows + threadIdx.x / kG;
  const bool valid = t < d.T;
  const T* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const T* kbase = base + static_cast<int64_t>(d.NH + g) * HD;
  const T* vbase = base + static_cast<int64_t>(d.NH + d.NKV + g) * HD;

  float q[D], acc[D];
#pragma unroll
  for (int k = 0; k < D; ++k) {
    q[k] =
        valid ? ToF(base[static_cast<int64_t>(t) * d.ld + h * HD + sub + kG * k]) * d.scale : 0.f;
    acc[k] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int last_key = min(d.T - 1, tile * kRows + kRows - 1);
  for (int j0 = 0; j0 <= last_key; j0 += kTile) {
    for (int e = threadIdx.x; e < kTile * HD; e += blockDim.x) {
      const int s = e / HD, c = e % HD, j = j0 + s;
      const bool in = j < d.T;
      Ks[s][c] = in ? ToF(kbase[static_cast<int64_t>(j) * d.ld + c]) : 0.f;
      Vs[s][c] = in ? ToF(vbase[static_cast<int64_t>(j) * d.ld + c]) : 0.f;
    }
    __syncthreads();
    float sc[kTile];
    float mt = -INFINITY;
#pragma unroll
    for (int s = 0; s < kTile; ++s) {
      float p = 0.f;
#pragma unroll
      for (int k = 0; k < D; ++k) p += q[k] * Ks[s][sub + kG * k];
      p = GroupSum(p);
      sc[s] = (j0 + s <= t) ? p : -INFINITY;
      mt = fmaxf(mt, sc[s]);
    }
    // Key 0 is visible to every row, so m_new is finite from the first tile
    // on; exp(-inf - finite) = 0 rescales the empty initial state.
    const float m_new = fmaxf(m, mt);
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int k = 0; k < D; ++k) acc[k] *= corr;
#pragma unroll
    for (int s = 0; s < kTile; ++s) {
      const float p = expf(sc[s] - m_new);
      l += p;
#pragma unroll
      for (int k = 0; k < D; ++k) acc[k] += p * Vs[s][sub + kG * k];
    }
    m = m_new;
    __syncthreads();
  }
  if (valid) {
    T* o = out + (static_cast<int64_t>(b) * d.T + t) * d.C + h * HD;
    const float inv = 1.f / l;
#pragma unroll
    for (int k = 0; k < D; ++k) o[sub + kG * k] = FromF<T>(acc[k] * inv);
    if (sub == 0) lse[static_cast<int64_t>(bh) * d.T + t] = m + logf(l);
  }
}

// ---- backward ----------------------------------------------------------------
// Dsum[b, h, t] = sum_c dout[b, t, h, c] * out[b, t, h, c]: one warp per row.
template <typename T>
__global__ void FlashBwdPreprocess(float* Dsum, const T* dout, const T* out, AttnDims d) {
  const int64_t rows = static_cast<int64_t>(d.B) * d.NH * d.T;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
       w < rows; w += warps) {
    const int64_t t = w % d.T, bh = w / d.T;
    const int64_t b = bh / d.NH, h = bh % d.NH;
    const int64_t off = (b * d.T + t) * d.C + h * d.hd;
    float s = 0.f;
    for (int c = lane; c < d.hd; c += 32) s += ToF(dout[off + c]) * ToF(out[off + c]);
    s = internal::WarpSum(s);
    if (lane == 0) Dsum[w] = s;
  }
}

// dQ for query rows [tile*64, +64) of (batch, head) y:
//   p = exp(scale q.k - lse), dp = dout.v, ds = p (dp - Dsum), dq = scale sum ds k.
template <typename T, int HD>
__global__ void __launch_bounds__(kSimtThreads)
    FlashBwdDqSimt(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dsum,
                   AttnDims d) {
  constexpr int D = HD / kG;
  __shared__ float Ks[kTile][HD];
  __shared__ float Vs[kTile][HD];
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, g = h / d.group;
  const int sub = threadIdx.x % kG;
  const int t = tile * kRows + threadIdx.x / kG;
  const bool valid = t < d.T;
  const T* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const T* kbase = base + static_cast<int64_t>(d.NH + g) * HD;
  const T* vbase = base + static_cast<int64_t>(d.NH + d.NKV + g) * HD;
  const T* dobase = dout + (static_cast<int64_t>(b) * d.T + t) * d.C + h * HD;

  float q[D], dO[D], dq[D];
#pragma unroll
  for (int k = 0; k < D; ++k) {
    q[k] =
        valid ? ToF(base[static_cast<int64_t>(t) * d.ld + h * HD + sub + kG * k]) * d.scale : 0.f;
    dO[k] = valid ? ToF(dobase[sub + kG * k]) : 0.f;
    dq[k] = 0.f;
  }
  const float L = valid ? lse[static_cast<int64_t>(bh) * d.T + t] : 0.f;
  const float Dt = valid ? Dsum[static_cast<int64_t>(bh) * d.T + t] : 0.f;
  const int last_key = min(d.T - 1, tile * kRows + kRows - 1);
  for (int j0 = 0; j0 <= last_key; j0 += kTile) {
    for (int e = threadIdx.x; e < kTile * HD; e += blockDim.x) {
      const int s = e / HD, c = e % HD, j = j0 + s;
      const bool in = j < d.T;
      Ks[s][c] = in ? ToF(kbase[static_cast<int64_t>(j) * d.ld + c]) : 0.f;
      Vs[s][c] = in ? ToF(vbase[static_cast<int64_t>(j) * d.ld + c]) : 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int s = 0; s < kTile; ++s) {
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int k = 0; k < D; ++k) {
        sc += q[k] * Ks[s][sub + kG * k];
        dp += dO[k] * Vs[s][sub + kG * k];
      }
      sc = GroupSum(sc);
      dp = GroupSum(dp);
      const float p = (j0 + s <= t) ? expf(sc - L) : 0.f;
      const float ds = p * (dp - Dt);
#pragma unroll
      for (int k = 0; k < D; ++k) dq[k] += ds * Ks[s][sub + kG * k];
    }
    __syncthreads();
  }
  if (valid) {
    T* o = dqkv + (static_cast<int64_t>(b) * d.T + t) * d.ld + h * HD;
#pragma unroll
    for (int k = 0; k < D; ++k) o[sub + kG * k] = FromF<T>(dq[k] * d.scale);
  }
}

// dK, dV for key rows [tile*64, +64) of (batch, kv head) y, accumulated over
// every query head of the GQA group and every query row t >= key row:
//   dv += p dout_t,  dk += ds (scale q_t).
template <typename T, int HD>
__global__ void __launch_bounds__(kSimtThreads)
    FlashBwdDkvSimt(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dsum,
                    AttnDims d) {
  constexpr int D = HD / kG;
  __shared__ float Qs[kTile][HD];  // scaled queries
  __shared__ float dOs[kTile][HD];
  __shared__ float Ls[kTile], Ds[kTile];
  const int tile = blockIdx.x;  // low key tiles see the most queries: start them first
  const int bg = blockIdx.y, b = bg / d.NKV, g = bg % d.NKV;
  const int sub = threadIdx.x % kG;
  const int s = tile * kRows + threadIdx.x / kG;  // this group's key row
  const bool valid = s < d.T;
  const T* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const int64_t kcol = static_cast<int64_t>(d.NH + g) * HD;
  const int64_t vcol = static_cast<int64_t>(d.NH + d.NKV + g) * HD;

  float kr[D], vr[D], dk[D], dv[D];
#pragma unroll
  for (int k = 0; k < D; ++k) {
    kr[k] = valid ? ToF(base[static_cast<int64_t>(s) * d.ld + kcol + sub + kG * k]) : 0.f;
    vr[k] = valid ? ToF(base[static_cast<int64_t>(s) * d.ld + vcol + sub + kG * k]) : 0.f;
    dk[k] = 0.f;
    dv[k] = 0.f;
  }
  for (int h = g * d.group; h < (g + 1) * d.group; ++h) {
    const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
    for (int i0 = tile * kRows; i0 < d.T; i0 += kTile) {
      for (int e = threadIdx.x; e < kTile * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, t = i0 + r;
        const bool in = t < d.T;
        Qs[r][c] = in ? ToF(base[static_cast<int64_t>(t) * d.ld + h * HD + c]) * d.scale : 0.f;
        dOs[r][c] = in ? ToF(dout[(static_cast<int64_t>(b) * d.T + t) * d.C + h * HD + c]) : 0.f;
      }
      for (int r = threadIdx.x; r < kTile; r += blockDim.x) {
        const int t = i0 + r;
        Ls[r] = t < d.T ? lse[bh * d.T + t] : 0.f;
        Ds[r] = t < d.T ? Dsum[bh * d.T + t] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int r = 0; r < kTile; ++r) {
        const int t = i0 + r;
        float sc = 0.f, dp = 0.f;
#pragma unroll
        for (int k = 0; k < D; ++k) {
          sc += kr[k] * Qs[r][sub + kG * k];
          dp += vr[k] * dOs[r][sub + kG * k];
        }
        sc = GroupSum(sc);
        dp = GroupSum(dp);
        const float p = (t >= s && t < d.T) ? expf(sc - Ls[r]) : 0.f;
        const float ds = p * (dp - Ds[r]);
#pragma unroll
        for (int k = 0; k < D; ++k) {
          dv[k] += p * dOs[r][sub + kG * k];
          dk[k] += ds * Qs[r][sub + kG * k];
        }
      }
      __syncthreads();
    }
  }
  if (valid) {
    T* o = dqkv + (static_cast<int64_t>(b) * d.T + s) * d.ld;
#pragma unroll
    for (int k = 0; k < D; ++k) {
      o[kcol + sub + kG * k] = FromF<T>(dk[k]);
      o[vcol + sub + kG * k] = FromF<T>(dv[k]);
    }
  }
}

// ---- dispatch ------------------------------------------------------------------
AttnDims MakeDims(int B, int T, int NH, int NKV, int hd) {
  if (B <= 0 || T <= 0 || NH <= 0 || NKV <= 0 || NH % NKV != 0 || !AttentionSupportsHeadDim(hd)) {
    Fatal("cuda attention: unsupported shape B=" + std::to_string(B) + " T=" + std::to_string(T) +
          " NH=" + std::to_string(NH) + " NKV=" + std::to_string(NKV) +
          " hd=" + std::to_string(hd) +
          " (need positive sizes, NKV dividing NH, hd in {8,16,32,64,80,96,128})");
  }
  AttnDims d;
  d.B = B;
  d.T = T;
  d.NH = NH;
  d.NKV = NKV;
  d.hd = hd;
  d.ld = static_cast<int64_t>(NH + 2 * NKV) * hd;
  d.C = static_cast<int64_t>(NH) * hd;
  d.group = NH / NKV;
  d.scale = 1.f / std::sqrt(static_cast<float>(hd));
  return d;
}

// Calls f(std::integral_constant<int, HD>) for the runtime head dim.
template <typename F>
void DispatchHeadDim(int hd, F&& f) {
  switch (hd) {
    case 8:
      f(std::integral_constant<int, 8>());
      break;
    case 16:
      f(std::integral_constant<int, 16>());
      break;
    case 32:
      f(std::integral_constant<int, 32>());
      break;
    case 64:
      f(std::integral_constant<int, 64>());
      break;
    case 80:
      f(std::integral_constant<int, 80>());
      break;
    case 96:
      f(std::integral_constant<int, 96>());
      break;
    case 128:
      f(std::integral_constant<int, 128>());
      break;
    default:
      Fatal("cuda attention: unsupported head dim " + std::to_string(hd));
  }
}

// The tensor-core implementation to use for a bf16 call, or kSimt. Those
// kernels copy tiles with 16-byte vector accesses, so misaligned pointers
// fall back to SIMT (with a one-time warning: it is much slower).
AttentionImpl TensorCoreImpl(int hd, const void* a, const void* b, const void* c) {
  const AttentionImpl impl = g_impl == AttentionImpl::kAuto ? AttentionImpl::kMma : g_impl;
  if (impl == AttentionImpl::kSimt || !internal::FlashTcSupports(hd)) return AttentionImpl::kSimt;
  if (!internal::Aligned(16, a, b, c)) {
    static bool warned = false;
    if (!warned) {
      warned = true;
      LLMT_LOG(Warning) << "cuda attention: qkv/out/dout not 16-byte aligned; using the SIMT "
                           "kernels (much slower). Align activation buffers to 16 bytes.";
    }
    return AttentionImpl::kSimt;
  }
  return impl;
}

template <typename T>
void Forward(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int hd,
             cudaStream_t stream) {
  const AttnDims d = MakeDims(B, T_, NH, NKV, hd);
  if constexpr (std::is_same_v<T, bf16>) {
    switch (TensorCoreImpl(hd, out, qkv, nullptr)) {
      case AttentionImpl::kMma: {
        const AttentionForwardVariant v = ForwardVariant();
        if (TriesCudnn(v)) {
          std::string why;
          if (internal::CudnnFlashForward(out, lse, qkv, d, stream, &why)) return;
          NoteCudnnFallback("forward", why, v == AttentionForwardVariant::kCudnn);
        }
        if (IsWgmma(v) && WgmmaUsable()) {
          internal::FlashForwardWgmma(out, lse, qkv, d, v, stream);
          return;
        }
        internal::FlashForwardMma(out, lse, qkv, d, v, stream);
        return;
      }
      case AttentionImpl::kWmma:
        internal::FlashForwardTc(out, lse, qkv, d, stream);
        return;
      default:
        break;
    }
  }
  const dim3 grid(static_cast<unsigned>(CeilDiv(T_, kRows)), static_cast<unsigned>(B * NH));
  DispatchHeadDim(hd, [&](auto hd_c) {
    internal::Launch(FlashFwdSimt<T, decltype(hd_c)::value>, grid, kSimtThreads, 0, stream, out,
                     lse, qkv, d);
  });
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdSimt", stream);
}

// The ds variant's scratch: dS tiles after Dsum (256-byte aligned), for
// the largest batch chunk whose tiles fit ds_max_bytes (at least one batch
// element), chunks as even as possible. The wgmma-fused variant's: its dQ
// accumulator and counters at the same offset.
size_t DsOffset(int B, int T, int NH) {
  const size_t dsum = static_cast<size_t>(B) * NH * T * sizeof(float);
  return (dsum + 255) / 256 * 256;
}
int DsChunkBatch(int B, int T, int NH, const AttentionBackwardVariant& v) {
  if (!v.ds || B <= 0) return 0;
  const size_t per = internal::DsBatchBytes(T, NH);
  const int64_t fit =
      std::max<int64_t>(1, static_cast<int64_t>(v.ds_max_bytes / std::max<size_t>(per, 1)));
  const int64_t chunks = (B + fit - 1) / fit;
  return static_cast<int>((B + chunks - 1) / chunks);
}

bool UsesFusedScratch(const AttentionBackwardVariant& v, int hd) {
  return v.wgmma && v.wgmma_fused && !v.wgmma_ss && hd == 64;
}

template <typename T>
void Backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int B, int T_,
              int NH, int NKV, int hd, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const AttnDims d = MakeDims(B, T_, NH, NKV, hd);
  CheckScratch("AttentionBackward", scratch, scratch_bytes,
               AttentionBackwardScratchBytes(B, T_, NH, hd));
  float* Dsum = static_cast<float*>(scratch);
  if constexpr (std::is_same_v<T, bf16>) {
    // cuDNN computes Dsum itself.
    const AttentionBackwardVariant v = BackwardVariant();
    if (TriesCudnn(v) && TensorCoreImpl(hd, dqkv, dout, qkv) == AttentionImpl::kMma) {
      std::string why;
      if (internal::CudnnFlashBackward(dqkv, dout, qkv, out, lse, Dsum, d, CudnnDeterministic(v),
                                       stream, &why)) {
        return;
      }
      NoteCudnnFallback("backward", why, v.cudnn);
    }
  }
  const int64_t rows = static_cast<int64_t>(B) * NH * T_;
  internal::Launch(FlashBwdPreprocess<T>, GridFor(rows, 8), 256, 0, stream, Dsum, dout, out, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdPreprocess", stream);
  if constexpr (std::is_same_v<T, bf16>) {
    switch (TensorCoreImpl(hd, dqkv, dout, qkv)) {
      case AttentionImpl::kMma: {
        const AttentionBackwardVariant v = BackwardVariant();
        if (v.wgmma && WgmmaUsable()) {
          float* dq_acc = nullptr;
          int* dq_count = nullptr;
          if (UsesFusedScratch(v, hd)) {
            char* at = static_cast<char*>(scratch) + DsOffset(B, T_, NH);
            dq_acc = reinterpret_cast<float*>(at);
            dq_count = reinterpret_cast<int*>(at + internal::WgFusedAccBytes(B, T_, NH));
          }
          internal::FlashBackwardWgmma(dqkv, dout, qkv, lse, Dsum, d, v.wgmma_ss, dq_acc,
                                       dq_count, v.wgmma_fused_2wg, stream);
          return;
        }
        bf16* ds = v.ds ? reinterpret_cast<bf16*>(static_cast<char*>(scratch) + DsOffset(B, T_, NH))
                        : nullptr;
        internal::FlashBackwardMma(dqkv, dout, qkv, lse, Dsum, d, v, ds,
                                   DsChunkBatch(B, T_, NH, v), stream);
        return;
      }
      case AttentionImpl::kWmma:
        internal::FlashBackwardTc(dqkv, dout, qkv, lse, Dsum, d, stream);
        return;
      default:
        break;
    }
  }
  const unsigned tiles = static_cast<unsigned>(CeilDiv(T_, kRows));
  DispatchHeadDim(hd, [&](auto hd_c) {
    constexpr int HD = decltype(hd_c)::value;
    internal::Launch(FlashBwdDqSimt<T, HD>, dim3(tiles, static_cast<unsigned>(B * NH)),
                     kSimtThreads, 0, stream, dqkv, dout, qkv, lse, Dsum, d);
    LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqSimt", stream);
    internal::Launch(FlashBwdDkvSimt<T, HD>, dim3(tiles, static_cast<unsigned>(B * NKV)),
                     kSimtThreads, 0, stream, dqkv, dout, qkv, lse, Dsum, d);
    LLMT_CUDA_CHECK_LAUNCH("FlashBwdDkvSimt", stream);
  });
}

// ---- RoPE --------------------------------------------------------------------------
__global__ void RopeTableKernel(float* cos_out, float* sin_out, int T, int hd, float theta) {
  const int half = hd / 2;
  const int64_t n = static_cast<int64_t>(T) * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int64_t t = e / half;
    const int i = static_cast<int>(e % half);
    // HF: inv_freq = 1 / theta^(arange(0, hd, 2) / hd), in double like the CPU.
    const double inv_freq = 1.0 / pow(static_cast<double>(theta), (2.0 * i) / hd);
    const double a = static_cast<double>(t) * inv_freq;
    cos_out[e] = static_cast<float>(cos(a));
    sin_out[e] = static_cast<float>(sin(a));
  }
}

// Thread per (row, head, i < hd/2): rotates the pair (x1[i], x2[i]).
// sign = +1 forward, -1 backward (the inverse rotation).
template <typename T>
__global__ void RopeKernel(T* x, const float* cos_t, const float* sin_t, int64_t rows, int T_,
                           int n_heads, int hd, int64_t ld, float sign) {
  const int half = hd / 2;
  const int64_t n = rows * n_heads * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int i = static_cast<int>(e % half);
    const int64_t rh = e / half;
    const int h = static_cast<int>(rh % n_heads);
    const int64_t r = rh / n_heads;
    const int64_t t = r % T_;
    T* x1 = x + r * ld + static_cast<int64_t>(h) * hd;
    const float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
    const float a = ToF(x1[i]), b = ToF(x1[half + i]);
    x1[i] = FromF<T>(a * c - b * s);
    x1[half + i] = FromF<T>(b * c + a * s);
  }
}

template <typename T>
void Rope(T* x, const float* cos_t, const float* sin_t, int B, int T_, int n_heads, int hd,
          int64_t ld, float sign, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(B) * T_;
  if (rows <= 0 || n_heads <= 0) return;
  if (hd <= 0 || hd % 2 != 0) Fatal("Rope: head dim must be even, got " + std::to_string(hd));
  internal::Launch(RopeKernel<T>, GridFor(rows * n_heads * (hd / 2), 256), 256, 0, stream, x, cos_t,
                   sin_t, rows, T_, n_heads, hd, ld, sign);
  LLMT_CUDA_CHECK_LAUNCH(sign > 0 ? "RopeForward" : "RopeBackward", stream);
}

}  // namespace

bool AttentionSupportsHeadDim(int hd) {
  return hd == 8 || hd == 16 || hd == 32 || hd == 64 || hd == 80 || hd == 96 || hd == 128;
}

AttentionPrepared PrepareAttention(int B, int T, int NH, int NKV, int hd) {
  AttentionPrepared r;
  const AttentionForwardVariant fv = ForwardVariant();
  const AttentionBackwardVariant v = BackwardVariant();
  const bool requested = fv == AttentionForwardVariant::kCudnn || v.cudnn;
  const bool fwd = TriesCudnn(fv), bwd = TriesCudnn(v), det = CudnnDeterministic(v);
  if (!fwd && !bwd) {
    r.what = "attention: the own kernels (LLMT_ATTN_FWD/LLMT_ATTN_BWD)";
    return r;
  }
  std::string why_not;
  r.bytes = internal::CudnnPrepare(MakeDims(B, T, NH, NKV, hd), fwd, bwd, det, &r.error,
                                   &why_not);
  if (!r.error.empty()) {
    if (requested) return r;
    // Auto: without room for cuDNN's workspace the own kernels (which need
    // none beyond the scratch already planned) run, rather than no training.
    CudnnAutoOn() = false;
    r.what = "attention: the own kernels (cuDNN off: " + r.error + ")";
    r.error.clear();
    r.bytes = 0;
    return r;
  }
  if (r.bytes == 0) {
    r.what = "attention: the own kernels (cuDNN not used: " + why_not + ")";
    return r;
  }
  const char* backward = !bwd ? "" : det ? " deterministic backward" : " backward";
  r.what = "attention: " + cudnn::Describe() + (fwd ? " forward" : "") +
           (fwd && bwd ? " and" : "") + backward + (requested ? "" : " (auto)");
  if (!why_not.empty()) r.what += "; the own kernels for the rest: " + why_not;
  return r;
}

void SetAttentionImpl(AttentionImpl impl) { g_impl = impl; }
AttentionImpl GetAttentionImpl() { return g_impl; }
void SetAttentionBackwardVariant(AttentionBackwardVariant v) { BackwardVariant() = v; }
AttentionBackwardVariant GetAttentionBackwardVariant() { return BackwardVariant(); }
AttentionBackwardVariant ParseAttentionBackwardVariant(const std::string& names) {
  return ParseBackwardVariant(names.c_str());
}
void SetAttentionForwardVariant(AttentionForwardVariant v) { ForwardVariant() = v; }
AttentionForwardVariant GetAttentionForwardVariant() { return ForwardVariant(); }

size_t AttentionBackwardScratchBytes(int B, int T, int NH, int hd) {
  const AttentionBackwardVariant v = BackwardVariant();
  const bool fused = UsesFusedScratch(v, hd);
  if (!v.ds && !fused) return static_cast<size_t>(B) * NH * T * sizeof(float);
  const size_t ds =
      static_cast<size_t>(DsChunkBatch(B, T, NH, v)) * internal::DsBatchBytes(T, NH);
  const size_t dq = fused ? internal::WgFusedAccBytes(B, T, NH) +
                                internal::WgFusedCountBytes(B, T, NH)
                          : 0;
  return DsOffset(B, T, NH) + std::max(ds, dq);
}

void AttentionForward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                      int hd, cudaStream_t stream) {
  Forward(out, lse, qkv, B, T, NH, NKV, hd, stream);
}
void AttentionForward(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, int NKV, int hd,
                      cudaStream_t stream) {
  Forward(out, lse, qkv, B, T, NH, NKV, hd, stream);
}
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int B, int T, int NH, int NKV, int hd, void* scratch,
                       size_t scratch_bytes, cudaStream_t stream) {
  Backward(dqkv, dout, qkv, out, lse, B, T, NH, NKV, hd, scratch, scratch_bytes, stream);
}
void AttentionBackward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                       const float* lse, int B, int T, int NH, int NKV, int hd, void* scratch,
                       size_t scratch_bytes, cudaStream_t stream) {
  Backward(dqkv, dout, qkv, out, lse, B, T, NH, NKV, hd, scratch, scratch_bytes, stream);
}

void RopeTable(float* cos, float* sin, int T, int hd, float theta, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(T) * (hd / 2);
  if (n <= 0) return;
  internal::Launch(RopeTableKernel, GridFor(n, 256), 256, 0, stream, cos, sin, T, hd, theta);
  LLMT_CUDA_CHECK_LAUNCH("RopeTableKernel", stream);
}
void RopeForward(float* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld, cudaStream_t stream) {
  Rope(x, cos, sin, B, T, n_heads, hd, ld, 1.f, stream);
}
void RopeForward(bf16* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld, cudaStream_t stream) {
  Rope(x, cos, sin, B, T, n_heads, hd, ld, 1.f, stream);
}
void RopeBackward(float* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld, cudaStream_t stream) {
  Rope(dx, cos, sin, B, T, n_heads, hd, ld, -1.f, stream);
}
void RopeBackward(bf16* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld, cudaStream_t stream) {
  Rope(dx, cos, sin, B, T, n_heads, hd, ld, -1.f, stream);
}

}  // namespace llmt::kernels::cuda
