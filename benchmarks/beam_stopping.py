"""Beam search's two stopping rules side by side in one process: the exact bound (qkv's default: a source
ends once no live beam can beat its K best ended hypotheses) against early stopping (it ends with its first
K, the rule of fairseq, CTranslate2 and transformers' ``early_stopping=True``).

Translates the same sentences with one run both ways in alternating rounds (best of each) and prints
sentences/s, the ratio, BLEU, how many translations are identical, and the decoding steps each rule spent
summed over sources.

    python benchmarks/beam_stopping.py --run RUN --src test_2016_flickr.de --ref test_2016_flickr.en \
        [--beam 5] [--quantize int8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import qkv
from qkv.data import read_lines
from qkv.decode import _Beams
from qkv.env import summary_line
from qkv.families.translation import bleu_scores


def count_source_steps() -> list[int]:
    """Make beam search count the (source, step) pairs it decodes; returns the counter, [total]."""
    counter = [0]
    check = _Beams.check_done

    def counting(self: _Beams, bound, K: int, early_stopping: bool = False) -> list[int]:
        counter[0] += len(self.live)
        return check(self, bound, K, early_stopping)

    _Beams.check_done = counting
    return counter


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--quantize", default="none", choices=("none", "int8"))
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    run = qkv.load(a.run, device="cpu", quantize=a.quantize)
    src, ref = read_lines(a.src), read_lines(a.ref)
    weights = a.quantize if a.quantize != "none" else "fp32"
    print(f"{summary_line()}; {a.run}, weights {weights}, beam {a.beam}, {len(src)} sentences")
    rules = {"exact bound": False, "early stopping": True}
    steps = count_source_steps()
    for early in rules.values():  # warm-up
        run.translate(src[:64], beam=a.beam, early_stopping=early)
    best, outputs, spent = {}, {}, {}
    for _ in range(a.rounds):
        for name, early in rules.items():
            steps[0] = 0
            t0 = time.perf_counter()
            outputs[name] = run.translate(src, beam=a.beam, early_stopping=early)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            spent[name] = steps[0]
    for name in rules:
        bleu = bleu_scores(outputs[name], ref)["bleu"]
        print(f"{name}: {len(src) / best[name]:.1f} sentences/s, BLEU {bleu:.2f}, {spent[name]:,} source-steps")
    same = sum(x == y for x, y in zip(*outputs.values(), strict=True))
    ratio = best["exact bound"] / best["early stopping"]
    print(f"early stopping / exact bound: {ratio:.2f}x the speed; identical translations {same}/{len(src)}")


if __name__ == "__main__":
    main()
