#!/usr/bin/env python3
"""Per-op reference timings in PyTorch for the GPT-2 124M step shapes, to set
beside `LLMT_CUDA_PROFILE=1 bench_gpu_train` (which prints llmt's GPU time per
op group): attention (SDPA) forward and backward -- PyTorch's pick, then each
of the flash, cuDNN and memory-efficient backends alone -- the block GEMMs, the
classifier GEMM, LayerNorm and GELU. Prints one line per op: median ms over
repeats, and TFLOP/s for the GEMMs and attention.

  python3 bench/gpu/torch_ops.py [--batch 64] [--seq 1024] [--attention-only]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--attention-only", action="store_true", help="stop after the attention rows")
    a = ap.parse_args()
    B, T, C, NH, V, L = a.batch, a.seq, 768, 12, 50304, 12
    N = B * T
    hd = C // NH
    dev, dt = "cuda", torch.bfloat16
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: B={B} T={T} "
          f"(per call; x{L} layers per step where it applies)")

    q, k, v = (torch.randn(B, NH, T, hd, device=dev, dtype=dt, requires_grad=True)
               for _ in range(3))
    att_flops = 4 * B * NH * T * T * hd / 2  # causal forward
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    g = torch.randn_like(out)
    ms = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    print(f"  attention_fwd        {ms:8.3f} ms  {att_flops / ms / 1e9:7.1f} TFLOP/s")
    def fb():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.backward(g)
    ms_fb = timeit(fb)
    print(f"  attention_bwd        {ms_fb - ms:8.3f} ms  {2.5 * att_flops / (ms_fb - ms) / 1e9:7.1f} TFLOP/s")
    # Each SDPA backend on its own (the default row above is whichever PyTorch
    # picks): cuDNN's row says what llmt's LLMT_ATTN_FWD/BWD=cudnn can reach.
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                    ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    except ImportError as e:  # older PyTorch
        backends = []
        print(f"  (per-backend rows skipped: {e})")
    for name, be in backends:
        try:
            with sdpa_kernel([be]):
                f_ms = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                fb_ms = timeit(fb)
            print(f"  attention_fwd_{name:<10}{f_ms:8.3f} ms  {att_flops / f_ms / 1e9:7.1f} TFLOP/s")
            print(f"  attention_bwd_{name:<10}{fb_ms - f_ms:8.3f} ms  "
                  f"{2.5 * att_flops / (fb_ms - f_ms) / 1e9:7.1f} TFLOP/s")
        except Exception as e:  # a backend that cannot take this shape here
            print(f"  attention_{name}: not available ({str(e).splitlines()[0][:120]})")
    if a.attention_only:
        return

    x = torch.randn(N, C, device=dev, dtype=dt)
    for name, K, M in (("qkv", C, 3 * C), ("attn_out", C, C), ("fc", C, 4 * C), ("proj", 4 * C, C),
                       ("classifier", C, V)):
        xi = torch.randn(N, K, device=dev, dtype=dt)
        w = torch.randn(K, M, device=dev, dtype=dt)
        ms = timeit(lambda: xi @ w)
        print(f"  matmul_{name + '_fwd':<14}{ms:8.3f} ms  {2 * N * K * M / ms / 1e9:7.1f} TFLOP/s")
    w = torch.ones(C, device=dev, dtype=dt, requires_grad=True)
    b = torch.zeros(C, device=dev, dtype=dt, requires_grad=True)
    xr = torch.randn(N, C, device=dev, dtype=dt, requires_grad=True)
    ms = timeit(lambda: F.layer_norm(xr, (C,), w, b))
    print(f"  layernorm_fwd        {ms:8.3f} ms")
    y = F.layer_norm(xr, (C,), w, b)
    gy = torch.randn_like(y)
    ms2 = timeit(lambda: torch.autograd.grad(F.layer_norm(xr, (C,), w, b), (xr, w, b), gy))
    print(f"  layernorm_fwd+bwd    {ms2:8.3f} ms")
    h = torch.randn(N, 4 * C, device=dev, dtype=dt)
    ms = timeit(lambda: F.gelu(h, approximate="tanh"))
    print(f"  gelu_fwd             {ms:8.3f} ms")


if __name__ == "__main__":
    main()
