#!/usr/bin/env python3
"""PyTorch reference for p2bw's model and optimizer (tests/model/test_torch_reference.cpp).

Reads IN.h5 written by the C++ test: model dimensions and training settings as attributes,
/weights/<name> (the initial weights, p2bw's tensor names, unpadded), /tokens and /targets
(steps, m, b, T) and /lr (steps). Builds the same GPT or BERT in float64, then writes OUT.h5:
/logits (b, T, V) and /loss0 of the first microbatch at the initial weights, /grads/<name> of the
first step, /losses (steps) and /grad_norms (steps) of every step, and /final/<name>, the
weights after all steps of AdamW with global-norm clipping.

With the attribute bf16 = 1 the model applies p2bw's bf16 rounding points (model::StageModel,
model.precision: bf16) in float64 arithmetic: the weights used in compute are bf16(master) (a
straight-through rounding: the gradient reaches the float64 master unrounded), every stored
activation is rounded to bf16 in forward (R) and every activation gradient p2bw rounds is rounded
in backward (R's backward, and G where p2bw rounds a LayerNorm's input gradient before it is
added to the residual stream's). The rounding goes float64 -> float32 -> bf16, both
round-to-nearest-even, as p2bw's float results are rounded; torch's float32 -> bfloat16 is RNE.
Usage: torch_reference.py IN.h5 OUT.h5"""
import math
import sys

import h5py
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
BF16 = False  # set from the input's bf16 attribute


def rb(x):
    """x rounded to the nearest bf16 value (via float32), back in float64."""
    return x.to(torch.float32).to(torch.bfloat16).to(torch.float64)


class Round(torch.autograd.Function):
    """A stored activation: rounded in forward, its gradient rounded in backward."""

    @staticmethod
    def forward(ctx, x):
        return rb(x)

    @staticmethod
    def backward(ctx, g):
        return rb(g)


class GradRound(torch.autograd.Function):
    """The identity in forward; the gradient rounded in backward (a LayerNorm's input gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return rb(g)


def R(x):
    return Round.apply(x) if BF16 else x


def G(x):
    return GradRound.apply(x) if BF16 else x


def bias_gelu(pre):
    """The fc layer's GELU: under bf16 p2bw stores the pre-activation (bias included) as bf16 and
    GELU reads that stored value; its output is stored as bf16 too."""
    return R(F.gelu(R(pre), approximate="tanh"))


class Model(torch.nn.Module):
    def __init__(self, a, weights):
        super().__init__()
        self.kind, self.L, self.C, self.NH = a["kind"], int(a["layers"]), int(a["hidden"]), int(a["heads"])
        self.p = torch.nn.ParameterDict()
        for name, value in weights.items():
            self.p[name.replace("/", "__")] = torch.nn.Parameter(torch.tensor(value))

    def w(self, name):
        p = self.p[name.replace("/", "__")]
        # bf16: the compute copy bf16(master); the gradient goes to the master unchanged.
        return p + (rb(p) - p).detach() if BF16 else p

    def forward(self, tokens, targets):
        B, T = tokens.shape
        C, NH = self.C, self.NH
        wte = self.w("embedding/wte")  # tied: the LM head uses the same Parameter
        x = R(wte[tokens] + self.w("embedding/wpe")[:T])
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)) if self.kind == "gpt" else None
        for l in range(self.L):
            p = f"blocks/{l}/"
            h = R(F.layer_norm(G(x), (C,), self.w(p + "ln1/weight"), self.w(p + "ln1/bias"), 1e-5))
            qkv = R(h @ self.w(p + "attn/qkv/weight").T + self.w(p + "attn/qkv/bias"))
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in qkv.split(C, dim=2))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // NH)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            y = R((F.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(B, T, C))
            x = R(x + R(y @ self.w(p + "attn/proj/weight").T + self.w(p + "attn/proj/bias")))
            h = R(F.layer_norm(G(x), (C,), self.w(p + "ln2/weight"), self.w(p + "ln2/bias"), 1e-5))
            h = bias_gelu(h @ self.w(p + "mlp/fc/weight").T + self.w(p + "mlp/fc/bias"))
            x = R(x + R(h @ self.w(p + "mlp/proj/weight").T + self.w(p + "mlp/proj/bias")))
        x = R(F.layer_norm(G(x), (C,), self.w("head/lnf/weight"), self.w("head/lnf/bias"), 1e-5))
        logits = R(x @ wte.T)
        # Mean over positions with a target; 0 when a BERT microbatch has none (as p2bw).
        total = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=-1, reduction="sum")
        return logits, total / max(int((targets >= 0).sum()), 1)


def main():
    with h5py.File(sys.argv[1], "r") as f:
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        weights = {}
        f["weights"].visititems(lambda n, d: weights.__setitem__(n, d[()]) if isinstance(d, h5py.Dataset) else None)
        tokens = torch.tensor(f["tokens"][()], dtype=torch.long)
        targets = torch.tensor(f["targets"][()], dtype=torch.long)
        lrs = f["lr"][()]
    global BF16
    BF16 = int(a.get("bf16", 0)) == 1
    model = Model(a, weights)
    # Weight decay on matrices only (embeddings and linear weights), as p2bw does.
    decay = [p for p in model.p.values() if p.dim() == 2]
    no_decay = [p for p in model.p.values() if p.dim() != 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(a["weight_decay"])},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=float(lrs[0]), betas=(float(a["beta1"]), float(a["beta2"])), eps=float(a["eps"]))
    steps, m = tokens.shape[0], tokens.shape[1]
    out = h5py.File(sys.argv[2], "w")
    losses, norms = [], []
    for step in range(steps):
        optimizer.zero_grad()
        total = 0.0
        for j in range(m):
            logits, loss = model(tokens[step, j], targets[step, j])
            if step == 0 and j == 0:
                out["logits"] = logits.detach().numpy()
                out["loss0"] = loss.item()
            (loss / m).backward()
            total += loss.item() / m
        losses.append(total)
        if step == 0:  # before clipping scales them
            for n, p in model.p.items():
                out["grads/" + n.replace("__", "/")] = p.grad.numpy()
        norm = torch.nn.utils.clip_grad_norm_(model.p.values(), float(a["grad_clip"]))
        norms.append(norm.item())
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[step])
        optimizer.step()
    out["losses"] = losses
    out["grad_norms"] = norms
    for n, p in model.p.items():
        out["final/" + n.replace("__", "/")] = p.detach().numpy()
    out.close()


if __name__ == "__main__":
    main()
