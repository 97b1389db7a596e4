"""Training: schedules, the optimizer, one step, and the :class:`Trainer` — one loop for every model
family (what differs lives in the family's training hooks, :mod:`qkv.families`), on one process or
under torchrun (:mod:`qkv.distributed`).

The paper's recipe (section 5): label-smoothed cross-entropy (ε = 0.1) ignoring padding, Adam
(β = 0.9/0.98, ε = 1e-9), and the "Noam" schedule
lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5). Warmup + inverse-sqrt, cosine and constant
schedules are options; so are gradient clipping and gradient accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
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
    checkpoint_step,
    has_checkpoint,
    keep_best,
    keep_weights,
    load_model_tensors,
    load_trainer_state,
    load_weights,
    make_directory,
    metric_rows,
    recover,
    save_checkpoint,
)
from qkv.config import replace as replace_section
from qkv.data import resolve_paths
from qkv.devices import autocast, grad_scaler, resolve_device, resolve_precision
from qkv.distributed import Distributed, unwrap
from qkv.errors import QkvError
from qkv.families import FAMILIES
from qkv.families.base import TrainingHooks
from qkv.models import count_parameters
from qkv.objectives import label_smoothed_loss
from qkv.recipes import DEFAULT_RECIPE, RECIPES, RunConfig, TrainConfig, read_run_config, recipe
from qkv.trainlog import TrainLog, require_tensorboard

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "fused_adam",
    "label_smoothed_loss",
    "lr_at",
    "make_optimizer",
    "recipe",
    "resolve_config",
    "train",
    "train_step",
]


def lr_at(step: int, cfg: TrainConfig, d_model: int, minutes: float = 0.0) -> float:
    """Learning rate at ``step`` (1-based), after ``minutes`` of training. Under a time budget
    (``max_minutes``) the cosine schedule ends at the step the run reaches at its pace so far,
    ``step · max_minutes / minutes`` (at most ``steps``), so it anneals to ``min_lr`` as the time runs out."""
    step = max(step, 1)
    if cfg.schedule == "noam":
        return cfg.lr * d_model**-0.5 * min(step**-0.5, step * cfg.warmup**-1.5)
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup, 1) / step)
    if cfg.schedule == "cosine":
        last = cfg.steps
        if cfg.max_minutes > 0 and minutes > 0:
            last = min(last, step * cfg.max_minutes / minutes)
        progress = min(1.0, max(0.0, step - cfg.warmup) / max(1, last - cfg.warmup))
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the config's betas and eps; with weight_decay > 0, AdamW decaying only the matrices
    and embeddings (not biases or LayerNorm gains). Fused (one kernel over every parameter) where torch
    has that kernel, as :func:`fused_adam` says."""
    params = list(model.parameters())
    fused = fused_adam(params)
    if cfg.weight_decay == 0:
        return torch.optim.Adam(params, lr=0.0, betas=cfg.betas, eps=cfg.eps, fused=fused)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps, fused=fused)


