"""Training as importable functions: schedules, the loss, one step, evaluation, and the whole loop.

The paper's recipe (section 5): label-smoothed cross-entropy (ε = 0.1) ignoring padding, Adam
(β = 0.9/0.98, ε = 1e-9), and the "Noam" schedule
lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5). Warmup + inverse-sqrt, cosine and constant
schedules are options; so are gradient clipping and gradient accumulation.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from qkv.config import check, config_from_dict, config_to_dict, field_names, parse_override_value, replace
from qkv.data import Seq2SeqBatch, Task, TaskConfig, Vocab, encode_pairs, get_task
from qkv.decode import greedy
from qkv.errors import QkvError
from qkv.models import Transformer, TransformerConfig, build_transformer, count_parameters

__all__ = [
    "RECIPES",
    "RunConfig",
    "TaskStream",
    "TrainConfig",
    "evaluate",
    "label_smoothed_loss",
    "lr_at",
    "make_optimizer",
    "train",
    "train_step",
]

SCHEDULES = ("noam", "inverse_sqrt", "cosine", "constant")


@dataclass
class TrainConfig:
    """How to train. ``lr`` is the peak learning rate, except for ``schedule="noam"`` where it
    multiplies the paper's formula (1.0 = the paper)."""

    steps: int = 2000
    batch_size: int = 64
    accum: int = 1
    lr: float = 1.0
    schedule: str = "noam"
    warmup: int = 4000
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip: float = 1.0
    eval_every: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        s = "train"
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        check(self.steps >= 1, s, "steps", self.steps, "must be >= 1")
        check(self.batch_size >= 1, s, "batch_size", self.batch_size, "must be >= 1")
        check(self.accum >= 1, s, "accum", self.accum, "must be >= 1")
        check(self.lr > 0, s, "lr", self.lr, "must be > 0")
        check(self.schedule in SCHEDULES, s, "schedule", self.schedule, f"choose one of {', '.join(SCHEDULES)}")
        check(self.warmup >= 0, s, "warmup", self.warmup, "must be >= 0")
        check(self.schedule != "noam" or self.warmup > 0, s, "warmup", self.warmup, "noam needs warmup > 0")
        check(0 <= self.min_lr, s, "min_lr", self.min_lr, "must be >= 0")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), s, "betas", self.betas, "two values in [0, 1)"
        )
        check(self.eps > 0, s, "eps", self.eps, "must be > 0")
        check(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.label_smoothing < 1, s, "label_smoothing", self.label_smoothing, "must be in [0, 1)")
        check(self.clip >= 0, s, "clip", self.clip, "must be >= 0 (0 turns clipping off)")
        check(self.eval_every >= 1, s, "eval_every", self.eval_every, "must be >= 1")
        check(self.device in ("auto", "cpu", "cuda"), s, "device", self.device, "choose auto, cpu or cuda")
        check(self.threads >= 0, s, "threads", self.threads, "must be >= 0 (0 = torch's default)")


