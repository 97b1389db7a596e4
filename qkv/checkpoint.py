"""The run directory: everything needed to use or resume a model, in safetensors and JSON (no pickle).

    RUN/
      config.json                 model, training and data arguments (written once)
      src_tokenizer.json, tgt_tokenizer.json   the tokenizers
      model.safetensors           weights (tied weights stored once)
      trainer_state.safetensors   optimizer moments and torch RNG state
      trainer_state.json          step, data position, elapsed time
      metrics.jsonl               one JSON object per line: {"kind": "train", …} every train.log_every steps
                                  (losses, grad norm, lr, tokens/s, peak memory), {"kind": "eval", …} per evaluation
      data/                       a run trained on --train files: the token store prepared from them
      tensorboard/                with train.tensorboard: TensorBoard event files of the same numbers
      summary.json                final results (absent while the run is unfinished)
      checkpoints/                with train.keep_last / keep_best: weights only, for averaging
        step-0002200.safetensors  the weights of each of the last K checkpoints (step in the name)
        best.safetensors, best.json   the weights with the best validation score, and that score

A checkpoint is three files that must agree. They are written as ``*.tmp`` first; once all three are
complete on disk a ``COMMIT`` journal file is written, then the renames happen, then the journal is
removed. A process killed at any point leaves either the previous checkpoint (journal absent: stray
``*.tmp`` files are deleted) or the new one (journal present: the renames are finished) — see
:func:`recover`. Every other file is replaced atomically (write to a temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save
from torch import Tensor, nn

from qkv.errors import QkvError, shown

__all__ = [
    "CHECKPOINT_FILES",
    "KEPT",
    "atomic_write_bytes",
    "atomic_write_json",
    "average_weights",
    "check_output_file",
    "checkpoint_step",
    "has_checkpoint",
    "keep_weights",
    "kept_steps",
    "load_weights",
    "make_directory",
    "metric_rows",
    "new_directory",
    "read_json",
    "recover",
    "save_checkpoint",
    "weights_to_save",
]

CONFIG = "config.json"
MODEL = "model.safetensors"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
CHECKPOINT_FILES = (MODEL, STATE_TENSORS, STATE_JSON)
JOURNAL = "COMMIT"
KEPT = "checkpoints"  # weights of earlier checkpoints, kept for averaging
STATE_KEYS = ("step", "elapsed_s", "tokens_seen", "data", "param_groups")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    _write_durable(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a QkvError that names it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: is this a qkv run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QkvError(f"{path} is corrupt ({e}); restore it or train a new run") from None


def metric_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, row) for each line of a metrics.jsonl file that is a JSON object; damaged lines (a torn last
    line, other JSON) are skipped."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield line, row


def read_metrics(run: Path, kind: str = "eval") -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl of one ``kind`` (rows written before kinds existed are "eval");
    a damaged line is skipped."""
    return [row for _, row in metric_rows(Path(run) / "metrics.jsonl") if row.get("kind", "eval") == kind]


