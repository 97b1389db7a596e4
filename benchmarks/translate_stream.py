"""Memory of translating a long file: ``qkv translate RUN -i FILE -o OUT`` (streamed, a chunk of lines at
a time) against reading the whole file and translating it in one call (what ``qkv translate -i`` did
before, and what ``run.translate(lines)`` still does), side by side on the same files.

Each translation runs in its own process, started by a small launcher; its peak resident memory comes
from the kernel (``getrusage`` of the launcher's children).
The input lines are sentences of the run's own task (the built-in dates task by default), repeated.

    python benchmarks/translate_stream.py --run RUN [--lines 20000,200000] [--max-len N]

``--max-len 1`` stops each translation after one token: the whole pipeline (reading, tokenizing, the
encoder, one decoder step, writing) runs at a few thousand lines a second, so a million-line file is
measured in minutes; memory does not depend on the output length.

Prints, per file size: peak RSS (MB) and lines/s of both ways, and how much the peak grew from the
smallest file. Streaming should stay flat; the whole-file way grows with the file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WHOLE = """
import sys, qkv
from qkv.data import read_lines
run = qkv.load(sys.argv[1])
lines = read_lines(sys.argv[2])
max_len = int(sys.argv[4]) if len(sys.argv) > 4 else None
with open(sys.argv[3], "w", encoding="utf-8") as f:
    f.write("".join(t + "\\n" for t in run.translate(lines, max_len=max_len)))
"""


LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def measure(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one command. It is started by a small launcher process: a child's
    peak RSS counts the pages of the process that forks it (until its exec), and this script holds torch,
    a run and the input lines."""
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as peak:
        if subprocess.run([sys.executable, "-c", LAUNCHER, peak.name, *argv]).returncode != 0:
            raise SystemExit(f"failed: {' '.join(argv)}")
        return int(peak.read()) / 1024, time.perf_counter() - start


def sentences(run: Path, n: int) -> list[str]:
    """``n`` source sentences of the run's task (its test split, repeated)."""
    import qkv

    r = qkv.load(run)
    from qkv.data import build_source

    pairs = build_source(r.config.task, (r.src_tokenizer, r.tgt_tokenizer)).split("test")
    return [pairs[i % len(pairs)][0] for i in range(n)]


def main() -> None:
    """Translate files of each size both ways and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a translation run (e.g. of `qkv train dates`)")
    p.add_argument("--lines", default="20000,200000", help="file sizes in lines, comma-separated")
    p.add_argument("--max-len", type=int, help="most target tokens per line (1: the pipeline's memory, fast)")
    a = p.parse_args()
    limit = [] if a.max_len is None else [str(a.max_len)]
    sizes = [int(x) for x in a.lines.split(",")]
    base = None
    print(f"{'lines':>9} | {'streamed MB':>11} {'lines/s':>8} | {'whole-file MB':>13} {'lines/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        pool = sentences(a.run, max(sizes))
        for n in sizes:
            src, out = Path(tmp) / f"in{n}.txt", Path(tmp) / f"out{n}.txt"
            src.write_text("".join(s + "\n" for s in pool[:n]), encoding="utf-8")
            cli = [sys.executable, "-m", "qkv", "translate", str(a.run), "-i", str(src), "-o", str(out)]
            s_mb, s_t = measure(cli + (["--max-len", *limit] if limit else []))
            w_mb, w_t = measure([sys.executable, "-c", WHOLE, str(a.run), str(src), str(out) + ".whole", *limit])
            same = out.read_text(encoding="utf-8") == (Path(str(out) + ".whole")).read_text(encoding="utf-8")
            base = base or (s_mb, w_mb)
            print(f"{n:>9,} | {s_mb:>11.0f} {n / s_t:>8.0f} | {w_mb:>13.0f} {n / w_t:>8.0f}   same output: {same}")
    print(
        f"growth of the peak from {sizes[0]:,} to {sizes[-1]:,} lines: streamed {s_mb - base[0]:+.0f} MB, "
        f"whole file {w_mb - base[1]:+.0f} MB"
    )


if __name__ == "__main__":
    main()
