#!/usr/bin/env python3
"""PyTorch reference for bench/gpu: the same models, batch, sequence length and
optimizer as bench_gpu_train, trained the way a careful PyTorch user would
(bf16 autocast, torch.compile, scaled_dot_product_attention, fused AdamW), so
the llmt numbers have a same-machine, same-run baseline.

  torch_ref.py --model gpt2-124m|llama-350m --batch B [--seq 1024] [--steps 30]
               [--warmup 5] [--device cuda|cpu] [--tiny] [--no-compile]

Prints a `RESULT name=... impl=torch ...` line in bench_gpu_train's format.
MFU uses the same FLOPs/token (6N + 6*L*d_model*T, N = every parameter,
embeddings included, tied ones once) and the same peak (989 TFLOP/s).

If the batch does not fit in memory, the same tokens per optimizer step are
processed as 2, 4, ... micro-batches with gradient accumulation (reported as
accum=K), so throughput still compares like for like.

--device cpu --tiny runs a small config on the CPU without torch.compile (and
without bf16 autocast), to check the script where there is no GPU; it also
works with old PyTorch versions that lack scaled_dot_product_attention.
"""

import argparse
import gc
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_FLOPS = 989e12  # H100 SXM dense bf16

CONFIGS = {
    # vocab padded to 50304 like bench_gpu_train (nanoGPT/llm.c do the same).
    "gpt2-124m": dict(family="gpt2", vocab=50304, d_model=768, n_layer=12, n_head=12,
                      n_kv_head=12, d_ff=3072, max_seq=1024),
    "llama-350m": dict(family="llama", vocab=32000, d_model=1024, n_layer=24, n_head=16,
                       n_kv_head=8, d_ff=2816, max_seq=1024),
}
TINY = {
    "gpt2-124m": dict(vocab=512, d_model=64, n_layer=2, n_head=4, n_kv_head=4, d_ff=256, max_seq=64),
    "llama-350m": dict(vocab=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=176, max_seq=64),
}

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


def causal_attention(q, k, v):
    """q, k, v: [B, H, T, hd] (k/v already expanded to H heads)."""
    if HAVE_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # Only for old CPU PyTorch (the syntax check); never taken on the GPU machine.
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf")).softmax(-1)
    return att @ v


