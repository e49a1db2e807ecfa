// bench/gpu: the bf16 flash-attention kernels alone, every forward and
// backward variant at one shape (default: GPT-2 124M's, B 64 x T 1024, 12
// heads of 64, causal), timed side by side in one process on one device.
// Prints a table (median ms per call over --iters calls, TFLOP/s with the
// causal FLOP counts torch_ops.py uses: forward 2 B NH T^2 hd, backward 2.5x
// that), and each variant's deviation from the default kernels' output on the
// same inputs (relative L2 of out; of dqkv for the backward), so a variant
// that runs but computes garbage on a real GPU shows at once.
//
//   bench_attention [--batch 64] [--seq 1024] [--heads 12] [--kv-heads 12]
//                   [--hd 64] [--iters 20] [--device 0] [--max-rel-l2 X]
//                   [--cudnn yes|no|only]
//
// --max-rel-l2: exit 1 when a variant's deviation exceeds X (the emulated
// build runs this way as a smoke test, tests/unit/cuda/CMakeLists.txt).
// --cudnn: with or without the cuDNN rows, or only them (and the default, the
// reference): run.sh times cuDNN in its own process, so that a failure there
// cannot take the own kernels' rows with it.
//
// Variants the device cannot run (the wgmma ones off sm_90) fall back to the
// default inside the library, which logs a warning; their rows then time the
// default.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/runtime.cuh"

namespace {

namespace kc = llmt::kernels::cuda;

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "bench_attention: %s\n", msg.c_str());
  std::exit(1);
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}

kc::DeviceBuffer Alloc(const std::string& name, int64_t bytes) {
  auto b = kc::DeviceBuffer::Allocate(name, bytes);
  if (!b.ok()) Die(b.status().ToString());
  return std::move(*b);
}

// Random bf16 values (normal * scale) uploaded to `buf`.
void FillRandom(kc::DeviceBuffer& buf, int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<uint16_t> h(static_cast<size_t>(n));
  for (auto& v : h) {
    const float f = nd(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    v = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);  // round to nearest even
  }
  const auto st = buf.CopyFromHost(h.data(), n * 2);
  if (!st.ok()) Die(st.ToString());
}

std::vector<float> Download(const kc::DeviceBuffer& buf, int64_t n) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  const auto st = buf.CopyToHost(h.data(), n * 2);
  if (!st.ok()) Die(st.ToString());
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(h[i]) << 16;
    std::memcpy(&f[i], &u, 4);
  }
  return f;
}

