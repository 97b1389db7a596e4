"""Memory and time of a WMT-sized corpus: ``qkv prepare`` on generated parallel text of the paper's size
(4.5M sentence pairs, ~25 words a side), then how fast ``qkv train --data`` reaches its first step and
how much memory it holds there, against the same model on the Multi30k store.

    python benchmarks/big_corpus.py --dir /tmp/big [--pairs 4500000] [--words 25] [--vocab-size 37000] \\
        [--multi30k ../shared/data/multi30k]

The corpus is synthetic: a Zipf-distributed vocabulary of 50,000 made-up words, sentence lengths around
``--words``, and a target side that is a word-by-word mapping with local reordering — the statistics a
tokenizer and a batcher see, not a language. Each command runs in its own process; peak resident
memory comes from the kernel (``wait4``). The baseline is the same model (the ``multi30k`` preset with
the big store's vocabulary: Multi30k tokenized by that BPE), so that the difference is the store's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyzäöü"))


def vocabulary(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct made-up words of 2-12 letters."""
    words: set[str] = set()
    while len(words) < n:
        k = int(rng.integers(2, 13))
        words.add("".join(LETTERS[rng.integers(0, len(LETTERS), size=k)]))
    return rng.permutation(np.array(sorted(words)))  # frequency rank unrelated to spelling


def write_corpus(directory: Path, pairs: int, words: int, seed: int = 0) -> None:
    """``train.src``/``train.tgt`` (``pairs`` lines) and 1,000-pair ``valid`` and ``test`` files."""
    rng = np.random.default_rng(seed)
    src_vocab, tgt_vocab = vocabulary(50_000, rng), vocabulary(50_000, rng)
    zipf = 1.0 / np.arange(1, 50_001) ** 1.1
    zipf /= zipf.sum()
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", pairs), ("valid", 1000), ("test", 1000)):
        with open(directory / f"{split}.src", "w") as fs, open(directory / f"{split}.tgt", "w") as ft:
            for start in range(0, n, 100_000):
                m = min(100_000, n - start)
                lengths = np.clip(rng.normal(words, words / 3, size=m).astype(int), 3, 3 * words)
                ids = rng.choice(50_000, size=int(lengths.sum()), p=zipf)
                cuts = np.cumsum(lengths)[:-1]
                for row in np.split(ids, cuts):
                    fs.write(" ".join(src_vocab[row]) + "\n")
                    swapped = row.copy()
                    swapped[1::4], swapped[0:-1:4] = row[0:-1:4][: len(row[1::4])], row[1::4][: len(row[0:-1:4])]
                    ft.write(" ".join(tgt_vocab[swapped]) + "\n")


def measure(argv: list[str], until: str | None = None) -> tuple[float, float, float | None]:
    """(peak RSS in MB, seconds, seconds until a stderr line starting with ``until`` — then it is killed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = None
    if until is not None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if line.startswith(until):
                seen = time.perf_counter() - start
                proc.kill()
                break
    else:
        proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if until is None and os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    if until is not None and seen is None:
        raise SystemExit(f"never printed {until!r}: {' '.join(argv)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, seen


def first_step(store: Path, out: Path) -> tuple[float, float]:
    """(seconds to the first training step, peak RSS in MB by then) of the multi30k model on ``store``."""
    qkv = [sys.executable, "-m", "qkv"]
    argv = [*qkv, "train", "multi30k", "--data", str(store), "log_every=1", "--no-progress", "--out", str(out)]
    rss, _, seen = measure(argv, until="step 1/")
    return seen or 0.0, rss


def main() -> None:
    """Generate (once), prepare, and time the first training steps."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="where the corpus, stores and runs go")
    p.add_argument("--pairs", type=int, default=4_500_000)
    p.add_argument("--words", type=int, default=25, help="mean words per sentence")
    p.add_argument("--vocab-size", type=int, default=37000, help="BPE size (the paper's 37,000)")
    p.add_argument("--multi30k", type=Path, help="the Multi30k directory, for the baseline")
    a = p.parse_args()
    corpus = a.dir / f"corpus-{a.pairs}"
    if not (corpus / "test.tgt").exists():
        t = time.perf_counter()
        write_corpus(corpus, a.pairs, a.words)
        print(f"generated {a.pairs:,} pairs in {time.perf_counter() - t:.0f} s", flush=True)
    size = sum(f.stat().st_size for f in corpus.glob("train.*")) / 2**30
    qkv = [sys.executable, "-m", "qkv"]
    store = a.dir / f"store-{a.pairs}"
    if not store.exists():
        files = ["--train", str(corpus / "train.src"), str(corpus / "train.tgt")]
        files += ["--valid", str(corpus / "valid.src"), str(corpus / "valid.tgt")]
        rss, seconds, _ = measure([*qkv, "prepare", *files, "--vocab-size", str(a.vocab_size), "--out", str(store)])
        print(f"qkv prepare: {a.pairs:,} pairs ({size:.2f} GiB): {seconds / 60:.1f} min, peak RSS {rss:,.0f} MB")
    big_run = a.dir / f"run-{time.time_ns()}"
    seconds, rss = first_step(store, big_run)
    print(f"qkv train multi30k --data (big store): first step after {seconds:.1f} s, peak RSS {rss:,.0f} MB")
    if a.multi30k:  # the same model: Multi30k tokenized with the big store's BPE, so the vocabulary matches
        small = a.dir / f"store-multi30k-{a.pairs}"
        if not small.exists():
            m = a.multi30k
            files = ["--train", str(m / "train.de"), str(m / "train.en")]
            files += ["--valid", str(m / "val.de"), str(m / "val.en")]
            measure([*qkv, "prepare", *files, "--tokenizer", str(big_run), "--out", str(small)])
        s2, rss2 = first_step(small, a.dir / f"run-{time.time_ns()}")
        print(f"qkv train multi30k --data (Multi30k store): first step after {s2:.1f} s, peak RSS {rss2:,.0f} MB")
        print(f"the big store costs {seconds - s2:+.1f} s to the first step and {rss - rss2:+,.0f} MB of peak RSS")


if __name__ == "__main__":
    main()
