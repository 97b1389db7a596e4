"""Where a decoding step's time goes, by operator family: matrix products, row moves, the rest.

Profiles translating ``--n`` source sentences (greedy and beam 5) with a trained run, twice: as decoding
did before beam search kept the cross-attention caches in place (``before``: every re-ranking also moved
the memory's K/V rows) and as it does now (``after``). Shares are of the self CPU time of the
operators (ATen's, oneDNN's packed linear, fbgemm's int8; Python work between them is not counted); the
translations of both are checked equal, and each is timed unprofiled (best of 3 alternating rounds).

    python benchmarks/decode_profile.py --run RUN --src test_2016_flickr.de [--n 128]
"""

from __future__ import annotations

import argparse
import math
import time

from op_families import family_times, shares  # beside this script
from torch.profiler import profile

import qkv
from qkv.attention import KVCache
from qkv.env import summary_line

MATMUL = ("mm", "addmm", "bmm", "matmul", "linear", "_linear_pointwise", "scaled_dot_product", "baddbmm")
MOVES = ("index_select", "copy_", "index", "gather")


def family(name: str) -> str:
    """The family of an operator (its name without the namespace)."""
    if any(m in name for m in MATMUL):
        return "matrix products"
    return "row moves and copies" if name in MOVES else "other"


def main() -> None:
    """Print each variant's shares by operator family."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--n", type=int, default=128)
    a = p.parse_args()
    run = qkv.load(a.run)
    src = open(a.src, encoding="utf-8").read().splitlines()[: a.n]
    now = KVCache.reorder

    def before(self: KVCache, index, *, same_memory: bool = False) -> None:
        now(self, index)

    print(summary_line())
    for beam in (1, 5):
        outputs = []
        for name, reorder in (("before", before), ("after", now)):
            KVCache.reorder = reorder
            run.translate(src[:32], beam=beam)  # warm-up
            with profile() as prof:
                outputs.append(run.translate(src, beam=beam))
            print(f"beam {beam}, {name}: {shares(family_times(prof, family))}")
        KVCache.reorder = now
        print(f"beam {beam}: same translations before and after: {outputs[0] == outputs[1]}")
        best = {name: math.inf for name in ("before", "after")}
        for _ in range(3):  # unprofiled speed: alternating rounds, the best of each
            for name, reorder in (("before", before), ("after", now)):
                KVCache.reorder = reorder
                t0 = time.perf_counter()
                run.translate(src, beam=beam)
                best[name] = min(best[name], time.perf_counter() - t0)
        KVCache.reorder = now
        speed = {name: len(src) / t for name, t in best.items()}
        print(
            f"beam {beam}: {speed['before']:.1f} -> {speed['after']:.1f} sentences/s "
            f"({speed['after'] / speed['before']:.2f}x; best of 3 alternating rounds)"
        )


if __name__ == "__main__":
    main()
