"""Training throughput of qkv's `multi30k` model against the same shape built on torch.nn.Transformer,
and decoding speed of a trained run.

Both models see the same token-budget batches, alternating step by step in one process (and which goes
first alternates batch by batch), so that machine noise and first-use costs hit both alike. Prints target
tokens/s of each and the ratio. Each side computes the label-smoothed loss its own way: qkv as its Trainer
does (``model(src, tgt_in, target=tgt_out)``: the output projection and the loss in one pass), the reference
as plain PyTorch does
(``F.cross_entropy(..., label_smoothing=0.1)`` on float32 logits, qkv's readable reference path), and
each its own Adam: qkv's as its Trainer makes it (fused), torch's default (a loop over the parameters).
Both share the process's allocator: glibc's default, or with ``--keep-freed-memory`` the setting the qkv
command runs in (freed memory kept for reuse), which spares the reference's large float32 loss temporaries
their fresh pages at every step and so narrows the ratio.

    python benchmarks/train_speed.py --train ../shared/data/multi30k/train.de ../shared/data/multi30k/train.en \
        [--steps 30] [--profile] [--preset multi30k-30min --precision bf16] \
        [--run RUN --test ../shared/data/multi30k/test_2016_flickr.de] [--keep-freed-memory]
    python benchmarks/train_speed.py --run RUN --test ../shared/data/multi30k/test_2016_flickr.de [--profile]
        # decoding: fp32 against int8 weights (int8 and int8-mixed); --profile: also the most int8 weights could
        # gain, from fp32's weight-product time in a profiled translation
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import qkv
from qkv.api import Run
from qkv.data import read_lines
from qkv.data.store import BucketStream, prepare_store
from qkv.devices import autocast, keep_freed_memory
from qkv.layers import SinusoidalPositionalEncoding
from qkv.models import TransformerConfig, build_transformer
from qkv.objectives import label_smoothed_loss_reference
from qkv.train import TrainConfig, make_optimizer, recipe


class TorchTransformer(nn.Module):
    """The reference: qkv's embedding/positions/output layout around torch.nn.Transformer."""

    def __init__(self, cfg: TransformerConfig, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.positions = SinusoidalPositionalEncoding(cfg.d_model, cfg.max_len)
        self.drop = nn.Dropout(dropout)
        self.transformer = nn.Transformer(
            cfg.d_model, cfg.h, cfg.N, cfg.decoder_layers, cfg.d_ff, dropout, batch_first=True
        )
        self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.generator.weight = self.embed.weight
        self.scale = math.sqrt(cfg.d_model)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits."""
        x = self.drop(self.positions(self.embed(src) * self.scale))
        y = self.drop(self.positions(self.embed(tgt) * self.scale))
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), dtype=torch.bool)
        out = self.transformer(
            x,
            y,
            tgt_mask=causal,
            src_key_padding_mask=src == 0,
            memory_key_padding_mask=src == 0,
            tgt_is_causal=True,
        )
        return self.generator(out)


def qkv_loss(model: nn.Module, batch) -> torch.Tensor:
    """qkv's loss as its Trainer computes it: the model's generator and the label-smoothed loss in one pass."""
    return model(batch.src, batch.tgt_in, target=batch.tgt_out, label_smoothing=0.1).loss


def reference_loss(model: nn.Module, batch) -> torch.Tensor:
    """The plain-PyTorch loss: logits, then ``F.cross_entropy`` on a float32 copy of them."""
    return label_smoothed_loss_reference(model(batch.src, batch.tgt_in), batch.tgt_out, 0.1)


LOSSES = {"qkv": qkv_loss, "nn.Transformer": reference_loss}


def qkv_adam(model: nn.Module) -> torch.optim.Optimizer:
    """qkv's optimizer as its Trainer makes it (fused Adam where torch has the kernel), at lr 1e-4."""
    opt = make_optimizer(model, TrainConfig())
    for group in opt.param_groups:
        group["lr"] = 1e-4
    return opt


# Each side's Adam: qkv's own, and torch's as plain PyTorch code makes it (on the CPU a loop over parameters).
OPTIMIZERS = {"qkv": qkv_adam, "nn.Transformer": lambda model: torch.optim.Adam(model.parameters(), lr=1e-4)}


def step(model: nn.Module, opt: torch.optim.Optimizer, batch, loss_fn: Callable, precision: str = "fp32") -> None:
    """One training step (forward and label-smoothed loss in ``precision``'s autocast region, backward, Adam)."""
    with autocast(torch.device("cpu"), precision):
        loss = loss_fn(model, batch)
    (loss / batch.num_target_tokens).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def compare(
    cfg: TransformerConfig, batches, ref_dropout: float, precision: str = "fp32", warmup: int = 3
) -> tuple[float, float]:
    """Target tokens/s of qkv and of the reference, alternating on the same batches, both in ``precision``.
    The side that runs a batch first alternates too: the first product of a new matrix shape pays for oneDNN
    preparing its kernel (~20 ms for the vocabulary product's backward on an AMX Xeon), which the other side
    then reuses."""
    torch.manual_seed(0)
    ours = build_transformer(cfg).train()
    theirs = TorchTransformer(cfg, ref_dropout).train()
    opts = [make(m) for make, m in zip(OPTIMIZERS.values(), (ours, theirs), strict=True)]
    times = [0.0, 0.0]
    tokens = 0
    for i, batch in enumerate(batches):
        sides = list(enumerate(zip((ours, theirs), opts, LOSSES.values(), strict=True)))
        for j, (model, opt, loss_fn) in sides if i % 2 == 0 else sides[::-1]:
            t0 = time.perf_counter()
            step(model, opt, batch, loss_fn, precision)
            if i >= warmup:
                times[j] += time.perf_counter() - t0
        if i >= warmup:
            tokens += batch.num_target_tokens
    return tokens / times[0], tokens / times[1]


def profile_steps(cfg: TransformerConfig, batches, ref_dropout: float, precision: str = "fp32") -> None:
    """Each side's share of operator time by family, over the same few training steps (after warm-up)."""
    from op_families import family_times, shares, training_family  # beside this script
    from torch.profiler import profile

    torch.manual_seed(0)
    sides = {"qkv": build_transformer(cfg).train(), "nn.Transformer": TorchTransformer(cfg, ref_dropout).train()}
    for name, model in sides.items():
        opt = OPTIMIZERS[name](model)
        for batch in batches[:2]:
            step(model, opt, batch, LOSSES[name], precision)
        with profile() as prof:
            for batch in batches[2:6]:
                step(model, opt, batch, LOSSES[name], precision)
        times = family_times(prof, training_family)
        print(f"profile, {name} (4 steps, {sum(times.values()) / 4e3:.0f} ms of operators a step): {shares(times)}")


def product_bound(run: Run, sentences: list[str], beam: int, wall: float) -> str:
    """How far int8 weights could speed up fp32 decoding that takes ``wall`` seconds at most: wall / (wall −
    the weight products' operator time), the products' time measured in one profiled fp32 translation."""
    from op_families import WEIGHT_PRODUCTS, family_times  # beside this script
    from torch.profiler import profile

    with profile() as prof:
        run.translate(sentences, beam=beam)
    products = family_times(prof, lambda name: "products" if name in WEIGHT_PRODUCTS else "other")["products"] / 1e6
    return (
        f"fp32's weight products (what int8 replaces) take {products:.2f} s of its {wall:.2f} s: int8 could "
        f"reach at most {wall / (wall - products):.2f}x fp32 were its products free"
    )


def decode_speed(run_dir: str, test_src: str, limit: int, rounds: int = 2, bound: bool = False) -> None:
    """Sentences/s of greedy and beam-5 translation of the test set with a trained run, fp32 against int8
    weights (``--quantize int8`` and ``int8-mixed``), alternating rounds, best of each; with ``bound``, also
    the most int8 weights could gain (:func:`product_bound`)."""
    runs = {q: qkv.load(run_dir, device="cpu", quantize=q) for q in ("none", "int8", "int8-mixed")}
    sentences = read_lines(test_src)[:limit]
    for run in runs.values():  # warm-up: packs the weights
        run.translate(sentences[:64], beam=5)
    for beam in (1, 5):
        best = dict.fromkeys(runs, 0.0)
        for _ in range(rounds):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run.translate(sentences, beam=beam)
                best[name] = max(best[name], len(sentences) / (time.perf_counter() - t0))
        fp32 = best.pop("none")
        print(
            f"decoding, beam {beam}, {len(sentences)} sentences: fp32 {fp32:.1f} sentences/s, "
            + ", ".join(f"{q} {v:.1f} sentences/s = {v / fp32:.2f}x" for q, v in best.items())
        )
        if bound:
            print(f"  {product_bound(runs['none'], sentences, beam, len(sentences) / fp32)}")


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs=2, metavar=("SRC", "TGT"), help="training pairs (without: decoding only)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--run", help="a trained run, for decoding speed")
    p.add_argument("--test", help="source sentences to decode (with --run)")
    p.add_argument("--limit", type=int, default=1000, help="most test sentences to decode")
    p.add_argument("--profile", action="store_true", help="also: each side's operator time by family")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="both sides keep freed memory for reuse, as the qkv command does for its process (default: glibc's "
        "malloc as plain PyTorch runs, which maps large blocks afresh and faults their pages in at every step)",
    )
    p.add_argument("--preset", default="multi30k", help="the recipe whose model and token budget to use")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="both sides' training precision (autocast)"
    )
    a = p.parse_args()
    if a.keep_freed_memory:
        keep_freed_memory()
    if a.train is None:
        if not (a.run and a.test):
            p.error("give --train SRC TGT, or --run RUN --test FILE (decoding only), or both")
        decode_speed(a.run, a.test, a.limit, bound=a.profile)
        return
    rc = recipe(a.preset)
    with tempfile.TemporaryDirectory() as tmp:  # the batches training draws: a store, cut by token budget
        store = prepare_store(Path(tmp) / "data", {"train": tuple(a.train), "valid": tuple(a.train)}, vocab_size=8000)
        tok = store.tokenizers[0]
        ids = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
        stream = BucketStream(store, rc.task.max_len, rc.train.max_tokens, seed=0, ids=ids)
        batches = [stream.next_batch() for _ in range(a.steps)]
    cfg = TransformerConfig(**{**vars(rc.model), "src_vocab_size": len(tok), "tgt_vocab_size": len(tok)})
    print(
        f"{a.preset} model: d_model {cfg.d_model}, h {cfg.h}, N {cfg.N}, d_ff {cfg.d_ff}, vocab {len(tok)}, "
        f"max_tokens {rc.train.max_tokens}, {a.precision}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    ours, theirs = compare(cfg, batches, ref_dropout=cfg.dropout, precision=a.precision)
    print(
        f"training, dropout {cfg.dropout} (qkv: attention_dropout {cfg.attention_dropout}): "
        f"qkv {ours:,.0f} tok/s, nn.Transformer {theirs:,.0f} tok/s, ratio {ours / theirs:.2f}x"
    )
    cfg0 = TransformerConfig(**{**vars(cfg), "dropout": 0.0, "attention_dropout": 0.0})
    ours0, theirs0 = compare(cfg0, batches, ref_dropout=0.0, precision=a.precision)
    print(
        f"training, no dropout at all: qkv {ours0:,.0f} tok/s, nn.Transformer {theirs0:,.0f} tok/s, "
        f"ratio {ours0 / theirs0:.2f}x"
    )
    if a.profile:
        profile_steps(cfg, batches, ref_dropout=cfg.dropout, precision=a.precision)
    if a.run and a.test:
        decode_speed(a.run, a.test, a.limit, bound=a.profile)


if __name__ == "__main__":
    main()
