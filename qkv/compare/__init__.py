"""``qkv compare``: the seed's claims about attention, RNNs and CNNs, measured in one harness.

:func:`run_comparison` runs the experiments of :mod:`qkv.compare.experiments` and writes a directory
with ``results.json``, one PNG per experiment and ``report.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qkv.checkpoint import make_directory
from qkv.compare import experiments, report
from qkv.compare.sizes import SIZES, CompareConfig
from qkv.devices import resolve_device
from qkv.env import summary_line
from qkv.errors import QkvError, shown

__all__ = ["EXPERIMENTS", "SIZES", "CompareConfig", "Experiment", "Workspace", "run_comparison"]


@dataclass(frozen=True)
class Workspace:
    """What an experiment may use: the sizes, a directory for its training runs, a log, the Multi30k
    directory (or None), the device to time and train on."""

    cfg: CompareConfig
    runs: Path
    log: Callable[[str], None]
    data: Path | None
    device: torch.device


@dataclass(frozen=True)
class Experiment:
    """One experiment of the comparison: how to run it (results as JSON-ready data), its plot(s)
    (results, directory -> plot name -> file name) and its report section (results, files -> markdown lines)."""

    run: Callable[[Workspace], dict[str, Any]]
    plot: Callable[[dict[str, Any], Path], dict[str, str]]
    section: Callable[[dict[str, Any], dict[str, str]], list[str]]


EXPERIMENTS: dict[str, Experiment] = {
    "parallelism": Experiment(
        lambda w: experiments.parallelism(w.cfg, w.device), report.plot_parallelism, report.section_parallelism
    ),
    "path_length": Experiment(
        lambda w: experiments.path_length(w.cfg), report.plot_path_length, report.section_path_length
    ),
    "long_range": Experiment(
        lambda w: experiments.long_range(w.cfg, w.device), report.plot_long_range, report.section_long_range
    ),
    "scaling": Experiment(
        lambda w: experiments.scaling(w.cfg, w.runs, w.log, w.device), report.plot_scaling, report.section_scaling
    ),
    "query_batch": Experiment(
        lambda w: experiments.query_batch(w.cfg, w.device), report.plot_query_batch, report.section_query_batch
    ),
    "heads": Experiment(lambda w: experiments.heads(w.cfg, w.device), report.plot_heads, report.section_heads),
    "translation": Experiment(
        lambda w: experiments.translation(w.cfg, w.runs, w.log, w.data, w.device),
        report.plot_translation,
        report.section_translation,
    ),
}


def run_comparison(
    out: Path | str,
    sizes: str | CompareConfig = "full",
    *,
    multi30k: Path | str | None = None,
    only: tuple[str, ...] | None = None,
    minutes: float | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the experiments (``only`` some of them) at ``sizes`` ("full", "quick", "smoke" or a
    :class:`CompareConfig`) and write ``results.json``, PNG plots and ``report.md`` into ``out``.
    ``multi30k`` is a directory with Multi30k's train/val/test_2016_flickr .de/.en files for
    experiment g; without it g uses a built-in task. ``minutes`` gives each family of experiment g
    that many training minutes instead of the same steps. ``device`` (auto = a GPU when there is one)
    is where the experiments time and train (:mod:`qkv.compare.experiments`). Returns the results."""
    out = Path(out)
    if isinstance(sizes, str):
        if sizes not in SIZES:
            raise QkvError(f"unknown sizes {shown(sizes)}: choose one of {', '.join(SIZES)}")
        name, cfg = sizes, SIZES[sizes]
    else:
        name, cfg = "custom", sizes
    chosen = tuple(EXPERIMENTS) if only is None else only
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        raise QkvError(f"unknown experiment {unknown[0]!r}: choose from {', '.join(EXPERIMENTS)}")
    for flag, value in (("--multi30k", multi30k), ("--minutes", minutes)):
        if value is not None and "translation" not in chosen:
            raise QkvError(f"{flag} is for the translation experiment: add translation to --only or drop {flag}")
    if minutes is not None:
        if not 0 < minutes < float("inf"):
            raise QkvError(f"--minutes {shown(minutes)}: give the training minutes per family, a number > 0")
        cfg = replace(cfg, translation_minutes=float(minutes))
    data = None if multi30k is None else _multi30k_dir(multi30k)
    where = resolve_device(device)
    if (out / "results.json").exists():
        raise QkvError(f"{out} already holds a comparison; choose another --out or remove it")
    make_directory(out)
    workspace = Workspace(cfg, out / "runs", log, data, where)
    results: dict[str, Any] = {
        "sizes_name": name,
        "sizes": _jsonable(cfg),
        "environment": summary_line(),
        "device": _device_line(where),
        "minutes": {},
    }
    start = time.perf_counter()
    for exp in chosen:
        log(f"qkv compare: {exp} ...")
        t0 = time.perf_counter()
        results[exp] = EXPERIMENTS[exp].run(workspace)
        results["minutes"][exp] = (time.perf_counter() - t0) / 60
        log(f"qkv compare: {exp} done in {results['minutes'][exp]:.1f} min")
    results["minutes"]["total"] = (time.perf_counter() - start) / 60
    files = report.write_plots(results, out, {k: e.plot for k, e in EXPERIMENTS.items()})
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    path = report.write_report(results, files, out, {k: e.section for k, e in EXPERIMENTS.items()})
    log(f"qkv compare: wrote {path}, {len(files)} plots and {out / 'results.json'}")
    return results


def _device_line(device: torch.device) -> str:
    """The device the experiments ran on, in words: the CPU, or the GPU's name."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _multi30k_dir(multi30k: Path | str) -> Path:
    """The Multi30k directory, checked to hold the six files experiment g reads."""
    data = Path(multi30k).expanduser().resolve()
    names = ("train.de", "train.en", "val.de", "val.en", "test_2016_flickr.de", "test_2016_flickr.en")
    missing = [f for f in names if not (data / f).is_file()]
    if missing:
        raise QkvError(f"--multi30k {data} lacks {', '.join(missing)}; give the directory holding Multi30k's files")
    return data


def _jsonable(cfg: CompareConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
