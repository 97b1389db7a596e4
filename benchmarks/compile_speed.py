"""What ``compile=true`` and ``precision=bf16`` do on this machine, for the ``multi30k`` model: training
tokens/s (fp32, fp32 + compile, bf16, bf16 + compile; the same batches, one step of each in turn, so that
machine noise hits all alike; compile time reported apart) and decoding sentences/s of a trained run
(greedy and beam 5; eager fp32, compiled fp32, bf16 weights; alternating, after a warm-up).

    python benchmarks/compile_speed.py --data DATA [--steps 30] [--run RUN --test test.de --limit 512]

DATA is a Multi30k token store (``qkv prepare``); RUN a trained ``multi30k`` run.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import torch

import qkv
from qkv.data import iter_lines
from qkv.data.store import BucketStream, TokenStore
from qkv.env import summary_line
from qkv.models import TransformerConfig, build_transformer
from qkv.recipes import recipe
from qkv.train import make_optimizer, train_step

VARIANTS = {"fp32": ("fp32", False), "fp32+compile": ("fp32", True), "bf16": ("bf16", False)}
VARIANTS["bf16+compile"] = ("bf16", True)


def training(cfg: TransformerConfig, batches: list[Any], warmup: int) -> dict[str, dict[str, float]]:
    """Tokens/s of each variant over the batches after ``warmup`` (the warm-up's seconds hold compiling)."""
    tc = recipe("multi30k").train
    runs = {}
    for name, (precision, compiled) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_transformer(cfg).train()
        runs[name] = (
            torch.compile(model) if compiled else model,
            make_optimizer(model, tc),
            type(tc)(**{**vars(tc), "precision": precision}),
        )
    seconds = {name: [0.0, 0.0] for name in VARIANTS}  # warm-up, timed
    tokens = 0
    for i, batch in enumerate(batches):
        for name, (model, opt, c) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opt, [batch], c, i + 1)
            seconds[name][i >= warmup] += time.perf_counter() - t0
        tokens += batch.num_target_tokens if i >= warmup else 0
    return {n: {"tokens_per_second": tokens / s[1], "warmup_seconds": s[0]} for n, s in seconds.items()}


def decoding(run_dir: str, sentences: list[str], rounds: int = 2) -> dict[str, dict[int, float]]:
    """Sentences/s of each way of loading the run, greedy and beam 5, best of ``rounds`` alternating rounds."""
    loads = {
        "fp32": qkv.load(run_dir, device="cpu"),
        "fp32+compile": qkv.load(run_dir, device="cpu", compile=True),
        "bf16": qkv.load(run_dir, device="cpu", precision="bf16"),
    }
    for run in loads.values():  # warm-up (compiles the shapes decoding meets)
        for beam in (1, 5):
            run.translate(sentences[:128], beam=beam)
    best: dict[str, dict[int, float]] = {name: {1: 0.0, 5: 0.0} for name in loads}
    for _, beam, (name, run) in itertools.product(range(rounds), (1, 5), loads.items()):
        t0 = time.perf_counter()
        run.translate(sentences, beam=beam)
        best[name][beam] = max(best[name][beam], len(sentences) / (time.perf_counter() - t0))
    return best


def main() -> None:
    """Run the benchmark and print one table per part."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a Multi30k token store (qkv prepare)")
    p.add_argument("--steps", type=int, default=30, help="training steps per variant (the first 5 warm up)")
    p.add_argument("--run", help="a trained multi30k run, for decoding")
    p.add_argument("--test", help="source sentences to decode (with --run)")
    p.add_argument("--limit", type=int, default=512, help="most test sentences to decode")
    a = p.parse_args()
    print(summary_line())
    rc = recipe("multi30k")
    store = TokenStore(a.data)
    tok = store.tokenizers[0]
    ids = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
    stream = BucketStream(store, rc.task.max_len, rc.train.max_tokens, seed=0, ids=ids)
    batches = [stream.next_batch() for _ in range(a.steps)]
    cfg = TransformerConfig(**{**vars(rc.model), "src_vocab_size": len(tok), "tgt_vocab_size": len(tok)})
    train = training(cfg, batches, warmup=5)
    base = train["fp32"]["tokens_per_second"]
    print(f"training ({a.steps - 5} timed steps, max_tokens {rc.train.max_tokens}):")
    for name, r in train.items():
        print(
            f"  {name:13s} {r['tokens_per_second']:8,.0f} tok/s  {r['tokens_per_second'] / base:.2f}x fp32   "
            f"(first 5 steps: {r['warmup_seconds']:.1f} s)"
        )
    if a.run and a.test:
        sentences = list(itertools.islice(iter_lines(a.test), a.limit))
        dec = decoding(a.run, sentences)
        print(f"decoding ({len(sentences)} sentences, batch 64):")
        for name, r in dec.items():
            print(
                f"  {name:13s} greedy {r[1]:6.1f} sent/s ({r[1] / dec['fp32'][1]:.2f}x)   "
                f"beam 5 {r[5]:6.1f} sent/s ({r[5] / dec['fp32'][5]:.2f}x)"
            )


if __name__ == "__main__":
    main()