// ||a - b|| / ||b||; NaN anywhere gives NaN.
double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Median milliseconds per call of fn over `iters` calls (after one warm-up).
template <typename F>
double MedianMs(F&& fn, int iters, cudaStream_t stream) {
  cudaEvent_t a, b;
  Check(cudaEventCreate(&a), "cudaEventCreate");
  Check(cudaEventCreate(&b), "cudaEventCreate");
  fn();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    Check(cudaEventRecord(a, stream), "cudaEventRecord");
    fn();
    Check(cudaEventRecord(b, stream), "cudaEventRecord");
    Check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float t = 0;
    Check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int B = 64, T = 1024, NH = 12, NKV = 12, hd = 64, iters = 20, device = 0;
  double max_rel = -1;  // < 0: report only
  std::string cudnn_rows = "yes";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) Die("missing value after " + a);
      return argv[++i];
    };
    auto next = [&]() -> int { return std::atoi(value()); };
    if (a == "--batch") B = next();
    else if (a == "--seq") T = next();
    else if (a == "--heads") NH = next();
    else if (a == "--kv-heads") NKV = next();
    else if (a == "--hd") hd = next();
    else if (a == "--iters") iters = next();
    else if (a == "--device") device = next();
    else if (a == "--max-rel-l2") max_rel = std::atof(value());
    else if (a == "--cudnn") cudnn_rows = value();
    else Die("unknown argument " + a + " (see the comment at the top of bench_attention.cc)");
  }
  if (B < 1 || T < 1 || NH < 1 || NKV < 1 || NH % NKV != 0 || iters < 1) Die("bad shape");
  if (cudnn_rows != "yes" && cudnn_rows != "no" && cudnn_rows != "only") {
    Die("--cudnn: expected yes, no or only, got '" + cudnn_rows + "'");
  }
  // Whether the row named `name` runs under --cudnn (the default row always).
  auto wanted = [&](const std::string& name) {
    const bool is_cudnn = name.rfind("cudnn", 0) == 0;
    if (name == "default") return true;
    return cudnn_rows == "yes" || (cudnn_rows == "no") != is_cudnn;
  };
  if (!kc::HaveGpu()) Die("no CUDA device");
  if (auto st = kc::SetDevice(device); !st.ok()) Die(st.ToString());
  auto info = kc::GetDeviceInfo(device);
  if (!info.ok()) Die(info.status().ToString());
  std::printf("device %s\nshape B=%d T=%d heads=%d kv_heads=%d hd=%d, bf16, causal; median of %d\n",
              info->ToString().c_str(), B, T, NH, NKV, hd, iters);

  const int64_t qkv_n = int64_t{B} * T * (NH + 2 * NKV) * hd, out_n = int64_t{B} * T * NH * hd;
  kc::DeviceBuffer qkv = Alloc("qkv", qkv_n * 2), dqkv = Alloc("dqkv", qkv_n * 2);
  kc::DeviceBuffer out = Alloc("out", out_n * 2), dout = Alloc("dout", out_n * 2);
  kc::DeviceBuffer lse = Alloc("lse", int64_t{B} * NH * T * 4);
  FillRandom(qkv, qkv_n, 1.f, 1);
  FillRandom(dout, out_n, 1.f, 2);
  cudaStream_t stream = nullptr;  // the legacy default stream: events order with it

  int too_far = 0;  // variants beyond --max-rel-l2
  auto judge = [&](double rel) {
    if (max_rel >= 0 && !(rel <= max_rel)) ++too_far;
    return rel;
  };
  const double fwd_flops = 2.0 * B * NH * double(T) * T * hd;  // 4 B NH T^2 hd / 2 (causal)
  // The wgmma kernels run in both tile layouts (LLMT_WGMMA_LAYOUT's two
  // values): swizzled is the default, "-blocked" the other.
  namespace ki = kc::internal;
  struct Fwd {
    const char* name;
    kc::AttentionForwardVariant v;
    ki::WgLayout layout;
  };
  const Fwd fwds[] = {
      {"default", kc::AttentionForwardVariant::kDefault, ki::WgLayout::kSwizzled},
      {"m64", kc::AttentionForwardVariant::kM64, ki::WgLayout::kSwizzled},
      {"m64n128", kc::AttentionForwardVariant::kM64N128, ki::WgLayout::kSwizzled},
      {"wgmma", kc::AttentionForwardVariant::kWgmma, ki::WgLayout::kSwizzled},
      {"wgmma-pipe", kc::AttentionForwardVariant::kWgmmaPipe, ki::WgLayout::kSwizzled},
      {"wgmma-2wg", kc::AttentionForwardVariant::kWgmma2Wg, ki::WgLayout::kSwizzled},
      {"wgmma-pipe-2wg", kc::AttentionForwardVariant::kWgmmaPipe2Wg, ki::WgLayout::kSwizzled},
      {"wgmma-blocked", kc::AttentionForwardVariant::kWgmma, ki::WgLayout::kBlocked},
      {"cudnn", kc::AttentionForwardVariant::kCudnn, ki::WgLayout::kSwizzled}};
  // cuDNN variants that fell back to the own kernels say so (and why: the
  // log's warning).
  auto note = [](const char* name, int64_t before) {
    if (std::string(name).rfind("cudnn", 0) == 0 && kc::cudnn::Executions() == before) {
      std::printf("  (cuDNN did not run: the own kernels were timed; %s)\n",
                  kc::cudnn::Describe().c_str());
    }
  };
  std::printf("\n%-22s %9s %9s %14s\n", "forward", "ms", "TFLOP/s", "rel L2 vs def");
  std::vector<float> ref_out;
  for (const Fwd& f : fwds) {
    if (!wanted(f.name)) continue;
    kc::SetAttentionForwardVariant(f.v);
    ki::SetWgmmaLayout(f.layout);
    auto run = [&] {
      kc::AttentionForward(out.as<kc::bf16>(), lse.as<float>(), qkv.as<kc::bf16>(), B, T, NH,
                           NKV, hd, stream);
    };
    const int64_t cudnn_before = kc::cudnn::Executions();
    const double ms = MedianMs(run, iters, stream);
    Check(cudaGetLastError(), f.name);
    const std::vector<float> got = Download(out, out_n);
    if (ref_out.empty()) ref_out = got;
    std::printf("%-22s %9.3f %9.1f %14.2e\n", f.name, ms, fwd_flops / ms / 1e9,
                judge(RelL2(got, ref_out)));
    note(f.name, cudnn_before);
  }

  // The backward from the default forward's out and lse.
  kc::SetAttentionForwardVariant(kc::AttentionForwardVariant::kDefault);
  kc::AttentionForward(out.as<kc::bf16>(), lse.as<float>(), qkv.as<kc::bf16>(), B, T, NH, NKV, hd,
                       stream);
  struct Bwd {
    const char* name;
    const char* env;  // as LLMT_ATTN_BWD would name it
    ki::WgLayout layout;
  };
  constexpr auto kSw = ki::WgLayout::kSwizzled;
  const Bwd bwds[] = {{"default", "default", kSw},
                      {"wgmma", "wgmma", kSw},
                      {"wgmma-fused", "wgmma-fused", kSw},
                      {"wgmma-fused-2wg", "wgmma-fused-2wg", kSw},
                      {"wgmma-ss", "wgmma-ss", kSw},
                      {"wgmma-blocked", "wgmma", ki::WgLayout::kBlocked},
                      {"wgmma-ss-blocked", "wgmma-ss", ki::WgLayout::kBlocked},
                      {"ds", "ds", kSw},
                      {"cudnn", "cudnn", kSw},
                      {"cudnn-det", "cudnn-det", kSw}};
  std::printf("\n%-22s %9s %9s %14s\n", "backward", "ms", "TFLOP/s", "rel L2 vs def");
  std::vector<float> ref_d;
  for (const Bwd& b : bwds) {
    if (!wanted(b.name)) continue;
    kc::SetAttentionBackwardVariant(kc::ParseAttentionBackwardVariant(b.env));
    ki::SetWgmmaLayout(b.layout);
    const size_t scratch_bytes = kc::AttentionBackwardScratchBytes(B, T, NH, hd);
    kc::DeviceBuffer scratch = Alloc("scratch", static_cast<int64_t>(scratch_bytes));
    auto run = [&] {
      kc::AttentionBackward(dqkv.as<kc::bf16>(), dout.as<kc::bf16>(), qkv.as<kc::bf16>(),
                            out.as<kc::bf16>(), lse.as<float>(), B, T, NH, NKV, hd,
                            scratch.data(), scratch_bytes, stream);
    };
    const int64_t cudnn_before = kc::cudnn::Executions();
    const double ms = MedianMs(run, iters, stream);
    Check(cudaGetLastError(), b.name);
    const std::vector<float> got = Download(dqkv, qkv_n);
    if (ref_d.empty()) ref_d = got;
    std::printf("%-22s %9.3f %9.1f %14.2e\n", b.name, ms, 2.5 * fwd_flops / ms / 1e9,
                judge(RelL2(got, ref_d)));
    note(b.name, cudnn_before);
  }
  if (too_far > 0) {
    std::printf("\n%d variant(s) deviate from the default by more than %g (relative L2)\n",
                too_far, max_rel);
    return 1;
  }
  return 0;
}
