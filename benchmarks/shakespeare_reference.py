"""The Tiny Shakespeare anchor's recipe in plain PyTorch, to set qkv's validation loss beside it.

A small, independent implementation of the reference configuration (nanoGPT's laptop-CPU example,
written from its description, not from its code): character tokens, first 90% train / last 10%
validation, context 64, batch 12, 4 pre-LN layers, 4 heads, d_model 128, GELU, learned positions, tied
embeddings, no biases, dropout 0, 2,000 iterations of AdamW (lr 1e-3, β2 0.99, weight decay 0.1 on
matrices and embeddings, clip 1.0), linear warmup 100, cosine decay to 1e-4, initial weights
N(0, init_std²) with the residual projections scaled by 1/√(2N).

It prints the loss over every non-overlapping window of the validation split (what ``qkv evaluate``
reports for a language-model run) and the wall time:

    python benchmarks/shakespeare_reference.py --text ../shared/data/tinyshakespeare/input.txt \
        [--seed 0] [--init-std 0.02]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTEXT, BATCH, LAYERS, HEADS, WIDTH, STEPS = 64, 12, 4, 4, 128, 2000


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.up = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.down = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (z.view(B, T, HEADS, C // HEADS).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(C, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token + position embeddings, the blocks, a final LayerNorm, the tied output projection."""

    def __init__(self, vocab: int, init_std: float) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(WIDTH, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=init_std)
        for b in self.blocks:
            for m in (b.proj, b.down):
                nn.init.normal_(m.weight, std=init_std / math.sqrt(2 * LAYERS))

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, V) logits."""
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for b in self.blocks:
            x = b(x)
        return self.ln(x) @ self.tok.weight.T


def lr_at(it: int) -> float:
    """Warmup (it+1)/101 of 1e-3 for 100 iterations, then cosine to 1e-4 at iteration 2,000."""
    if it < 100:
        return 1e-3 * (it + 1) / 101
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 100) / (STEPS - 100))) * (1e-3 - 1e-4)


def main() -> None:
    """Train once and print the whole-split validation loss."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.02, help="0.02 is GPT-2's; qkv's default for width 128 is 0.056")
    a = p.parse_args()
    text = open(a.text, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text])
    n = int(0.9 * len(data))
    train, valid = data[:n], data[n:]
    torch.manual_seed(a.seed)
    model = TinyGPT(len(chars), a.init_std)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}], betas=(0.9, 0.99)
    )
    t0 = time.perf_counter()
    for it in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        starts = torch.randint(len(train) - CONTEXT, (BATCH,)).tolist()
        x = torch.stack([train[s : s + CONTEXT] for s in starts])
        y = torch.stack([train[s + 1 : s + 1 + CONTEXT] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    minutes = (time.perf_counter() - t0) / 60
    model.eval()
    windows = (len(valid) - 1) // CONTEXT
    x = valid[: windows * CONTEXT].view(windows, CONTEXT)
    y = valid[1 : windows * CONTEXT + 1].view(windows, CONTEXT)
    with torch.no_grad():
        total = sum(
            F.cross_entropy(model(x[i : i + 256]).flatten(0, 1), y[i : i + 256].flatten(), reduction="sum").item()
            for i in range(0, windows, 256)
        )
    print(
        f"seed {a.seed}, init_std {a.init_std}: validation loss {total / y.numel():.4f} over {y.numel():,} tokens, "
        f"{minutes:.2f} min of training, {STEPS * BATCH * CONTEXT / (minutes * 60):,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
