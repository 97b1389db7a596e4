"""Training as importable functions: schedules, the optimizer, one step, and the whole loop — one loop
for every model family (what differs lives in :mod:`qkv.families`), on one process or under torchrun.

The paper's recipe (section 5): label-smoothed cross-entropy (ε = 0.1) ignoring padding, Adam
(β = 0.9/0.98, ε = 1e-9), and the "Noam" schedule
lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5). Warmup + inverse-sqrt, cosine and constant
schedules are options; so are gradient clipping and gradient accumulation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qkv.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    load_model_tensors,
    load_trainer_state,
    load_weights,
    read_json,
    recover,
    save_checkpoint,
)
from qkv.config import replace as replace_section
from qkv.data import resolve_paths
from qkv.errors import QkvError
from qkv.families import Family, load_run_tokenizers, make_family
from qkv.models import count_parameters
from qkv.objectives import label_smoothed_loss
from qkv.recipes import DEFAULT_RECIPE, RECIPES, TRANSLATION_FAMILIES, RunConfig, TrainConfig, recipe

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "RunConfig",
    "TrainConfig",
    "label_smoothed_loss",
    "lr_at",
    "make_optimizer",
    "recipe",
    "train",
    "train_step",
]


def lr_at(step: int, cfg: TrainConfig, d_model: int) -> float:
    """Learning rate at ``step`` (1-based)."""
    step = max(step, 1)
    if cfg.schedule == "noam":
        return cfg.lr * d_model**-0.5 * min(step**-0.5, step * cfg.warmup**-1.5)
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup, 1) / step)
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the config's betas and eps; with weight_decay > 0, AdamW decaying only the matrices
    and embeddings (not biases or LayerNorm gains)."""
    if cfg.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=0.0, betas=cfg.betas, eps=cfg.eps)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)


