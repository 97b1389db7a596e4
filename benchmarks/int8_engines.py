"""fbgemm's and oneDNN's int8 products side by side: where ``qkv.linear.int8_engine`` picks oneDNN.

1. Every weight shape of a run's linear maps (or ``--shapes``) at a range of row counts: the time of
   fbgemm's dynamic int8 product divided by oneDNN's (>1: oneDNN is faster), both on one packed weight,
   warm, alternating, median of ``--reps`` calls; ``*`` marks the products ``int8_engine`` gives oneDNN
   (on a CPU where ``onednn_int8_available()``).
2. With ``--src``: ``translate`` on int8 weights with the rule against fbgemm alone (the rule switched off
   in this process), in alternating rounds (best of each), greedy and at the given beam widths; and the
   share of translations that are identical (and, with ``--ref``, each side's BLEU).

    python benchmarks/int8_engines.py --run RUN [--src test_2016_flickr.de --ref test_2016_flickr.en] \
        [--beams 1,5] [--rounds 3]
    python benchmarks/int8_engines.py --shapes 768x768,3072x768,50257x768
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import qkv
import qkv.linear
from qkv.api import Run
from qkv.data import read_lines
from qkv.env import summary_line
from qkv.families.translation import bleu_scores
from qkv.linear import Linear, _int8_pack, int8_engine, onednn_int8_available

ROWS = (1, 8, 16, 32, 64, 128, 320, 1280)


def median_us(f: Callable[[], object], reps: int) -> float:
    """Median wall time of ``f()`` in microseconds, after three warm-up calls."""
    for _ in range(3):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def product_us(x: torch.Tensor, packed: object, reps: int) -> float:
    """Median time of one dynamic int8 product of x with a packed weight, in microseconds."""
    return median_us(lambda: torch.ops.quantized.linear_dynamic(x, packed, False), reps)


def shape_table(shapes: list[tuple[int, int]], reps: int) -> None:
    """Print fbgemm time / oneDNN time for each (out, in) shape at each row count in ROWS."""
    print(f"{'out x in':>12} " + " ".join(f"{n:>7}" for n in ROWS) + "   (fbgemm / oneDNN; * = oneDNN's)")
    g = torch.Generator().manual_seed(0)
    for out_f, in_f in shapes:
        w, b = torch.randn(out_f, in_f, generator=g) * 0.05, torch.randn(out_f, generator=g) * 0.01
        fbgemm, onednn = _int8_pack(w, b), _int8_pack(w, b, engine="onednn")
        cells = []
        for n in ROWS:
            x = torch.randn(n, in_f, generator=g)
            ratio = product_us(x, fbgemm, reps) / product_us(x, onednn, reps)
            cells.append(f"{ratio:6.2f}" + ("*" if int8_engine(n, out_f, in_f) == "onednn" else " "))
        print(f"{out_f:>6}x{in_f:<5} " + " ".join(cells))


def translate_ab(run: Run, src: list[str], ref: list[str] | None, beams: list[int], rounds: int) -> None:
    """Translate with int8_engine's rule and with fbgemm alone, alternating rounds; print the ratio (and
    each side's BLEU against ``ref``)."""
    rule = qkv.linear.int8_engine
    sides = {"rule": rule, "fbgemm": lambda rows, out_f, in_f: "fbgemm"}
    for beam in beams:
        best, outputs = dict.fromkeys(sides, float("inf")), {}
        for _ in range(rounds):
            for name, engine in sides.items():
                qkv.linear.int8_engine = engine  # Linear looks it up at each call
                try:
                    t0 = time.perf_counter()
                    outputs[name] = run.translate(src, beam=beam)
                    best[name] = min(best[name], time.perf_counter() - t0)
                finally:
                    qkv.linear.int8_engine = rule
        same = sum(a == b for a, b in zip(outputs["rule"], outputs["fbgemm"], strict=True))
        bleu = {name: f", BLEU {bleu_scores(out, ref)['bleu']:.2f}" if ref else "" for name, out in outputs.items()}
        print(
            f"beam {beam}: rule {len(src) / best['rule']:.1f} sent/s{bleu['rule']}, fbgemm alone "
            f"{len(src) / best['fbgemm']:.1f} sent/s{bleu['fbgemm']}: {best['fbgemm'] / best['rule']:.2f}x; "
            f"{same}/{len(src)} translations identical"
        )


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a run directory: its linear maps' shapes (and, with --src, its translations)")
    p.add_argument("--shapes", help="weight shapes OUTxIN, comma-separated (instead of a run's)")
    p.add_argument("--src", help="source sentences to translate with the run, one per line")
    p.add_argument("--ref", help="reference translations of --src (for BLEU)")
    p.add_argument("--beams", default="1,5", help="beam widths, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=30, help="calls per product timing")
    a = p.parse_args()
    if not (a.run or a.shapes) or (a.src and not a.run):
        p.error("give --run (optionally with --src) or --shapes")
    print(f"{summary_line()}; onednn_int8_available() = {onednn_int8_available()}")
    run = qkv.load(a.run, device="cpu", quantize="int8") if a.run else None
    if a.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in a.shapes.split(",")]
    else:
        shapes = sorted({(m.out_features, m.in_features) for m in run.model.modules() if isinstance(m, Linear)})
    shape_table(shapes, a.reps)  # type: ignore[arg-type]
    if a.src:
        ref = read_lines(a.ref) if a.ref else None
        translate_ab(run, read_lines(a.src), ref, [int(b) for b in a.beams.split(",")], a.rounds)


if __name__ == "__main__":
    main()
