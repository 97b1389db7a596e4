"""Training as importable functions: schedules, the loss, one step, evaluation, and the whole loop.

The paper's recipe (section 5): label-smoothed cross-entropy (ε = 0.1) ignoring padding, Adam
(β = 0.9/0.98, ε = 1e-9), and the "Noam" schedule
lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5). Warmup + inverse-sqrt, cosine and constant
schedules are options; so are gradient clipping and gradient accumulation.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from qkv.data import Seq2SeqBatch, TaskConfig, build_source, encode_pairs, load_tokenizer, resolve_paths
from qkv.decode import greedy
from qkv.errors import QkvError
from qkv.models import Transformer, TransformerConfig, build_transformer, count_parameters

__all__ = [
    "RECIPES",
    "RunConfig",
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
    multiplies the paper's formula (1.0 = the paper). ``max_tokens`` > 0 makes token-budget batches
    (parallel text); otherwise a batch is ``batch_size`` sentences. ``bf16`` runs the forward pass
    under bfloat16 autocast (for GPUs; slow on CPUs without AVX-512)."""

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
    max_tokens: int = 0
    bf16: bool = False

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
        check(self.max_tokens >= 0, s, "max_tokens", self.max_tokens, "must be >= 0 (0 = batch_size sentences)")


@dataclass
class RunConfig:
    """Everything that defines a run: the model, the training, the data."""

    model: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    SECTIONS = ("model", "train", "task")

    def __post_init__(self) -> None:
        if self.task.name == "parallel":
            check(
                self.task.max_len + 2 <= self.model.max_len,
                "task",
                "max_len",
                self.task.max_len,
                f"must leave room for <bos>/<eos> within model.max_len={self.model.max_len}",
            )

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
    # Multi30k De→En (or any parallel text) sized for a 2-core CPU: give the files with
    # --train SRC TGT --valid SRC TGT [--test SRC TGT].
    "multi30k": RunConfig(
        model=TransformerConfig(
            d_model=256, h=4, N=3, d_ff=1024, dropout=0.1, attention_dropout=0.0, max_len=128, share_embeddings="all"
        ),
        train=TrainConfig(
            steps=2400, max_tokens=4096, lr=2e-3, schedule="cosine", warmup=400, min_lr=1e-5, eval_every=600
        ),
        task=TaskConfig(name="parallel", max_len=100, vocab_size=8000, joint_vocab=True),
    ),
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
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Seq2SeqBatch],
    cfg: TrainConfig,
    step: int,
    *,
    total_tokens: int | None = None,
    world_size: int = 1,
) -> StepStats:
    """One optimizer step over ``micro_batches`` (gradient accumulation).

    The loss is normalised by the number of target tokens in the whole step — ``total_tokens``, all
    ranks together under DistributedDataParallel (which averages gradients over ``world_size``, hence
    the factor) — so accumulation and data parallelism both equal one big batch.
    """
    core = unwrap(model)
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
                logits = model(b.src, b.tgt_in)
            loss = label_smoothed_loss(logits, b.tgt_out, cfg.label_smoothing, core.cfg.pad_id)
            (loss * (world_size / tokens)).backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(total * world_size / tokens, tokens, lr, grad_norm)