@dataclass
class StepStats:
    """What one optimizer step did."""

    loss: float
    tokens: int
    lr: float
    grad_norm: float


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Any],
    cfg: TrainConfig,
    step: int,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    total_tokens: int | None = None,
    world_size: int = 1,
) -> StepStats:
    """One optimizer step over ``micro_batches`` (gradient accumulation).

    The loss is normalised by the number of target tokens in the whole step — ``total_tokens``, all
    ranks together under DistributedDataParallel (which averages gradients over ``world_size``, hence
    the factor) — so accumulation and data parallelism both equal one big batch. ``loss_fn(model,
    batch)`` gives a batch's summed loss (default: the seq2seq label-smoothed loss).
    """
    core = unwrap(model)
    if loss_fn is None:

        def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
            return label_smoothed_loss(m(b.src, b.tgt_in), b.tgt_out, cfg.label_smoothing, core.cfg.pad_id)

    lr = lr_at(step, cfg, core.cfg.d_model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    tokens = total_tokens if total_tokens is not None else sum(b.num_target_tokens for b in micro_batches)
    device_type = next(core.parameters()).device.type
    total = 0.0
    for i, b in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = loss_fn(model, b)
            (loss * (world_size / tokens)).backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(total * world_size / tokens, tokens, lr, grad_norm)


def unwrap(model: nn.Module) -> Any:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> cuda (this rank's GPU) when available, else cpu."""
    if name == "cuda" and not torch.cuda.is_available():
        raise QkvError("train.device=cuda but no CUDA device is available; use device=cpu or auto")
    if name in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class Distributed:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's environment variables."""
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        )

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory and prints."""
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the process group: nccl on GPUs, gloo on CPUs."""
        if self.world_size > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def broadcast_ok(self, ok: bool) -> bool:
        """Rank 0's verdict (e.g. 'the run directory is usable'), on every rank."""
        if self.world_size == 1:
            return ok
        flag = [ok]
        torch.distributed.broadcast_object_list(flag, src=0)
        return bool(flag[0])

    def stop(self) -> None:
        """Leave the process group."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QkvError(f"{out} already exists and is not empty; resume it with --resume {out} or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


class _StopFlag:
    """Turns the first Ctrl-C into 'stop after this step and save'; a second one aborts."""

    def __init__(self) -> None:
        self.stop = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        print("\nqkv: stopping after this step and saving; Ctrl-C again to abort", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (and a torn last line) when resuming."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            keep.append(line)
    atomic_write_bytes(path, ("".join(k + "\n" for k in keep)).encode())


def _resolve_config(cfg: RunConfig | None, out: Path, resume: bool, overrides: list[str]) -> RunConfig:
    if resume:
        if not (out / "config.json").exists():
            raise QkvError(f"{out} is not a qkv run directory (no config.json); check the path")
        return RunConfig.from_dict(read_json(out / "config.json")).with_overrides(overrides, sections=("train",))
    cfg = (cfg or recipe(DEFAULT_RECIPE)).with_overrides(overrides)
    if cfg.family in TRANSLATION_FAMILIES:
        return RunConfig(model=cfg.model, train=cfg.train, task=resolve_paths(cfg.task))
    task = cfg.task
    paths = {k: str(Path(v).expanduser().resolve()) for k in ("path", "valid_path") if (v := getattr(task, k))}
    return RunConfig(model=cfg.model, train=cfg.train, task=replace_section(task, "task", **paths))


def train(
    cfg: RunConfig | None = None,
    out: Path | str = "runs/dates",
    *,
    resume: bool = False,
    overrides: list[str] | None = None,
    until_step: int | None = None,
    progress: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Train a model into run directory ``out`` (or continue it with ``resume=True``); returns the
    summary. ``until_step`` stops early (saving a resumable checkpoint), as a kill would.

    Under torchrun every rank runs this function: each builds the same global batches and trains on
    its share; rank 0 alone evaluates and writes the run directory.
    """
    out = Path(out)
    dist = Distributed.from_env()
    log_fn = log or (lambda msg: print(msg, file=sys.stderr))

    def say(msg: str) -> None:
        if dist.main:
            log_fn(msg)

    cfg = _resolve_config(cfg, out, resume, overrides or [])
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device, dist.local_rank)
    dist.start(device)
    try:
        return _train(cfg, out, resume, until_step, progress, dist, device, say)
    finally:
        dist.stop()


