"""How a training run reports progress, for a person and for tools: a progress bar on a terminal, else a
plain line every ``train.log_every`` steps (step, losses, lr, tokens/s, elapsed, ETA) that a cluster
job's log file keeps readable; a ``{"kind": "train", …}`` row in ``metrics.jsonl`` at the same steps and
a ``{"kind": "eval", …}`` row per evaluation; and, with ``train.tensorboard``, TensorBoard event files
of the same numbers in ``RUN/tensorboard/`` (``tensorboard --logdir runs/`` shows every run).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qkv.errors import QkvError

__all__ = ["TrainLog", "clock", "require_tensorboard"]


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour)."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held: on a GPU the tensors' peak, else the peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class TrainLog:
    """A run's progress reports (rank 0 writes; other ranks' logs are inert)."""

    def __init__(
        self,
        out: Path,
        *,
        log_every: int,
        tensorboard: bool,
        main: bool,
        progress: bool,
        step: int,
        total: int,
        device: torch.device,
        say: Callable[[str], None],
        budget_s: float = 0.0,
    ) -> None:
        self.out, self.log_every, self.main, self.total, self.budget_s = out, log_every, main, total, budget_s
        self.device, self.say = device, say
        self.bar = None
        if main and progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
        self.writer = _tensorboard(out, step) if tensorboard and main else None
        self._mark(step)
        self._bar_t, self._bar_tok = self._t, 0

    def _mark(self, step: int) -> None:
        self._step, self._t, self._tokens = step, time.perf_counter(), 0

    def wants_nll(self, step: int) -> bool:
        """Whether step ``step`` is logged (so its plain NLL is worth measuring)."""
        return self.main and self.log_every > 0 and step % self.log_every == 0

    def step(self, step: int, stats: Any, elapsed: float, nll: float | None) -> None:
        """Record one optimizer step; every ``log_every`` steps write a line, a metrics row and events."""
        self._tokens += stats.tokens
        self._update_bar(stats)
        if not self.wants_nll(step):
            return
        seconds = max(time.perf_counter() - self._t, 1e-9)
        tps = self._tokens / seconds
        eta = (self.total - step) * seconds / max(step - self._step, 1)
        if self.budget_s > 0:  # a time budget ends the run first when it is shorter
            eta = min(eta, max(self.budget_s - elapsed, 0.0))
        row = {
            "kind": "train",
            "step": step,
            "elapsed_s": round(elapsed, 2),
            "train_loss": stats.loss,
            "train_nll": nll,
            "grad_norm": stats.grad_norm,
            "lr": stats.lr,
            "tokens_per_second": round(tps, 1),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
        }
        self._append(row)
        self._scalars("train", row, step)
        if self.bar is None:
            nll_part = f" | nll {nll:.4f}" if nll is not None else ""
            self.say(
                f"step {step}/{self.total} | loss {stats.loss:.4f}{nll_part} | lr {stats.lr:.3e} | "
                f"{tps:,.0f} tok/s | elapsed {clock(elapsed)} | eta {clock(eta)}"
            )
        self._mark(step)

    def evaluation(self, row: dict[str, Any], message: str) -> None:
        """Record an evaluation: a metrics row, events, and ``message`` for people."""
        self._append({"kind": "eval", **row})
        self._scalars(
            "valid", {k.removeprefix("valid_"): v for k, v in row.items() if k.startswith("valid_")}, row["step"]
        )
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            self.say(message)

    def pause(self, step: int) -> None:
        """Restart the tokens/s and ETA window at ``step`` (after time that was not training: evaluation,
        checkpoints)."""
        self._mark(step)
        self._bar_t, self._bar_tok = self._t, 0

    def close(self) -> None:
        """Remove the bar and flush the event files."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _update_bar(self, stats: Any) -> None:
        if self.bar is None:
            return
        self._bar_tok += stats.tokens
        now = time.perf_counter()
        tps = self._bar_tok / max(now - self._bar_t, 1e-9)
        if now - self._bar_t > 2.0:
            self._bar_t, self._bar_tok = now, 0
        self.bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{stats.lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
        self.bar.update(1)

    def _append(self, row: dict[str, Any]) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _scalars(self, group: str, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "kind"):
                self.writer.add_scalar(f"{group}/{key.removeprefix(group + '_')}", value, step)
        self.writer.flush()


def require_tensorboard() -> Any:
    """TensorBoard's ``SummaryWriter``, or a QkvError saying how to install it (checked before a run starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise QkvError(
            "train.tensorboard needs the tensorboard package: pip install 'qkv[tensorboard]' (or drop --tensorboard)"
        ) from None
    return SummaryWriter


def _tensorboard(out: Path, step: int) -> Any:
    """A TensorBoard writer into ``out/tensorboard``; events after ``step`` (of a killed run now resumed
    from an earlier checkpoint) are purged."""
    return require_tensorboard()(log_dir=str(out / "tensorboard"), purge_step=step + 1 if step > 0 else None)
