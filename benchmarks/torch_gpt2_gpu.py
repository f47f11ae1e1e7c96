#!/usr/bin/env python3
"""GPT-2 124M forward + backward in PyTorch on one GPU: the reference for `p2bw bench` at
B = 16, T = 1024 (the bundle's gpu-check runs both). Shares no code with p2bw: a plain nanoGPT-style
model (pre-LN blocks, GELU tanh, tied LM head, vocabulary padded to 50304 as p2bw pads to a
multiple of 64) timed with CUDA events, the same work as bench's "model" row (forward, loss,
backward; no optimizer step).

Modes: fp32 (no TF32), tf32 (TF32 matmuls), bf16 (autocast to bfloat16, eager), bf16-compiled
(the same under torch.compile). Prints one JSON object per mode on stdout (a mode that cannot run
here, such as bf16-compiled without torch.compile, as {"mode": ..., "skipped": reason}).
--device cpu runs the same code on the CPU, timed by the wall clock (the GPU check's dry run, with
a small model); exit code 77 when the device is missing.

  python3 torch_gpt2_gpu.py --modes fp32,tf32,bf16,bf16-compiled [--batch 16 --seq 1024]
"""
import argparse
import json
import math
import sys
import time


def build_model(torch, layers, hidden, heads, seq, vocab):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(hidden)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden)
            self.fc = nn.Linear(hidden, 4 * hidden)
            self.fc_proj = nn.Linear(4 * hidden, hidden)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q = q.view(B, T, heads, C // heads).transpose(1, 2)  # (B, H, T, C/H)
            k = k.view(B, T, heads, C // heads).transpose(1, 2)
            v = v.view(B, T, heads, C // heads).transpose(1, 2)
            if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0 (flash attention)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # older PyTorch (Debian's 1.13, for a check of the model on the CPU)
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = (q @ k.transpose(-2, -1)) / math.sqrt(C // heads)
                y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, hidden)
            self.wpe = nn.Embedding(seq, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.lnf = nn.LayerNorm(hidden)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = self.lnf(x) @ self.wte.weight.t()  # tied head, (B, T, Vp)
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def run_mode(torch, mode, args):
    cuda = args.device == "cuda"
    if mode == "bf16-compiled" and not hasattr(torch, "compile"):
        return {"mode": mode, "skipped": f"torch {torch.__version__} has no torch.compile"}
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.manual_seed(1234)
    dev = torch.device(args.device)
    model = build_model(torch, args.layers, args.hidden, args.heads, args.seq, args.vocab_padded).to(dev)
    step_fn = model
    if mode == "bf16-compiled":
        step_fn = torch.compile(model)
    g = torch.Generator(device=dev).manual_seed(1)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev, generator=g)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev, generator=g)

    def once():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
            loss = step_fn(idx, targets)
        loss.backward()
        return loss

    t0 = time.time()
    for _ in range(args.warmup):
        loss = once()
    if cuda:
        torch.cuda.synchronize()
    warm_s = time.time() - t0
    times = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=False)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        else:
            t0 = time.perf_counter()
            loss = once()
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    tokens = args.batch * args.seq
    return {
        "mode": mode,
        "tokens_per_s": tokens / median,
        "median_s": median,
        "repeats": args.repeats,
        "warmup_s": warm_s,
        "loss": float(loss.item()),
        "finite": math.isfinite(float(loss.item())),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="fp32,tf32,bf16,bf16-compiled")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args()
    args.vocab_padded = (args.vocab + 63) // 64 * 64
    try:
        import torch
    except ImportError as e:
        print(json.dumps({"skipped": f"no torch: {e}"}))
        return 77
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "torch sees no CUDA GPU", "torch": torch.__version__}))
        return 77
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                      "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"}),
          flush=True)
    for mode in args.modes.split(","):
        if mode not in ("fp32", "tf32", "bf16", "bf16-compiled"):
            print(f"torch_gpt2_gpu.py: unknown mode {mode}", file=sys.stderr)
            return 2
        print(json.dumps(run_mode(torch, mode, args)), flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