def _train(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    until_step: int | None,
    progress: bool,
    dist: Distributed,
    device: torch.device,
    say: Any,
) -> dict[str, Any]:
    tc = cfg.train
    if resume and dist.main:
        recover(out)
    if not resume:  # rank 0 checks the directory first; nobody writes into an existing run
        error = None
        if dist.main:
            try:
                _prepare_out_dir(out)
            except QkvError as e:
                error = e
        if not dist.broadcast_ok(error is None):
            raise error or QkvError(f"{out} cannot be used as a new run directory")
    tokenizers = load_run_tokenizers(out, cfg.family) if resume else None
    family: Family = make_family(cfg, tokenizers, log=say)
    cfg = RunConfig(model=family.model_config(), train=tc, task=cfg.task)
    torch.manual_seed(tc.seed)
    core, trained = family.build(cfg.model)
    core.to(device)
    optimizer = make_optimizer(trained, tc)
    stream = family.stream()
    step, elapsed, tokens_seen = 0, 0.0, 0
    if resume:
        load_weights(core, load_model_tensors(out), str(out / "model.safetensors"))
        state = load_trainer_state(out, optimizer)
        step, elapsed, tokens_seen = state["step"], state["elapsed_s"], state["tokens_seen"]
        stream.load_state_dict(state["data"])
        if dist.main:
            _truncate_metrics(out / "metrics.jsonl", step)
            atomic_write_json(out / "config.json", cfg.to_dict())  # records train overrides (e.g. more steps)
        say(f"qkv: resuming {out} at step {step}/{tc.steps}")
    elif dist.main:
        atomic_write_json(out / "config.json", cfg.to_dict())
        family.save_tokenizers(out)
    if dist.world_size > 1:
        torch.manual_seed(tc.seed + 7919 * dist.rank + step)  # dropout differs per rank
        model: nn.Module = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        model = trained
    n_params = count_parameters(core)
    what = cfg.task.name if cfg.family in TRANSLATION_FAMILIES else f"text {Path(cfg.task.path or '').name}"
    say(
        f"qkv: training a {n_params:,}-parameter {cfg.family} model on {what} ({device}"
        f"{f', {dist.world_size} processes' if dist.world_size > 1 else ''}), run directory {out}"
    )

    def checkpoint() -> None:
        if dist.main:
            state = {"step": step, "elapsed_s": elapsed, "tokens_seen": tokens_seen, "data": stream.state_dict()}
            save_checkpoint(out, core, optimizer, state)

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        return family.loss_sum(m, b, tc.label_smoothing)

    last = min(until_step if until_step is not None else tc.steps, tc.steps)
    bar = _progress_bar(progress and dist.main, initial=step, total=tc.steps)
    t_start = time.perf_counter() - elapsed
    window_t, window_tok = time.perf_counter(), 0
    per_step = dist.world_size * tc.accum
    with _StopFlag() as flag:
        while step < last:
            batches = [stream.next_batch() for _ in range(per_step)]  # the global batch, same on every rank
            total_tokens = sum(b.num_target_tokens for b in batches)
            mine = [b.to(device) for b in batches[dist.rank :: dist.world_size]]
            stats = train_step(
                model,
                optimizer,
                mine,
                tc,
                step + 1,
                loss_fn=loss_fn,
                total_tokens=total_tokens,
                world_size=dist.world_size,
            )
            step += 1
            tokens_seen += total_tokens
            window_tok += total_tokens
            elapsed = time.perf_counter() - t_start
            if bar is not None:
                now = time.perf_counter()
                tps = window_tok / max(now - window_t, 1e-9)
                if now - window_t > 2.0:
                    window_t, window_tok = now, 0
                bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{stats.lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                bar.update(1)
            stop_now = dist.broadcast_ok(flag.stop) if dist.world_size > 1 else flag.stop
            if step % tc.eval_every == 0 or step == last or stop_now:
                if dist.main:
                    metrics = family.evaluate(core, "valid")
                    row = {"step": step, "elapsed_s": round(elapsed, 2), "lr": stats.lr, "train_loss": stats.loss}
                    row.update({f"valid_{k}": v for k, v in metrics.items() if k != "n" and "signature" not in k})
                    checkpoint()
                    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    msg = f"step {step}: {family.headline(metrics)}"
                    if bar is not None:
                        bar.write(msg, file=sys.stderr)
                    else:
                        say(msg)
                dist.barrier()
                t_start = time.perf_counter() - elapsed  # evaluation time is not training time
            if stop_now:
                break
    if bar is not None:
        bar.close()
    if step < tc.steps:
        say(f"qkv: stopped at step {step}/{tc.steps}; continue with: qkv train --resume {out}")
        return {"step": step, "stopped": True}
    summary: dict[str, Any] = {
        "family": cfg.family,
        "task": cfg.task.name,
        "step": step,
        "parameters": n_params,
        "train_minutes": round(elapsed / 60, 3),
        "tokens_seen": tokens_seen,
        "tokens_per_second": round(tokens_seen / max(elapsed, 1e-9), 1),
        "device": str(device),
        "processes": dist.world_size,
    }
    if dist.main:
        split = family.final_split()
        metrics = family.evaluate(core, split)
        summary["eval_split"] = split
        summary.update({("exact_match" if k == "exact_match" else f"{split}_{k}"): v for k, v in metrics.items()})
        summary[f"{split}_examples"] = summary.pop(f"{split}_n")
        atomic_write_json(out / "summary.json", summary)
    dist.barrier()
    return summary


def _progress_bar(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