def unwrap(model: nn.Module) -> Transformer:
    """The Transformer inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@torch.no_grad()
def evaluate(
    model: Transformer,
    pairs: list[tuple[str, str]],
    src_tok: Any,
    tgt_tok: Any,
    *,
    batch_size: int = 128,
    bleu: bool = False,
    beam: int = 1,
) -> dict[str, float]:
    """Loss (mean NLL per target token), token accuracy (teacher-forced), exact match of the decoded
    output (greedy, or beam search), and — with ``bleu`` — sacreBLEU BLEU and chrF on detokenized text."""
    from qkv.decode import beam_search

    model.eval()
    device = next(model.parameters()).device
    nll, correct, tokens = 0.0, 0, 0
    hyps: list[str] = []
    pairs = sorted(pairs, key=lambda p: len(p[0]))  # similar lengths share a batch; metrics ignore order
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        b = encode_pairs(chunk, src_tok, tgt_tok).to(device)
        logits = model(b.src, b.tgt_in)
        real = b.tgt_out != tgt_tok.pad_id
        nll += float(label_smoothed_loss(logits, b.tgt_out, 0.0, tgt_tok.pad_id))
        correct += int(((logits.argmax(-1) == b.tgt_out) & real).sum())
        tokens += int(real.sum())
        ids = {"bos_id": tgt_tok.bos_id, "eos_id": tgt_tok.eos_id}
        if beam == 1:
            decoded = greedy(model, b.src, **ids)
        else:
            decoded = [h[0] for h in beam_search(model, b.src, beam=beam, **ids)]
        hyps.extend(tgt_tok.decode(h.tokens) for h in decoded)
    refs = [t for _, t in pairs]
    out = {
        "loss": nll / tokens,
        "token_accuracy": correct / tokens,
        "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(pairs),
        "n": len(pairs),
    }
    if bleu:
        out.update(bleu_scores(hyps, refs))
    return out


def bleu_scores(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    """sacreBLEU on detokenized text: cased BLEU, lowercased BLEU (-lc), chrF, and their signatures."""
    import sacrebleu

    cased = sacrebleu.metrics.BLEU()
    lower = sacrebleu.metrics.BLEU(lowercase=True)
    chrf = sacrebleu.metrics.CHRF()
    return {
        "bleu": cased.corpus_score(hyps, [refs]).score,
        "bleu_lc": lower.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "bleu_signature": str(cased.get_signature()),
        "bleu_lc_signature": str(lower.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


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
        import os

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


TOKENIZER_FILES = ("src_tokenizer.json", "tgt_tokenizer.json")


def load_run_tokenizers(run: Path) -> tuple[Any, Any]:
    """The source and target tokenizers saved in a run directory."""
    return load_tokenizer(run / TOKENIZER_FILES[0]), load_tokenizer(run / TOKENIZER_FILES[1])


def _resolve_config(cfg: RunConfig | None, out: Path, resume: bool, overrides: list[str]) -> RunConfig:
    if resume:
        if not (out / "config.json").exists():
            raise QkvError(f"{out} is not a qkv run directory (no config.json); check the path")
        return RunConfig.from_dict(read_json(out / "config.json")).with_overrides(overrides, sections=("train",))
    cfg = (cfg or recipe(DEFAULT_RECIPE)).with_overrides(overrides)
    return RunConfig(model=cfg.model, train=cfg.train, task=resolve_paths(cfg.task))


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
    tokenizers = load_run_tokenizers(out) if resume else None
    source = build_source(cfg.task, tokenizers, log=say)
    cfg = RunConfig(
        model=replace(cfg.model, "model", src_vocab_size=len(source.src_tok), tgt_vocab_size=len(source.tgt_tok)),
        train=tc,
        task=cfg.task,
    )
    torch.manual_seed(tc.seed)
    core = build_transformer(cfg.model).to(device)
    optimizer = make_optimizer(core, tc)
    stream = source.stream(tc.batch_size, tc.max_tokens, tc.seed)
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
        source.src_tok.save(out / TOKENIZER_FILES[0])
        source.tgt_tok.save(out / TOKENIZER_FILES[1])
    if dist.world_size > 1:
        torch.manual_seed(tc.seed + 7919 * dist.rank + step)  # dropout differs per rank
        model: nn.Module = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        model = core
    bleu = cfg.task.name == "parallel"
    valid = source.split("valid") if dist.main else []
    n_params = count_parameters(core)
    say(
        f"qkv: training {n_params:,} parameters on task '{cfg.task.name}' ({device}"
        f"{f', {dist.world_size} processes' if dist.world_size > 1 else ''}), run directory {out}"
    )

    def checkpoint() -> None:
        if dist.main:
            state = {"step": step, "elapsed_s": elapsed, "tokens_seen": tokens_seen, "data": stream.state_dict()}
            save_checkpoint(out, core, optimizer, state)

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
                model, optimizer, mine, tc, step + 1, total_tokens=total_tokens, world_size=dist.world_size
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
                    metrics = evaluate(core, valid, source.src_tok, source.tgt_tok, bleu=bleu)
                    row = {"step": step, "elapsed_s": round(elapsed, 2), "lr": stats.lr, "train_loss": stats.loss}
                    row.update({f"valid_{k}": v for k, v in metrics.items() if k != "n" and "signature" not in k})
                    checkpoint()
                    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    shown = f"BLEU {metrics['bleu']:.2f}" if bleu else f"exact match {metrics['exact_match']:.4f}"
                    msg = f"step {step}: valid loss {metrics['loss']:.4f}, token acc {metrics['token_accuracy']:.4f}, "
                    (bar.write if bar is not None else say)(msg + shown, **({"file": sys.stderr} if bar else {}))
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
        "task": cfg.task.name,
        "step": step,
        "parameters": n_params,
        "train_minutes": round(elapsed / 60, 3),
        "tokens_seen": tokens_seen,
        "device": str(device),
        "processes": dist.world_size,
    }
    if dist.main:
        has_test = cfg.task.name != "parallel" or cfg.task.test_src is not None
        test = source.split("test" if has_test else "valid")
        metrics = evaluate(core, test, source.src_tok, source.tgt_tok, bleu=bleu)
        summary["eval_split"] = "test" if has_test else "valid"
        summary.update({("exact_match" if k == "exact_match" else f"test_{k}"): v for k, v in metrics.items()})
        summary["test_examples"] = summary.pop("test_n")
        atomic_write_json(out / "summary.json", summary)
    dist.barrier()
    return summary


def _progress_bar(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