def weights_to_save(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with tied (shared) tensors kept once, contiguous, for safetensors."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def check_output_file(path: Path) -> None:
    """A one-line QkvError unless ``path`` can be written as a file: its directory exists and it is not
    itself a directory (found before the work that would fill it, not after)."""
    if path.is_dir():
        raise QkvError(f"cannot write {path}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise QkvError(f"cannot write {path}: the directory {path.parent} does not exist; create it first")


def load_weights(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Load ``tensors`` into ``model``; keys missing only because their weight is tied are fine. A weight
    holding NaN or an infinity (a diverged training, a damaged file) is refused: every verb would give NaN
    scores or garbage from it."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise QkvError(
                f"{source}: {name} holds NaN or infinite values (training diverged, or the file is damaged); "
                "use an earlier checkpoint or train again"
            )
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a tensor of another shape: e.g. a vocabulary size that disagrees
        first = str(e).split("\n\t", 2)[1] if "\n\t" in str(e) else str(e)
        raise QkvError(f"{source} does not match the model in config.json ({shown(first, 200)})") from None
    expected = model.state_dict()
    tied = {n for n in expected if n not in tensors and _is_alias(model, n, tensors)}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        what = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise QkvError(f"{source} does not match the model in config.json ({what})")


def _is_alias(model: nn.Module, name: str, present: dict[str, Tensor]) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    target = params[name]
    return any(n in present for n, p in params.items() if p is target and n != name)


def recover(run: Path) -> None:
    """Finish or roll back a checkpoint write that a killed process left halfway."""
    run = Path(run)
    journal = run / JOURNAL
    if journal.exists():  # all .tmp files were complete: finish the renames
        for name in CHECKPOINT_FILES:
            tmp = run / (name + ".tmp")
            if tmp.exists():
                os.replace(tmp, run / name)
        _fsync_dir(run)
        journal.unlink()
    for name in CHECKPOINT_FILES:  # no journal: a write that never completed
        (run / (name + ".tmp")).unlink(missing_ok=True)
    for stray in run.glob("*.partial"):
        stray.unlink()


def save_checkpoint(
    run: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Write model weights, optimizer state, RNG states and ``state`` (JSON) as one atomic checkpoint."""
    run = Path(run)
    step = str(state["step"])
    tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
    device = _device_of(optimizer)
    if device.type == "cuda":  # dropout on a GPU draws from that GPU's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    opt = optimizer.state_dict()
    for idx, param_state in opt["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().cpu()
    state = dict(state, param_groups=opt["param_groups"])
    payloads = {
        MODEL: save(weights_to_save(model), metadata={"step": step, "format": "pt"}),
        STATE_TENSORS: save(tensors, metadata={"step": step}),
        STATE_JSON: (json.dumps(state, indent=1) + "\n").encode(),
    }
    for name, data in payloads.items():
        _write_durable(run / (name + ".tmp"), data)
    _fsync_dir(run)
    _write_durable(run / JOURNAL, step.encode())
    _fsync_dir(run)
    recover(run)


def load_model_tensors(run: Path) -> dict[str, Tensor]:
    """Read model.safetensors of a run, with a clear error if it is missing or corrupt."""
    path = Path(run) / MODEL
    if not path.exists():
        raise QkvError(f"{path} is missing: the run has no saved weights yet")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise QkvError(f"{path} is corrupt ({e}); restore it or train a new run") from None


def has_checkpoint(run: Path) -> bool:
    """Whether the run has written a checkpoint (a run killed before its first has only its config)."""
    return any((Path(run) / name).exists() for name in CHECKPOINT_FILES)


def _metadata_step(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("step")
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: this run cannot be resumed; train a new run") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise QkvError(f"{path} is corrupt ({e}); this run cannot be resumed") from None


def checkpoint_step(run: Path) -> int:
    """The step of the run's checkpoint, after checking that its three files agree on it."""
    run = Path(run)
    if not (run / STATE_JSON).exists():
        raise QkvError(
            f"{run} has weights but no trainer state (made by qkv average or qkv convert, or its checkpoint was "
            "lost): it cannot be resumed; train a new run"
        )
    state = read_json(run / STATE_JSON)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise QkvError(f"{run / STATE_JSON} lacks {', '.join(missing)}: this run cannot be resumed; train a new run")
    steps = {MODEL: _metadata_step(run / MODEL), STATE_TENSORS: _metadata_step(run / STATE_TENSORS)}
    if any(v != str(state["step"]) for v in steps.values()):
        shown = ", ".join(f"{k} at step {v}" for k, v in steps.items())
        raise QkvError(
            f"the checkpoint files of {run} disagree ({STATE_JSON} at step {state['step']}, {shown}); "
            "this run cannot be resumed safely"
        )
    return int(state["step"])


def _device_of(optimizer: torch.optim.Optimizer) -> torch.device:
    """Where the optimizer's parameters are."""
    return next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))


def load_trainer_state(run: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and torch RNG state; returns the JSON trainer state (step, data position…)."""
    run = Path(run)
    checkpoint_step(run)
    state = read_json(run / STATE_JSON)
    try:
        tensors = st_load((run / STATE_TENSORS).read_bytes())
    except FileNotFoundError:
        raise QkvError(f"{run / STATE_TENSORS} is missing: this run cannot be resumed") from None
    except (SafetensorError, ValueError) as e:
        raise QkvError(f"{run / STATE_TENSORS} is corrupt ({e}); this run cannot be resumed") from None
    per_param: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            per_param.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict(
            {"state": per_param, "param_groups": _with_kernels_of(optimizer, state.pop("param_groups"))}
        )
        torch.set_rng_state(tensors["rng.torch"])
        device = _device_of(optimizer)
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    except (KeyError, ValueError, RuntimeError) as e:
        raise QkvError(f"{run / STATE_TENSORS} does not match the model ({e}); this run cannot be resumed") from None
    return state


def _with_kernels_of(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved parameter groups with the kernel choice (fused, foreach) of the optimizer they go into: how the
    update runs is this process's choice (a run saved before Adam was fused resumes fused), not the run's."""
    return [
        saved | {key: current[key] for key in ("fused", "foreach") if key in current}
        for saved, current in zip(groups, optimizer.param_groups, strict=False)
    ] + groups[len(optimizer.param_groups) :]


def _kept_name(step: int) -> str:
    return f"step-{step:07d}.safetensors"


def kept_steps(run: Path) -> list[int]:
    """Steps whose weights the run keeps in ``checkpoints/``, oldest first."""
    digits = (p.name.removeprefix("step-").removesuffix(".safetensors") for p in (Path(run) / KEPT).glob("step-*"))
    return sorted(int(d) for d in digits if d.isdigit())


def keep_weights(run: Path, model: nn.Module, step: int, keep_last: int) -> None:
    """Keep this checkpoint's weights as ``checkpoints/step-N.safetensors`` and drop all but the last
    ``keep_last`` (a later step than ``step`` is left from a killed run and is dropped too)."""
    kept = Path(run) / KEPT
    kept.mkdir(exist_ok=True)
    atomic_write_bytes(kept / _kept_name(step), save(weights_to_save(model), metadata={"step": str(step)}))
    steps = [s for s in kept_steps(run) if s <= step]
    for old in [s for s in kept_steps(run) if s > step] + steps[: max(0, len(steps) - keep_last)]:
        (kept / _kept_name(old)).unlink(missing_ok=True)


def keep_best(run: Path, model: nn.Module, step: int, metric: str, value: float, higher_is_better: bool) -> bool:
    """Keep the weights as ``checkpoints/best.safetensors`` if ``value`` beats the kept best; returns whether."""
    kept = Path(run) / KEPT
    best = kept / "best.json"
    if best.exists():
        old = read_json(best)
        if old.get("metric") == metric and (value <= old["value"] if higher_is_better else value >= old["value"]):
            return False
    kept.mkdir(exist_ok=True)
    atomic_write_bytes(kept / "best.safetensors", save(weights_to_save(model), metadata={"step": str(step)}))
    atomic_write_json(best, {"step": step, "metric": metric, "value": value})
    return True


def average_weights(paths: list[Path]) -> dict[str, Tensor]:
    """The element-wise mean of the floating-point tensors of several weight files (summed in float64,
    returned in their own dtype); other tensors are taken from the last file."""
    sums: dict[str, Tensor] = {}
    for i, path in enumerate(paths):
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise QkvError(f"{path} is corrupt ({e}); choose other checkpoints") from None
        if i and tensors.keys() != sums.keys():
            raise QkvError(f"{path} holds other tensors than {paths[0]}: the checkpoints are of different models")
        for name, t in tensors.items():
            floating = t.is_floating_point()
            sums[name] = sums[name] + t.double() if i and floating else t.double() if floating else t
            if i == len(paths) - 1 and floating:
                sums[name] = (sums[name] / len(paths)).to(t.dtype)
    return sums


def make_directory(path: Path, flag: str = "--out") -> None:
    """``mkdir -p path``, or one line saying why not (a file where a directory of the path should be, no
    permission)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QkvError(f"cannot create the directory {path}: {e.strerror or e}; choose another {flag}") from None


@contextlib.contextmanager
def new_directory(out: Path, flag: str = "--out") -> Iterator[Path]:
    """Write a new directory ``out`` all at once: yields a temporary sibling to fill, renamed to ``out``
    only when the block completes (removed if it fails). An existing, non-empty ``out`` is refused."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QkvError(f"{out} already exists and is not empty; choose another {flag}")
    make_directory(out.parent, flag)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