def fused_adam(params: list[torch.Tensor]) -> bool | None:
    """True where every parameter is a floating-point tensor on the CPU or a CUDA GPU: torch's fused Adam
    there updates every parameter in one kernel, the same update to float rounding (on the CPU its default
    is a Python loop over the parameters: 23 against 3 ms a step for the 7.6M-parameter ``multi30k``
    model); None (torch's own choice) elsewhere."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


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
    scaler: torch.amp.GradScaler | None = None,
    minutes: float = 0.0,
) -> StepStats:
    """One optimizer step over ``micro_batches`` (gradient accumulation).

    The loss is normalised by the number of target tokens in the whole step — ``total_tokens``, all
    ranks together under DistributedDataParallel (which averages gradients over ``world_size``, hence
    the factor) — so accumulation and data parallelism both equal one big batch. ``loss_fn(model,
    batch)`` gives a batch's summed loss (default: the translation label-smoothed loss). ``minutes`` of
    training so far set the learning rate under a time budget (:func:`lr_at`). Gradients that are not finite
    (without a loss ``scaler``, which skips such steps itself) are a QkvError before the update: the weights
    never take NaN.
    """
    core = unwrap(model)
    if loss_fn is None:

        def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
            return m(b.src, b.tgt_in, target=b.tgt_out, label_smoothing=cfg.label_smoothing).loss

    lr = lr_at(step, cfg, core.cfg.d_model, minutes)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    tokens = total_tokens if total_tokens is not None else sum(b.num_target_tokens for b in micro_batches)
    device = next(core.parameters()).device
    precision = resolve_precision(cfg.precision, device, flag="train.precision")
    total = 0.0
    for i, b in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(device, precision):
                loss = loss_fn(model, b)
            scaled = loss * (world_size / tokens)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.item()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf))
    if scaler is None and not math.isfinite(grad_norm):  # (the norm is all-reduced: every rank stops here)
        raise QkvError(
            f"training diverged at step {step}: the gradients are not finite (loss {total * world_size / tokens:.4g}); "
            f"the weights keep the last step's values and the run its last checkpoint: resume with a lower "
            f"train.lr (now {cfg.lr:g}) or a longer train.warmup (now {cfg.warmup})"
        )
    if scaler is not None:
        scaler.step(optimizer)  # skipped when a gradient is inf/nan; the scale then shrinks
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(total * world_size / tokens, tokens, lr, grad_norm)


def _prepare_out_dir(out: Path) -> None:
    """A directory for a new run: absent, empty, or left by a run killed before it wrote config.json (then
    it holds only tokenizer files and data being prepared, which are made again)."""
    if out.exists() and out.is_dir():
        names = {p.name for p in out.iterdir()}
        leftovers = {n for f in FAMILIES.values() for n in f.run.TOKENIZER_FILES} | {
            n for n in names if n.endswith(".partial") or n == "data" or n.startswith(".data.")
        }
        if names <= leftovers:
            for name in names:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
            return
    if out.exists():
        raise QkvError(f"{out} already exists and is not empty; resume it with --resume {out} or choose another --out")
    make_directory(out)


class _StopFlag:
    """Turns the first SIGINT (Ctrl-C), SIGTERM (a job's time limit, a cluster preempting it) or SIGUSR1
    (Slurm's warning signal) into 'stop after this step and save'; a second one aborts."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n))

    def __init__(self) -> None:
        self.stop = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop, self.signal_name = True, signal.Signals(signum).name
        print(
            f"\nqkv: {self.signal_name}: stopping after this step and saving; send it again to abort", file=sys.stderr
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` when resuming, and damaged ones (a torn last line, a line that
    is not a JSON object with a numeric step), as :func:`~qkv.checkpoint.read_metrics` skips them."""
    if not path.exists():
        return
    keep = []
    for line, row in metric_rows(path):
        logged = row.get("step", 0)
        if isinstance(logged, (int, float)) and not isinstance(logged, bool) and logged <= step:
            keep.append(line)
    atomic_write_bytes(path, ("".join(k + "\n" for k in keep)).encode())


def resolve_config(cfg: RunConfig | None, out: Path, resume: bool, overrides: list[str]) -> RunConfig:
    """The config a run will train with: ``cfg`` (default: the default recipe) with ``overrides`` and data
    paths made absolute, or when resuming, the run's own config with overrides of its train section."""
    if resume:
        cfg = read_run_config(out)
        resumed = cfg.with_overrides(overrides, sections=("train", "decode"))
        if resumed.train.init != cfg.train.init:
            raise QkvError("train.init starts a new run; a resumed run continues from its own weights: drop it")
        return resumed
    cfg = _with_init((cfg or recipe(DEFAULT_RECIPE)).with_overrides(overrides))
    if cfg.spec.translation:
        return dataclasses.replace(cfg, task=resolve_paths(cfg.task))
    task = cfg.task
    paths = {k: str(Path(v).expanduser().resolve()) for k in ("path", "valid_path") if (v := getattr(task, k))}
    return dataclasses.replace(cfg, task=replace_section(task, "task", **paths))


def _with_init(cfg: RunConfig) -> RunConfig:
    """With ``train.init``: the model section of the run it names (its absolute path recorded)."""
    if not cfg.train.init:
        return cfg
    init = Path(cfg.train.init).expanduser().resolve()
    base = read_run_config(init)
    if base.family != cfg.family:
        raise QkvError(f"--init {init} is a {base.family} run, but the preset trains a {cfg.family} model")
    return dataclasses.replace(cfg, model=base.model, train=replace_section(cfg.train, "train", init=str(init)))


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

    cfg = resolve_config(cfg, out, resume, overrides or [])
    if cfg.train.tensorboard and dist.main:
        require_tensorboard()  # before anything is written
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if dist.world_size > 1 and ":" in cfg.train.device:
        raise QkvError(f"train.device={cfg.train.device} under torchrun: use cuda (each rank takes its own GPU)")
    device = resolve_device(cfg.train.device, dist.local_rank, flag="train.device")
    dist.start(device)
    created = not out.exists()
    try:
        try:
            trainer = Trainer(cfg, out, resume=resume, dist=dist, device=device, say=say)
        except QkvError:
            if created and dist.main and not (out / "config.json").exists():
                shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves nothing behind
            raise
        return trainer.run(until_step, progress)
    finally:
        dist.stop()


class Trainer:
    """One training run into a run directory: the run's state as fields (step, elapsed time, tokens
    seen; model, optimizer, data stream), the loop as small named methods. The family's training hooks
    supply tokenizers, model, batches, loss and evaluation; this class does the rest for every family:
    the run directory, resuming, data parallelism, the step loop, evaluation, checkpoints, the summary."""

    def __init__(
        self,
        cfg: RunConfig,
        out: Path,
        *,
        resume: bool = False,
        dist: Distributed | None = None,
        device: torch.device | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.out, self.resume, self.say = out, resume, say
        self.dist = dist or Distributed()
        self.device = device or torch.device("cpu")
        self.step, self.elapsed, self.tokens_seen = 0, 0.0, 0
        self.clock = 0.0  # rank 0's training seconds after the last step: what every rank's schedule reads
        self._last_save = time.perf_counter()
        self._open_directory()
        self.hooks = self._make_hooks(cfg)
        self.cfg = dataclasses.replace(cfg, model=self.hooks.model_config())
        torch.manual_seed(self.cfg.train.seed)
        self.core, trained = self.hooks.build(self.cfg.model)
        if self.cfg.train.init and not resume:  # fine-tuning: the weights of the run it starts from
            init = Path(self.cfg.train.init)
            load_weights(self.core, load_model_tensors(init), str(init / "model.safetensors"))
        self.core.to(self.device)
        self.optimizer = make_optimizer(trained, self.cfg.train)
        self.precision = resolve_precision(self.cfg.train.precision, self.device, flag="train.precision")
        self.scaler = grad_scaler(self.device, self.precision)
        self.stream = self.hooks.stream()
        self._restore_or_start()
        if self.dist.world_size > 1:
            torch.manual_seed(self.cfg.train.seed + 7919 * self.dist.rank + self.step)  # dropout differs per rank
        self.model = self.dist.wrap(trained, self.device)
        if self.cfg.train.compile:
            self.model = torch.compile(self.model)  # the same parameters; saved through self.core
        self.parameters = count_parameters(self.core)

    def _make_hooks(self, cfg: RunConfig) -> TrainingHooks:
        """The family's training hooks, which read (and for parallel files, prepare into the run directory)
        the data: rank 0 first, then the other ranks, who find what it prepared."""
        spec = cfg.spec
        tokenizers = spec.run.load_tokenizers(self.out) if self.resume else None
        if cfg.train.init and not self.resume:
            tokenizers = spec.run.load_tokenizers(Path(cfg.train.init))

        def make() -> TrainingHooks:
            return spec.hooks(spec, cfg, tokenizers, log=self.say, workdir=self.out)  # type: ignore[call-arg]

        hooks, error = None, None
        if self.dist.main:
            try:
                hooks = make()
            except QkvError as e:
                error = e
        if not self.dist.broadcast_ok(error is None):
            raise error or QkvError("rank 0 could not read the training data; see its message")
        return hooks or make()

    def _open_directory(self) -> None:
        """Resuming: finish or roll back a checkpoint write a kill left halfway. A new run: rank 0 checks
        the directory first, and nobody writes into an existing run."""
        if self.resume:
            if self.dist.main:
                recover(self.out)
            return
        error = None
        if self.dist.main:
            try:
                _prepare_out_dir(self.out)
            except QkvError as e:
                error = e
        if not self.dist.broadcast_ok(error is None):
            raise error or QkvError(f"{self.out} cannot be used as a new run directory")

    def _restore_or_start(self) -> None:
        """Load weights, optimizer, RNG and data position when resuming (a run killed before its first
        checkpoint starts again from step 0); write tokenizers, then config.json, when new."""
        if not self.resume:
            if self.dist.main:
                self.hooks.save_tokenizers(self.out)
                atomic_write_json(self.out / "config.json", self.cfg.to_dict())  # last: marks a usable run
            return
        if not has_checkpoint(self.out):
            self.say(f"qkv: {self.out} has no checkpoint yet: starting it from step 0")
            return
        step = checkpoint_step(self.out)
        if self.cfg.train.steps < step:
            raise QkvError(
                f"{self.out} is at step {step}: resuming needs train.steps >= {step} (got {self.cfg.train.steps})"
            )
        load_weights(self.core, load_model_tensors(self.out), str(self.out / "model.safetensors"))
        state = load_trainer_state(self.out, self.optimizer)
        self.step, self.elapsed, self.tokens_seen = state["step"], state["elapsed_s"], state["tokens_seen"]
        self.stream.load_state_dict(state["data"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.dist.main:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
            if self.step < self.cfg.train.steps:  # the run goes on: its old summary no longer holds
                (self.out / "summary.json").unlink(missing_ok=True)
            atomic_write_json(self.out / "config.json", self.cfg.to_dict())  # records train overrides (more steps)
        self.say(f"qkv: resuming {self.out} at step {self.step}/{self.cfg.train.steps}")

    def run(self, until_step: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train to ``train.steps`` or ``train.max_minutes`` (or stop resumably after ``until_step``, or at
        Ctrl-C); returns the summary."""
        tc, dist = self.cfg.train, self.dist
        processes = f", {dist.world_size} processes" if dist.world_size > 1 else ""
        self.say(
            f"qkv: training a {self.parameters:,}-parameter {self.cfg.family} model on {self.hooks.describe_data()} "
            f"({self.device}, {self.precision}{processes}), run directory {self.out}"
        )
        last = min(until_step if until_step is not None else tc.steps, tc.steps)
        self.log = TrainLog(
            self.out,
            log_every=tc.log_every,
            tensorboard=tc.tensorboard,
            main=dist.main,
            progress=progress,
            step=self.step,
            total=tc.steps,
            device=self.device,
            say=self.say,
            budget_s=60 * tc.max_minutes,
        )
        t_start = time.perf_counter() - self.elapsed
        self._last_save = time.perf_counter()
        last_eval, time_up, self.clock = self.elapsed, self._time_up(), self.elapsed
        with _StopFlag() as flag, contextlib.closing(self.log):  # (the bar and event files close on errors too)
            while self.step < last and not time_up:
                stats, nll = self.train_one_step()
                self.elapsed = time.perf_counter() - t_start
                self.log.step(self.step, stats, self.elapsed, nll)
                # rank 0's clock and signal decide for every rank (one collective a step)
                eval_due = tc.eval_minutes > 0 and self.elapsed - last_eval >= 60 * tc.eval_minutes
                stop_now, time_up, eval_due, self.clock = dist.from_main(
                    (flag.stop, self._time_up(), eval_due, self.elapsed)
                )
                if self.step % tc.eval_every == 0 or self.step == last or stop_now or time_up or eval_due:
                    self.evaluate_and_save(stats)
                    t_start = time.perf_counter() - self.elapsed  # evaluation time is not training time
                    last_eval = self.elapsed
                    self.log.pause(self.step)
                elif self._save_due():
                    self.checkpoint()
                if stop_now:
                    break
        if time_up and self.step < tc.steps:
            self.say(f"qkv: {tc.max_minutes:g} minutes of training reached at step {self.step}")
        elif self.step < tc.steps:
            why = f" ({flag.signal_name})" if flag.signal_name else ""
            self.say(f"qkv: stopped at step {self.step}/{tc.steps}{why}; continue with: qkv train --resume {self.out}")
            return {"step": self.step, "stopped": True}
        return self.finish()

    def _time_up(self) -> bool:
        """Whether the run's training time has reached ``train.max_minutes`` (never when it is 0)."""
        limit = self.cfg.train.max_minutes
        return limit > 0 and self.elapsed >= 60 * limit

    def _save_due(self) -> bool:
        """A checkpoint between evaluations: every ``save_every`` steps, or ``save_minutes`` after the last."""
        tc = self.cfg.train
        by_steps = tc.save_every > 0 and self.step % tc.save_every == 0
        return by_steps or (tc.save_minutes > 0 and time.perf_counter() - self._last_save >= 60 * tc.save_minutes)

    def train_one_step(self) -> tuple[StepStats, float | None]:
        """One optimizer step on the next global batch (the same on every rank; each trains on its share);
        with the step's plain NLL per token (of this rank's share) when the step is logged."""
        tc, dist = self.cfg.train, self.dist
        batches = [self.stream.next_batch() for _ in range(dist.world_size * tc.accum)]
        total_tokens = sum(b.num_target_tokens for b in batches)
        mine = [b.to(self.device) for b in batches[dist.rank :: dist.world_size]]
        self.hooks.nll = [] if self.log.wants_nll(self.step + 1) else None
        stats = train_step(
            self.model,
            self.optimizer,
            mine,
            tc,
            self.step + 1,
            loss_fn=lambda m, b: self.hooks.loss_sum(m, b, tc.label_smoothing),
            total_tokens=total_tokens,
            world_size=dist.world_size,
            scaler=self.scaler,
            minutes=self.clock / 60,
        )
        nll = None if self.hooks.nll is None else sum(self.hooks.nll) / sum(b.num_target_tokens for b in mine)
        self.hooks.nll = None
        self.step += 1
        self.tokens_seen += total_tokens
        return stats, nll

    def evaluate_and_save(self, stats: StepStats) -> None:
        """Rank 0: evaluate on the validation split, checkpoint, log a metrics row; every rank waits."""
        if self.dist.main:
            metrics = self.hooks.evaluate(self.core, "valid")
            row = {"step": self.step, "elapsed_s": round(self.elapsed, 2), "lr": stats.lr, "train_loss": stats.loss}
            row.update({f"valid_{k}": v for k, v in metrics.items() if k != "n" and "signature" not in k})
            self.checkpoint()
            if self.cfg.train.keep_best:
                bleu = "bleu" in metrics
                value = metrics["bleu"] if bleu else metrics["loss"]
                keep_best(self.out, self.core, self.step, "valid_bleu" if bleu else "valid_loss", value, bleu)
            self.log.evaluation(row, f"step {self.step}: {self.hooks.headline(metrics)}")
        self.dist.barrier()

    def checkpoint(self) -> None:
        """Save weights, optimizer, RNG and data position as one atomic checkpoint (rank 0)."""
        if self.dist.main:
            state = {
                "step": self.step,
                "elapsed_s": self.elapsed,
                "tokens_seen": self.tokens_seen,
                "data": self.stream.state_dict(),
            }
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            save_checkpoint(self.out, self.core, self.optimizer, state)
            if self.cfg.train.keep_last:
                keep_weights(self.out, self.core, self.step, self.cfg.train.keep_last)
        self._last_save = time.perf_counter()

    def finish(self) -> dict[str, Any]:
        """The summary of a completed run; rank 0 adds the final split's metrics and writes summary.json."""
        summary: dict[str, Any] = {
            "family": self.cfg.family,
            "task": self.cfg.task.name,
            "step": self.step,
            "parameters": self.parameters,
            "train_minutes": round(self.elapsed / 60, 3),
            "tokens_seen": self.tokens_seen,
            "tokens_per_second": round(self.tokens_seen / max(self.elapsed, 1e-9), 1),
            "device": str(self.device),
            "precision": self.precision,
            "processes": self.dist.world_size,
        }
        if self.dist.main:
            split = self.hooks.final_split()
            metrics = self.hooks.evaluate(self.core, split)
            summary["eval_split"] = split
            summary.update({("exact_match" if k == "exact_match" else f"{split}_{k}"): v for k, v in metrics.items()})
            summary[f"{split}_examples"] = summary.pop(f"{split}_n")
            atomic_write_json(self.out / "summary.json", summary)
        self.dist.barrier()
        return summary
