"""The Tiny Shakespeare anchor's recipe in plain PyTorch, to set qkv's validation loss beside it.

A small, independent implementation of the reference configuration (nanoGPT's laptop-CPU example,
written from its description, not from its code): character tokens, first 90% train / last 10%
validation, context 64, batch 12, 4 pre-LN layers, 4 heads, d_model 128, GELU, learned positions, tied
embeddings, no biases, dropout 0, 2,000 iterations of AdamW (lr 1e-3, β2 0.99, weight decay 0.1 on
matrices and embeddings, clip 1.0), linear warmup 100, cosine decay to 1e-4, initial weights
N(0, init_std²) with the residual projections scaled by 1/√(2N).

It prints the loss over every non-overlapping window of the validation split (what ``qkv evaluate``
reports for a language-model run), the minutes of training and tokens/s; with ``--qkv [KEY=VALUE …]`` it
then trains ``qkv train shakespeare-char`` in the same process and prints the same figures and the ratio
of tokens/s (side by side, one machine):

    python benchmarks/shakespeare_reference.py --text ../shared/data/tinyshakespeare/input.txt \
        [--seed 0] [--init-std 0.02] [--precision fp32|bf16] [--qkv [compile=true] [precision=bf16]]
    python benchmarks/shakespeare_reference.py --text … [--init-std S] --profile 20  # where a step's time goes
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


def adamw(model: nn.Module) -> torch.optim.AdamW:
    """AdamW with β2 0.99 and weight decay 0.1 on matrices and embeddings only."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, betas=(0.9, 0.99))


def random_batch(train: Tensor) -> tuple[Tensor, Tensor]:
    """BATCH windows of CONTEXT tokens at random places and the same windows one token on: (B, T) each."""
    starts = torch.randint(len(train) - CONTEXT, (BATCH,)).tolist()
    x = torch.stack([train[s : s + CONTEXT] for s in starts])
    return x, torch.stack([train[s + 1 : s + 1 + CONTEXT] for s in starts])


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, bf16: bool = False) -> None:
    """Forward, cross-entropy, backward, clipping at 1.0, the optimizer's step; with ``bf16`` the forward
    and the loss in torch's bf16 autocast (fp32 weights and optimizer), as qkv's ``precision=bf16``."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def encode(text: str) -> tuple[int, Tensor, Tensor]:
    """The vocabulary size and the first 90% / last 10% of the text as character ids."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text])
    n = int(0.9 * len(data))
    return len(chars), data[:n], data[n:]


def profile(text: str, steps: int, seed: int, init_std: float, bf16: bool = False) -> None:
    """Operator time of a training step by family, the reference's model against qkv's at this configuration
    (the same batches and the same plain loop), and the speed-up bound the reference's matrix products and
    attention kernel leave to any implementation that runs them as fast (both in fp32, or both in bf16)."""
    import dataclasses

    from op_families import family_times, shares, training_family  # beside this script
    from torch.profiler import profile as torch_profile

    from qkv.models.gpt import GPT
    from qkv.recipes import recipe

    vocab, train, _ = encode(text)
    torch.manual_seed(seed)
    batches = [random_batch(train) for _ in range(steps + 3)]
    cfg = dataclasses.replace(recipe("shakespeare-char").model, vocab_size=vocab, init_std=init_std)
    for name, model in (("reference", TinyGPT(vocab, init_std)), ("qkv", GPT(cfg))):
        opt = adamw(model)
        for batch in batches[:3]:
            train_step(model, opt, *batch, bf16=bf16)
        with torch_profile() as prof:
            for batch in batches[3:]:
                train_step(model, opt, *batch, bf16=bf16)
        times = family_times(prof, training_family)
        total = sum(times.values())
        print(f"profile, {name} ({steps} steps, {total / steps / 1e3:.1f} ms of operators a step): {shares(times)}")
        if name == "reference":
            kernels = times.get("matrix products", 0.0) + times.get("attention kernel", 0.0)
            print(f"  bound: {total / kernels:.2f}x the reference with every other operator free")


def reference(text: str, seed: int, init_std: float, bf16: bool = False) -> dict[str, float]:
    """Train the reference once (in fp32, or with ``bf16`` in bf16 autocast): minutes of training, tokens/s,
    and the whole-split validation loss (in fp32)."""
    vocab, train, valid = encode(text)
    torch.manual_seed(seed)
    model = TinyGPT(vocab, init_std)
    opt = adamw(model)
    t0 = time.perf_counter()
    for it in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        train_step(model, opt, *random_batch(train), bf16=bf16)
    seconds = time.perf_counter() - t0
    model.eval()
    windows = (len(valid) - 1) // CONTEXT
    x = valid[: windows * CONTEXT].view(windows, CONTEXT)
    y = valid[1 : windows * CONTEXT + 1].view(windows, CONTEXT)
    with torch.no_grad():
        total = sum(
            F.cross_entropy(model(x[i : i + 256]).flatten(0, 1), y[i : i + 256].flatten(), reduction="sum").item()
            for i in range(0, windows, 256)
        )
    return {
        "train_minutes": round(seconds / 60, 3),
        "tokens_per_second": round(STEPS * BATCH * CONTEXT / seconds, 1),
        "valid_loss": round(total / y.numel(), 4),
    }


def qkv_run(text_path: str, seed: int, overrides: list[str]) -> dict[str, float]:
    """Train ``qkv train shakespeare-char`` once (in this process), the same way: its own minutes of
    training (evaluations excluded), tokens/s, and ``qkv evaluate``'s whole-split validation loss."""
    import tempfile
    from pathlib import Path

    import qkv
    from qkv.recipes import recipe
    from qkv.train import train

    out = Path(tempfile.mkdtemp(prefix="qkv-shakespeare-")) / "run"
    cfg = recipe("shakespeare-char")
    summary = train(cfg, out, overrides=[f"task.path={text_path}", f"seed={seed}", *overrides], progress=False)
    loss = qkv.load(out).evaluate()["loss"]
    return {
        "train_minutes": summary["train_minutes"],
        "tokens_per_second": summary["tokens_per_second"],
        "valid_loss": round(loss, 4),
    }


def main() -> None:
    """Train the reference (and, with --qkv, qkv's recipe in the same process) and print what each reached."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.02, help="0.02 is GPT-2's; qkv's default for width 128 is 0.056")
    p.add_argument(
        "--qkv",
        nargs="*",
        metavar="KEY=VALUE",
        help="also train `qkv train shakespeare-char` (with these overrides, e.g. compile=true) and compare",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the reference's training precision: fp32 (as nanoGPT trains on a CPU) or bf16 autocast",
    )
    p.add_argument("--profile", type=int, metavar="STEPS", help="only profile STEPS training steps of each model")
    a = p.parse_args()
    if a.profile is not None and (a.profile < 1 or a.qkv is not None):
        p.error("--profile takes a number of steps >= 1, and profiles the recipe as it is (without --qkv)")
    text = open(a.text, encoding="utf-8").read()
    from qkv.env import summary_line

    print(summary_line())
    if a.profile is not None:
        profile(text, a.profile, a.seed, a.init_std, bf16=a.precision == "bf16")
        return
    ref = reference(text, a.seed, a.init_std, bf16=a.precision == "bf16")
    print(f"reference (seed {a.seed}, init_std {a.init_std}, {a.precision}): {ref}", flush=True)
    if a.qkv is not None:
        mine = qkv_run(a.text, a.seed, a.qkv)
        print(f"qkv shakespeare-char {' '.join(a.qkv)}: {mine}")
        print(f"qkv / reference tokens/s: {mine['tokens_per_second'] / ref['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