@dataclass
class RunConfig:
    """Everything that defines a run: the model, the training, the data."""

    model: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    SECTIONS = ("model", "train", "task")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in config.json."""
        return {"family": "seq2seq", **{s: config_to_dict(getattr(self, s)) for s in self.SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model=TransformerConfig.from_dict(data["model"]),
            train=config_from_dict(TrainConfig, data["train"], "train"),
            task=TaskConfig.from_dict(data["task"]),
        )

    def with_overrides(self, overrides: list[str], sections: tuple[str, ...] = SECTIONS) -> RunConfig:
        """Apply ``key=value`` strings; ``key`` is ``section.field`` or a field name unique to one section."""
        changes: dict[str, dict[str, Any]] = {s: {} for s in self.SECTIONS}
        classes = {"model": TransformerConfig, "train": TrainConfig, "task": TaskConfig}
        for item in overrides:
            if "=" not in item or item.startswith("="):
                raise QkvError(f"malformed override {item!r}: write KEY=VALUE, e.g. d_model=256 or train.steps=500")
            key, value = item.split("=", 1)
            if "." in key:
                section, name = key.split(".", 1)
                if section not in self.SECTIONS:
                    raise QkvError(f"unknown section '{section}' in {item!r}: use {', '.join(self.SECTIONS)}")
            else:
                owners = [s for s in self.SECTIONS if key in field_names(classes[s])]
                if len(owners) > 1:
                    raise QkvError(f"'{key}' is ambiguous: write {' or '.join(f'{s}.{key}' for s in owners)}")
                section, name = (owners[0] if owners else "train"), key
            if section not in sections:
                raise QkvError(f"{section}.{name} cannot change when resuming; only {', '.join(sections)} can")
            changes[section][name] = parse_override_value(classes[section], name, value, section)
        return RunConfig(**{s: replace(getattr(self, s), s, **changes[s]) for s in self.SECTIONS})


# Named recipes for `qkv train PRESET`. "dates" is the built-in default.
RECIPES: dict[str, RunConfig] = {
    "dates": RunConfig(
        model=TransformerConfig(d_model=128, h=4, N=2, d_ff=512, dropout=0.1, max_len=64),
        train=TrainConfig(steps=2000, batch_size=64, lr=2e-3, schedule="cosine", warmup=200, eval_every=500),
        task=TaskConfig(name="dates"),
    ),
    **{
        name: RunConfig(
            model=TransformerConfig(d_model=128, h=4, N=2, d_ff=512, dropout=0.1, max_len=64),
            train=TrainConfig(steps=2000, batch_size=64, lr=2e-3, schedule="cosine", warmup=200, eval_every=500),
            task=TaskConfig(name=name),
        )
        for name in ("copy", "reverse", "sort")
    },
    "base": RunConfig(model=TransformerConfig(), train=TrainConfig(steps=100_000, batch_size=64)),
    "big": RunConfig(
        model=TransformerConfig(d_model=1024, h=16, N=6, d_ff=4096, dropout=0.3),
        train=TrainConfig(steps=300_000, batch_size=64),
    ),
}
DEFAULT_RECIPE = "dates"


def recipe(name: str) -> RunConfig:
    """The named recipe (see ``RECIPES``)."""
    if name not in RECIPES:
        raise QkvError(f"unknown preset '{name}': choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


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


def label_smoothed_loss(logits: Tensor, target: Tensor, eps: float, pad_id: int = 0) -> Tensor:
    """Sum over non-pad targets of (1-ε)·NLL + ε·mean_v(-log p_v); logits (B, T, V), target (B, T)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=eps,
        reduction="sum",
    )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when weight_decay > 0) with the config's betas and eps."""
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    return cls(model.parameters(), lr=0.0, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


@dataclass
class StepStats:
    """What one optimizer step did."""

    loss: float
    tokens: int
    lr: float
    grad_norm: float


def train_step(
    model: Transformer, optimizer: torch.optim.Optimizer, micro_batches: list[Seq2SeqBatch], cfg: TrainConfig, step: int
) -> StepStats:
    """One optimizer step over ``micro_batches`` (gradient accumulation); the loss is normalised by
    the total number of target tokens, so accumulation equals one big batch."""
    lr = lr_at(step, cfg, model.cfg.d_model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    tokens = sum(b.num_target_tokens for b in micro_batches)
    total = 0.0
    for b in micro_batches:
        loss = label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, cfg.label_smoothing, model.cfg.pad_id)
        (loss / tokens).backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(total / tokens, tokens, lr, grad_norm)


class TaskStream:
    """Training batches drawn from a built-in task; its position is the RNG state (JSON-serialisable)."""

    def __init__(self, task: Task, src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int, seed: int) -> None:
        self.task, self.src_vocab, self.tgt_vocab, self.batch_size = task, src_vocab, tgt_vocab, batch_size
        self.rng = random.Random(seed)

    def next_batch(self) -> Seq2SeqBatch:
        """The next batch."""
        pairs = [self.task.train_pair(self.rng) for _ in range(self.batch_size)]
        return encode_pairs(pairs, self.src_vocab, self.tgt_vocab)

    def state_dict(self) -> dict[str, Any]:
        """Position in the stream."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


@torch.no_grad()
def evaluate(
    model: Transformer,
    pairs: list[tuple[str, str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    *,
    batch_size: int = 256,
    exact_match: bool = True,
) -> dict[str, float]:
    """Loss (mean NLL per target token), token accuracy (teacher-forced) and exact match (greedy)."""
    model.eval()
    device = next(model.parameters()).device
    nll, correct, tokens, exact = 0.0, 0, 0, 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        b = encode_pairs(chunk, src_vocab, tgt_vocab).to(device)
        logits = model(b.src, b.tgt_in)
        real = b.tgt_out != tgt_vocab.pad_id
        nll += float(label_smoothed_loss(logits, b.tgt_out, 0.0, tgt_vocab.pad_id))
        correct += int(((logits.argmax(-1) == b.tgt_out) & real).sum())
        tokens += int(real.sum())
        if exact_match:
            hyps = greedy(model, b.src, bos_id=tgt_vocab.bos_id, eos_id=tgt_vocab.eos_id)
            exact += sum(tgt_vocab.decode(h.tokens) == ref for h, (_, ref) in zip(hyps, chunk, strict=True))
    out = {"loss": nll / tokens, "token_accuracy": correct / tokens, "n": len(pairs)}
    if exact_match:
        out["exact_match"] = exact / len(pairs)
    return out


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu."""
    if name == "cuda" and not torch.cuda.is_available():
        raise QkvError("train.device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else name if name != "auto" else "cpu")


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
    summary. ``until_step`` stops early (saving a resumable checkpoint), as a kill would."""
    out = Path(out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if resume:
        if not (out / "config.json").exists():
            raise QkvError(f"{out} is not a qkv run directory (no config.json); check the path")
        recover(out)
        cfg = RunConfig.from_dict(read_json(out / "config.json")).with_overrides(overrides or [], sections=("train",))
    else:
        cfg = (cfg or recipe(DEFAULT_RECIPE)).with_overrides(overrides or [])
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    task = get_task(cfg.task)
    src_vocab, tgt_vocab = task.vocabs()
    cfg = replace_model_vocab(cfg, src_vocab, tgt_vocab)
    torch.manual_seed(tc.seed)
    model = build_transformer(cfg.model).to(device)
    optimizer = make_optimizer(model, tc)
    stream = TaskStream(task, src_vocab, tgt_vocab, tc.batch_size, tc.seed)
    step, elapsed, tokens_seen = 0, 0.0, 0
    if resume:
        load_weights(model, load_model_tensors(out), str(out / "model.safetensors"))
        state = load_trainer_state(out, optimizer)
        step, elapsed, tokens_seen = state["step"], state["elapsed_s"], state["tokens_seen"]
        stream.load_state_dict(state["data"])
        _truncate_metrics(out / "metrics.jsonl", step)
        atomic_write_json(out / "config.json", cfg.to_dict())  # records train overrides (e.g. more steps)
        log(f"qkv: resuming {out} at step {step}/{tc.steps}")
    else:
        _prepare_out_dir(out)
        atomic_write_json(out / "config.json", cfg.to_dict())
        src_vocab.save(out / "src_vocab.json")
        tgt_vocab.save(out / "tgt_vocab.json")
    valid = task.split("valid")
    n_params = count_parameters(model)
    log(f"qkv: training {n_params:,} parameters on task '{cfg.task.name}' ({device}), run directory {out}")

    def checkpoint() -> None:
        state = {"step": step, "elapsed_s": elapsed, "tokens_seen": tokens_seen, "data": stream.state_dict()}
        save_checkpoint(out, model, optimizer, state)

    last = until_step if until_step is not None else tc.steps
    bar = _progress_bar(progress, initial=step, total=tc.steps)
    t_start = time.perf_counter() - elapsed
    window_t, window_tok = time.perf_counter(), 0
    with _StopFlag() as flag:
        while step < min(last, tc.steps):
            batches = [stream.next_batch().to(device) for _ in range(tc.accum)]
            stats = train_step(model, optimizer, batches, tc, step + 1)
            step += 1
            tokens_seen += stats.tokens
            window_tok += stats.tokens
            elapsed = time.perf_counter() - t_start
            if bar is not None:
                now = time.perf_counter()
                tps = window_tok / max(now - window_t, 1e-9)
                if now - window_t > 2.0:
                    window_t, window_tok = now, 0
                bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{stats.lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                bar.update(1)
            if step % tc.eval_every == 0 or step == tc.steps or flag.stop or step == last:
                metrics = evaluate(model, valid, src_vocab, tgt_vocab, exact_match=True)
                row = {"step": step, "elapsed_s": round(elapsed, 2), "lr": stats.lr, "train_loss": stats.loss}
                row.update({f"valid_{k}": v for k, v in metrics.items() if k != "n"})
                checkpoint()
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                if bar is not None:
                    bar.write(
                        f"step {step}: valid loss {metrics['loss']:.4f}, token acc {metrics['token_accuracy']:.4f}, "
                        f"exact match {metrics['exact_match']:.4f}",
                        file=sys.stderr,
                    )
            if flag.stop:
                break
    if bar is not None:
        bar.close()
    if step < tc.steps:
        log(f"qkv: stopped at step {step}/{tc.steps}; continue with: qkv train --resume {out}")
        return {"step": step, "stopped": True}
    test = task.split("test")
    metrics = evaluate(model, test, src_vocab, tgt_vocab, exact_match=True)
    summary = {
        "task": cfg.task.name,
        "step": step,
        "parameters": n_params,
        "train_minutes": round(elapsed / 60, 3),
        "tokens_seen": tokens_seen,
        "test_loss": metrics["loss"],
        "test_token_accuracy": metrics["token_accuracy"],
        "exact_match": metrics["exact_match"],
        "test_examples": metrics["n"],
        "device": str(device),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def replace_model_vocab(cfg: RunConfig, src_vocab: Vocab, tgt_vocab: Vocab) -> RunConfig:
    """Fill the model's vocabulary sizes from the tokenizers."""
    model = replace(cfg.model, "model", src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab))
    return RunConfig(model=model, train=cfg.train, task=cfg.task)


def _progress_bar(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
