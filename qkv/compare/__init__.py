"""``qkv compare``: the seed's claims about attention, RNNs and CNNs, measured in one harness.

:func:`run_comparison` runs the experiments of :mod:`qkv.compare.experiments` and writes a directory
with ``results.json``, one PNG per experiment and ``report.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qkv.compare import experiments
from qkv.compare.report import write_plots, write_report
from qkv.compare.sizes import SIZES, CompareConfig
from qkv.errors import QkvError

__all__ = ["EXPERIMENTS", "SIZES", "CompareConfig", "run_comparison"]

EXPERIMENTS = ("parallelism", "path_length", "long_range", "scaling", "query_batch", "heads", "translation")


def _environment() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} CPUs"


def run_comparison(
    out: Path | str,
    sizes: str | CompareConfig = "full",
    *,
    multi30k: Path | str | None = None,
    only: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the experiments (``only`` some of them) at ``sizes`` ("full", "quick", "smoke" or a
    :class:`CompareConfig`) and write ``results.json``, PNG plots and ``report.md`` into ``out``.
    ``multi30k`` is a directory with Multi30k's train/val/test_2016_flickr .de/.en files for
    experiment g; without it g uses a built-in task. Returns the results."""
    out = Path(out)
    if isinstance(sizes, str):
        if sizes not in SIZES:
            raise QkvError(f"unknown sizes '{sizes}': choose one of {', '.join(SIZES)}")
        name, cfg = sizes, SIZES[sizes]
    else:
        name, cfg = "custom", sizes
    chosen = EXPERIMENTS if only is None else only
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        raise QkvError(f"unknown experiment {unknown[0]!r}: choose from {', '.join(EXPERIMENTS)}")
    data = None
    if multi30k is not None:
        data = Path(multi30k).expanduser().resolve()
        missing = [
            f
            for f in ("train.de", "train.en", "val.de", "val.en", "test_2016_flickr.de", "test_2016_flickr.en")
            if not (data / f).is_file()
        ]
        if missing:
            raise QkvError(f"--multi30k {data} lacks {', '.join(missing)}; give the directory holding Multi30k's files")
    if (out / "results.json").exists():
        raise QkvError(f"{out} already holds a comparison; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    results: dict[str, Any] = {
        "sizes_name": name,
        "sizes": _jsonable(cfg),
        "environment": _environment(),
        "minutes": {},
    }
    start = time.perf_counter()
    for exp in chosen:
        log(f"qkv compare: {exp} ...")
        t0 = time.perf_counter()
        if exp == "scaling":
            results[exp] = experiments.scaling(cfg, runs, log)
        elif exp == "translation":
            results[exp] = experiments.translation(cfg, runs, log, data)
        else:
            results[exp] = getattr(experiments, exp)(cfg)
        results["minutes"][exp] = (time.perf_counter() - t0) / 60
        log(f"qkv compare: {exp} done in {results['minutes'][exp]:.1f} min")
    results["minutes"]["total"] = (time.perf_counter() - start) / 60
    files = write_plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report = write_report(results, files, out)
    log(f"qkv compare: wrote {report}, {len(files)} plots and {out / 'results.json'}")
    return results


def _jsonable(cfg: CompareConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
