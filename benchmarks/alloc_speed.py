"""Training and decoding speed with glibc's malloc as it comes against ``qkv.devices.keep_freed_memory``
(freed memory kept for reuse instead of unmapped), side by side in one run.

mallopt settings hold for a whole process and cannot be undone in it, so each measurement runs in a
child process, the two settings alternating round by round; the ratio is of the medians. Each child
reports its tokens (or sentences) per second, its minor page faults and its peak resident memory.

    python benchmarks/alloc_speed.py --data STORE [--preset multi30k-30min] [--steps 40] [--rounds 3]
    python benchmarks/alloc_speed.py --run RUN --test test_2016_flickr.de [--beam 5]   # decoding
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = ("glibc default", "keep_freed_memory")


def child_train(data: str, preset: str, steps: int, warmup: int = 5) -> dict[str, float]:
    """Target tokens/s of ``steps`` steps of the trainer on ``preset`` (after ``warmup`` steps)."""
    from qkv.train import Trainer, recipe
    from qkv.trainlog import TrainLog

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = recipe(preset).with_data(data=data).with_overrides([f"steps={warmup + steps}"])
        trainer = Trainer(cfg, out, say=lambda _msg: None)
        trainer.log = TrainLog(
            out, log_every=0, tensorboard=False, main=False, progress=False, step=0, total=warmup + steps,
            device=trainer.device, say=lambda _msg: None, budget_s=0,
        )  # fmt: skip
        for _ in range(warmup):
            trainer.train_one_step()
        tokens, t0 = 0, time.perf_counter()
        for _ in range(steps):
            tokens += trainer.train_one_step()[0].tokens
        return {"rate": tokens / (time.perf_counter() - t0), "precision": trainer.precision}


def child_decode(run: str, test: str, beam: int, limit: int) -> dict[str, float]:
    """Sentences/s translating the first ``limit`` lines of ``test`` (after a warm-up batch)."""
    import qkv
    from qkv.data import read_lines

    model = qkv.load(run, device="cpu")
    sentences = read_lines(test)[:limit]
    model.translate(sentences[:64], beam=beam)
    t0 = time.perf_counter()
    model.translate(sentences, beam=beam)
    return {"rate": len(sentences) / (time.perf_counter() - t0)}


def child(args: argparse.Namespace) -> None:
    """One measurement in this process, with the allocator setting ``--keep``; prints one JSON line."""
    from qkv.devices import keep_freed_memory

    if args.keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() took no effect here (not glibc): nothing to compare")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if args.data:
        result = child_train(args.data, args.preset, args.steps)
    else:
        result = child_decode(args.run, args.test, args.beam, args.limit)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**result, "minor_faults": usage.ru_minflt - before, "peak_rss_mb": usage.ru_maxrss / 1024}))


def main() -> None:
    """Run the benchmark: children alternating the two settings, then the medians and their ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a qkv prepare store: training speed")
    p.add_argument("--preset", default="multi30k-30min", help="the translation recipe trained (default %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="timed training steps a child (default %(default)s)")
    p.add_argument("--run", help="a trained translation run: decoding speed")
    p.add_argument("--test", help="source sentences to translate (with --run)")
    p.add_argument("--beam", type=int, default=1, help="beam size when decoding (default %(default)s)")
    p.add_argument("--limit", type=int, default=1000, help="most test sentences (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="children per setting (default %(default)s)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if bool(a.data) == bool(a.run) or (a.run and not a.test):
        p.error("give --data STORE (training), or --run RUN --test FILE (decoding)")
    if a.steps < 1 or a.rounds < 1 or a.beam < 1 or a.limit < 1:
        p.error("--steps, --rounds, --beam and --limit must be >= 1")
    if a.child:
        child(a)
        return
    argv = [sys.executable, __file__, "--child", *sys.argv[1:]]
    rows: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for r in range(a.rounds):
        for keep, name in enumerate(SETTINGS):
            out = subprocess.run(argv + (["--keep"] if keep else []), capture_output=True, text=True, check=True)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}, {name}: {rows[name][-1]}", flush=True)
    unit = "target tokens/s" if a.data else f"sentences/s (beam {a.beam})"
    med = {name: statistics.median(x["rate"] for x in rows[name]) for name in SETTINGS}
    for name in SETTINGS:
        faults = statistics.median(x["minor_faults"] for x in rows[name])
        rss = max(x["peak_rss_mb"] for x in rows[name])
        print(f"{name}: {med[name]:,.1f} {unit} (median of {a.rounds}), {faults:,.0f} minor faults, peak {rss:,.0f} MB")
    ratio = med[SETTINGS[1]] / med[SETTINGS[0]]
    print(f"ratio {ratio:.3f}x ({torch.get_num_threads()} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
