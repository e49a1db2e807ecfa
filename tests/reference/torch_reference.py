#!/usr/bin/python3
"""Independent PyTorch reference for llmt's CPU engine.

Reads a case directory written by reference_test.cc:
  case.json           config, batches, the engine's loss and AdamW losses
  model.safetensors   the engine's initial weights (Hugging Face names/layouts)
  outputs.safetensors the engine's logits ("logits") and gradients ("grad.<name>")
builds the same model in plain torch (float64; no `transformers`), and checks
  * logits, loss and EVERY parameter gradient: relative L2 error
    ||engine - torch||_2 / ||torch||_2 <= 1e-4 per tensor;
  * ten torch.optim.AdamW steps (same lr, betas, eps, weight decay with
    no-decay on norms/biases): per-step loss relative error <= 1e-4.
Prints a line per check and "REFERENCE OK" on success; exits 1 on failure.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

TOL = 1e-4


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        shape = info["shape"]
        if e == b:
            out[name] = torch.zeros(shape, dtype=torch.float32)
        else:
            out[name] = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).reshape(shape)
    return out


def causal_attention(q, k, v):
    # q [B, NH, T, hd], k/v [B, NH, T, hd]
    T, hd = q.shape[-2], q.shape[-1]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att, dim=-1) @ v


def gpt2_logits(P, idx, cfg):
    B, T = idx.shape
    C, NH = cfg["d_model"], cfg["n_head"]
    hd, eps = C // NH, cfg["norm_eps"]
    x = P["wte.weight"][idx] + P["wpe.weight"][:T]
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]  # Conv1D: [in, out]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(B, T, NH, hd).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        h = F.gelu(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps)
    return x @ P["wte.weight"].T  # tied


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def llama_logits(P, idx, cfg):
    B, T = idx.shape
    C, NH, NKV = cfg["d_model"], cfg["n_head"], cfg["n_kv_head"]
    hd, eps = C // NH, cfg["norm_eps"]
    # Hugging Face LlamaRotaryEmbedding (float32 inv_freq), rotate_half convention.
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(P["lm_head.weight"].dtype), emb.sin().to(P["lm_head.weight"].dtype)
    x = P["model.embed_tokens.weight"][idx]
    for l in range(cfg["n_layer"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = (h @ P[p + "self_attn.q_proj.weight"].T).view(B, T, NH, hd).transpose(1, 2)
        k = (h @ P[p + "self_attn.k_proj.weight"].T).view(B, T, NKV, hd).transpose(1, 2)
        v = (h @ P[p + "self_attn.v_proj.weight"].T).view(B, T, NKV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // NKV, dim=1)  # HF repeat_kv
        v = v.repeat_interleave(NH // NKV, dim=1)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
        g = h @ P[p + "mlp.gate_proj.weight"].T
        u = h @ P[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ P[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, P["model.norm.weight"], eps)
    return x @ P["lm_head.weight"].T


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def main():
    case_dir = sys.argv[1]
    case = json.load(open(f"{case_dir}/case.json"))
    cfg = case["config"]
    fam = cfg["family"]
    logits_fn = gpt2_logits if fam == "gpt2" else llama_logits
    weights = read_safetensors(f"{case_dir}/model.safetensors")
    outputs = read_safetensors(f"{case_dir}/outputs.safetensors")
    names = [p["name"] for p in case["params"]]
    assert sorted(names) == sorted(weights), "model.safetensors names differ from params_info"
    for p in case["params"]:
        assert list(weights[p["name"]].shape) == p["shape"], p["name"]
    failures = []

    def check(what, err, tol=TOL):
        ok = err <= tol
        print(f"{'ok  ' if ok else 'FAIL'} {fam} {what}: rel err {err:.3e} (tol {tol:.0e})")
        if not ok:
            failures.append(what)

    # ---- logits, loss, gradients in float64 ----
    P = {k: v.double().clone().requires_grad_(True) for k, v in weights.items()}
    idx = torch.tensor(case["inputs"][0], dtype=torch.long)
    tgt = torch.tensor(case["targets"][0], dtype=torch.long)
    logits = logits_fn(P, idx, cfg)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    loss.backward()
    check("logits", rel_err(outputs["logits"], logits.detach()))
    check("loss", abs(case["loss"] - loss.item()) / abs(loss.item()))
    worst = 0.0
    for name in names:
        err = rel_err(outputs["grad." + name], P[name].grad)
        worst = max(worst, err)
        if err > TOL:
            check("grad " + name, err)
    check(f"all {len(names)} parameter gradients (worst)", worst)

    # ---- ten AdamW steps with torch.optim.AdamW ----
    opt_cfg = case["adamw"]
    P = {k: v.double().clone().requires_grad_(True) for k, v in weights.items()}
    decay = [P[p["name"]] for p in case["params"] if p["decay"]]
    no_decay = [P[p["name"]] for p in case["params"] if not p["decay"]]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg["lr"], betas=(opt_cfg["beta1"], opt_cfg["beta2"]), eps=opt_cfg["eps"])
    torch_losses = []
    for step in range(len(case["adamw_losses"])):
        idx = torch.tensor(case["inputs"][step], dtype=torch.long)
        tgt = torch.tensor(case["targets"][step], dtype=torch.long)
        opt.zero_grad()
        logits = logits_fn(P, idx, cfg)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
    errs = [abs(a - b) / abs(b) for a, b in zip(case["adamw_losses"], torch_losses)]
    print(f"     {fam} adamw losses engine {['%.6f' % x for x in case['adamw_losses']]}")
    print(f"     {fam} adamw losses torch  {['%.6f' % x for x in torch_losses]}")
    check(f"{len(errs)} AdamW step losses (worst)", max(errs))
    if torch_losses[-1] >= torch_losses[0]:
        print(f"FAIL {fam} AdamW did not reduce the loss")
        failures.append("adamw progress")

    if failures:
        print(f"REFERENCE FAILED: {', '.join(failures)}")
        sys.exit(1)
    print("REFERENCE OK")


if __name__ == "__main__":
    main()
