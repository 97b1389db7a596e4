"""Translation speed by batch size: how many sentences ``translate`` should decode together.

Translates the same sentences with one run at each ``--sizes`` batch size, greedy and beam 5, in alternating
rounds in one process (best of each), and prints sentences/s against the first size. ``translate``'s
default, ``DECODE_ROWS`` ÷ beam width, comes from this.

    python benchmarks/translate_batch.py --run RUN --src test_2016_flickr.de [--sizes 64,160,320] \
        [--quantize int8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import qkv
from qkv.data import read_lines
from qkv.env import summary_line


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--sizes", default="32,64,128,160,320", help="batch sizes (sentences), comma-separated")
    p.add_argument("--beams", default="1,5", help="beam widths, comma-separated")
    p.add_argument("--quantize", default="none", choices=("none", "int8"))
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    sizes, beams = [int(x) for x in a.sizes.split(",")], [int(x) for x in a.beams.split(",")]
    run = qkv.load(a.run, device="cpu", quantize=a.quantize)
    src = read_lines(a.src)
    weights = a.quantize if a.quantize != "none" else "fp32"
    print(f"{summary_line()}; {a.run}, weights {weights}, {len(src)} sentences")
    for beam in beams:
        run.translate(src[:64], beam=beam)  # warm-up
        best = dict.fromkeys(sizes, float("inf"))
        for _ in range(a.rounds):
            for size in sizes:
                t0 = time.perf_counter()
                run.translate(src, beam=beam, batch_size=size)
                best[size] = min(best[size], time.perf_counter() - t0)
        first = best[sizes[0]]
        print(
            f"beam {beam}: "
            + ", ".join(f"{size} {len(src) / t:.1f} sent/s ({first / t:.2f}x)" for size, t in best.items())
        )


if __name__ == "__main__":
    main()
