// cuDNN's fused flash attention as an alternative to the own attention kernels
// (LLMT_ATTN_FWD=cudnn, LLMT_ATTN_BWD=cudnn; see attention.cuh and
// docs/cuda.md). Host code only (attention_cudnn.cc); not a public header.
//
// Why cuDNN and how. The issue allows cuDNN's fused attention as an
// alternative to an own kernel, and on Hopper its SDPA engines are the
// fastest attention we can reach without writing FlashAttention-3 ourselves.
// cuDNN is not one of the libraries the project links: libcudnn.so.9 is
// loaded at run time (dlopen; LLMT_CUDNN_LIB overrides the name), so builds
// and CI need nothing but cuDNN's headers, and the GPU machine uses the cuDNN
// that PyTorch's wheels bring (too large to carry: hundreds of MB). The
// graphs are built with cuDNN's backend API -- the same operation graphs
// (matmul, pointwise, reduction, reshape) that cuDNN's frontend library
// composes for its SDPA node and that the fused flash-attention engines
// recognise -- because the header-only frontend is not packaged for Debian.
//
// Everything here is bf16 with fp32 statistics, causal, scale 1/sqrt(hd), in
// the packed qkv layout of attention.cuh (cuDNN takes arbitrary strides, so
// no copies). The forward's statistics are the row log-sum-exp, exactly the
// lse of the own kernels, so a cuDNN forward can feed the own backward and
// the reverse.
#pragma once

#include <cstdint>
#include <string>

namespace llmt::kernels::cuda::cudnn {

// One attention problem: batch, sequence, query heads, key/value heads, head
// dim, and which graph.
struct AttnProblem {
  int B = 0, T = 0, NH = 0, NKV = 0, hd = 0;
  bool backward = false;
  // Backward only: dQ = dS K written straight to dQ instead of summed into
  // an fp32 accumulator with atomics -- the graph cuDNN's frontend builds
  // for its deterministic mode, which cuDNN runs on its dP-workspace engines
  // (deterministic; workspace ~ B NH T^2 bf16: 1.6 GB at GPT-2's batch 64).
  bool deterministic = false;
};

// Loads libcudnn (once per process). Empty when loaded, else why not (the
// library name tried, dlerror, or a missing symbol).
const std::string& LoadError();
// "cuDNN 9.19.0 (libcudnn.so.9)" when loaded, else LoadError().
std::string Describe();

// Why cuDNN's attention cannot take this problem at all (shape limits of
// this integration: head dim, sequence length multiple of 128, GQA grouping),
// or "" if it may try.
std::string Unsupported(const AttnProblem& p);

// Builds and finalizes every tensor and operation descriptor of the
// problem's graph -- everything short of the operation graph, which needs a
// cuDNN handle and so a GPU. Returns "" or the first failure, naming the
// descriptor, the attribute, cuDNN's status and its last error message.
// *n_ops (if given) receives the number of operations. For tests without a
// GPU: it checks every attribute's type, count and value against the
// library.
std::string CheckGraphDescriptors(const AttnProblem& p, int* n_ops = nullptr);

// cuDNN attention graphs executed so far in this process (forward and
// backward): lets tests and benchmarks tell a cuDNN run from a fallback.
int64_t Executions();

}  // namespace llmt::kernels::cuda::cudnn