# ---------------------------------------------------------------- GPT-2
class Gpt2Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.n_head = c["n_head"]
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, c["d_ff"])
        self.mlp_proj = nn.Linear(c["d_ff"], d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class Gpt2(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = nn.Embedding(c["vocab"], c["d_model"])
        self.wpe = nn.Embedding(c["max_seq"], c["d_model"])
        self.h = nn.ModuleList(Gpt2Block(c) for _ in range(c["n_layer"]))
        self.ln_f = nn.LayerNorm(c["d_model"])
        self.lm_head = nn.Linear(c["d_model"], c["vocab"], bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        init_weights(self, c["n_layer"], ("c_proj", "mlp_proj"))

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


# ---------------------------------------------------------------- Llama
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(hd, T, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    f = torch.outer(torch.arange(T, device=device).float(), inv)
    emb = torch.cat([f, f], dim=-1)  # rotate-half layout, as Hugging Face Llama
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class LlamaBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c["d_model"], c["d_model"] // c["n_head"]
        self.n_head, self.n_kv, self.hd = c["n_head"], c["n_kv_head"], hd
        self.input_layernorm = RMSNorm(d)
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = nn.Linear(d, c["d_ff"], bias=False)
        self.up_proj = nn.Linear(d, c["d_ff"], bias=False)
        self.down_proj = nn.Linear(c["d_ff"], d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_head // self.n_kv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = causal_attention(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.o_proj(y)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["d_model"])
        self.layers = nn.ModuleList(LlamaBlock(c) for _ in range(c["n_layer"]))
        self.norm = RMSNorm(c["d_model"])
        self.lm_head = nn.Linear(c["d_model"], c["vocab"], bias=False)  # untied
        cos, sin = rope_tables(c["d_model"] // c["n_head"], c["max_seq"], 10000.0, "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        init_weights(self, c["n_layer"], ("o_proj", "down_proj"))

    def forward(self, idx, targets):
        T = idx.size(1)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def init_weights(model, n_layer, residual_names):
    """normal(0, 0.02), residual projections scaled by 1/sqrt(2L), like llmt."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02
            if name.split(".")[-1] in residual_names:
                std /= math.sqrt(2 * n_layer)
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


def count_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def percentile(xs, p):
    xs = sorted(xs)
    idx = p * (len(xs) - 1)
    lo = int(math.floor(idx))
    hi = min(len(xs) - 1, lo + 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (idx - lo)


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) if hasattr(torch.cuda, "OutOfMemoryError") \
        else "out of memory" in str(e)


def run(args, accum):
    """Returns (step_ms list, losses, n_params, micro_batch) or raises on OOM."""
    cfg = dict(CONFIGS[args.model])
    if args.tiny:
        cfg.update(TINY[args.model])
    cfg["max_seq"] = max(cfg["max_seq"], args.seq)
    dev = torch.device(args.device)
    torch.manual_seed(1337)
    model = (Gpt2 if cfg["family"] == "gpt2" else Llama)(cfg).to(dev)
    n_params = count_params(model)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt_kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    if dev.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW(groups, **opt_kw)

    fwd = model
    if dev.type == "cuda" and not args.no_compile:
        fwd = torch.compile(model)
    use_autocast = dev.type == "cuda"

    micro = args.batch // accum
    g = torch.Generator().manual_seed(1234)
    # Distinct batches drawn up front so the timed loop does no host work but the step.
    batches = [torch.randint(0, cfg["vocab"], (args.batch, args.seq + 1), generator=g) for _ in range(4)]
    batches = [(b[:, :-1].contiguous().to(dev), b[:, 1:].contiguous().to(dev)) for b in batches]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step_ms, losses = [], []
    for step in range(args.warmup + args.steps):
        xs, ys = batches[step % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i in range(accum):
            x, y = xs[i * micro:(i + 1) * micro], ys[i * micro:(i + 1) * micro]
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = fwd(x, y)
            (loss / accum).backward()
            loss_sum = loss_sum + loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        t1 = time.perf_counter()
        losses.append(float(loss_sum) / accum)
        if step >= args.warmup:
            step_ms.append((t1 - t0) * 1e3)
        elif step == 0:
            print(f"first step {t1 - t0:.1f} s (includes torch.compile)" if fwd is not model
                  else f"first step {t1 - t0:.1f} s", flush=True)
    return step_ms, losses, n_params, micro, cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(CONFIGS), default="gpt2-124m")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small config for a CPU check")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_FLOPS / 1e12)
    args = ap.parse_args()
    if args.batch <= 0 or args.steps <= 0 or args.warmup < 0 or args.seq <= 0:
        ap.error("--batch, --steps and --seq must be > 0, --warmup >= 0")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("torch_ref.py: no CUDA device visible to PyTorch", file=sys.stderr)
            return 1
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    else:
        print(f"torch {torch.__version__} on cpu", flush=True)

    accum = 1
    while True:
        try:
            step_ms, losses, n_params, micro, cfg = run(args, accum)
            break
        except RuntimeError as e:  # OutOfMemoryError subclasses RuntimeError
            if not is_oom(e) or args.batch % (accum * 2):
                raise
        # Outside the except block: the traceback (and with it the failed
        # model, optimizer and activations) is gone only once it has ended.
        print(f"micro-batch {args.batch // accum} out of memory; retrying as {accum * 2} "
              f"micro-batches of {args.batch // (accum * 2)}", flush=True)
        accum *= 2
        gc.collect()
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()
        torch.cuda.empty_cache()

    T = args.seq
    flops_per_token = 6 * n_params + 6 * cfg["n_layer"] * cfg["d_model"] * T
    median = percentile(step_ms, 0.5)
    tok_step = args.batch * T
    tps = tok_step / (median / 1e3)
    mfu = tps * flops_per_token / (args.peak_tflops * 1e12)
    mem = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else 0.0
    print(f"{args.model}: params {n_params / 1e6:.1f}M batch {args.batch} (micro {micro} x accum {accum}) "
          f"seq {T} tok/step {tok_step}  median {median:.2f} ms  p10/p90 "
          f"{percentile(step_ms, 0.1):.1f}/{percentile(step_ms, 0.9):.1f} ms  {tps:.0f} tok/s  "
          f"MFU {100 * mfu:.1f}%  loss {losses[0]:.4f}->{losses[-1]:.4f}  peak mem {mem:.1f} GiB")
    print(f"RESULT name={args.model} impl=torch batch={args.batch} seq={T} params={n_params} "
          f"tokens_per_s={tps:.1f} mfu={mfu:.4f} step_ms={median:.3f} first_loss={losses[0]:.4f} "
          f"last_loss={losses[-1]:.4f} accum={accum}", flush=True)
    return 0 if math.isfinite(losses[-1]) else 1


if __name__ == "__main__":
    sys.exit(main())
