"""What defines a run: the training arguments, the model and data sections of each model family, and
the named recipes behind ``qkv train PRESET``.

A run config has four sections, stored together in ``config.json``: ``model`` (the family's config,
whose type names the family: see :mod:`qkv.families`), ``train`` (``TrainConfig``, shared), ``task``
(the data: ``TaskConfig`` for translation, ``TextConfig`` for language models) and ``decode`` (how a
translation run decodes by default).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkv.checkpoint import read_json
from qkv.config import (
    check,
    config_from_dict,
    config_to_dict,
    field_names,
    parse_override_value,
    replace,
    unknown_field,
)
from qkv.data import TaskConfig
from qkv.data.lm import TextConfig
from qkv.decode import DecodeConfig
from qkv.devices import DEVICE_NAMES, PRECISIONS, check_device_name
from qkv.errors import QkvError, shown
from qkv.families import TRANSLATION_FAMILIES, Family, family_named, family_of
from qkv.models import BERTConfig, GPTConfig, TransformerConfig
from qkv.models.transformer import TRANSFORMER_PRESETS

__all__ = ["DEFAULT_RECIPE", "RECIPES", "TRANSLATION_FAMILIES", "RunConfig", "TrainConfig", "read_run_config", "recipe"]

SCHEDULES = ("noam", "inverse_sqrt", "cosine", "constant")


@dataclass
class TrainConfig:
    """How to train. ``lr`` is the peak learning rate, except for ``schedule="noam"`` where it
    multiplies the paper's formula (1.0 = the paper). ``max_tokens`` > 0 makes token-budget batches
    (parallel text); otherwise a batch is ``batch_size`` sentences. ``precision`` is the
    forward pass's autocast (:mod:`qkv.devices`: fp32, bf16, fp16 with a gradient scaler, or auto = bf16
    where the hardware multiplies bf16 natively); ``compile`` runs the model under ``torch.compile``.

    A time budget: ``max_minutes`` > 0 ends the run once its training time (evaluation excluded) reaches
    it, as a finished run (final evaluation, summary), with ``steps`` as the upper bound; the cosine
    schedule then ends where the time does (see ``qkv.train.lr_at``).
    ``eval_minutes`` > 0 also evaluates every that many minutes of training time (curves against time).

    Checkpoints: at every evaluation (``eval_every``), every ``save_every`` steps, and every
    ``save_minutes`` of wall time (the paper's 10 minutes); the run's top level holds the latest.
    ``keep_last`` > 0 also keeps the weights of the last K checkpoints in ``checkpoints/`` (for
    ``qkv average``); ``keep_best`` keeps the weights of the best validation score there too.

    ``init`` (``qkv train --init RUN``) starts a new run from another run's weights and tokenizers, with
    that run's model section (fine-tuning, e.g. of a converted opus-mt model).

    Logs: every ``log_every`` steps a ``{"kind": "train"}`` row in metrics.jsonl (and a plain line when
    there is no progress bar); ``tensorboard`` also writes TensorBoard event files (``RUN/tensorboard``)."""

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
    eval_minutes: float = 0.0
    max_minutes: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    max_tokens: int = 0
    precision: str = "fp32"
    compile: bool = False
    save_every: int = 0
    save_minutes: float = 10.0
    keep_last: int = 0
    keep_best: bool = False
    log_every: int = 100
    tensorboard: bool = False
    init: str = ""

    def __post_init__(self) -> None:
        s = "train"
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        check(self.steps >= 1, s, "steps", self.steps, "must be >= 1")
        check(self.batch_size >= 1, s, "batch_size", self.batch_size, "must be >= 1")
        check(self.accum >= 1, s, "accum", self.accum, "must be >= 1")
        check(0 < self.lr < math.inf, s, "lr", self.lr, "must be a number > 0")
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
        check(self.eval_minutes >= 0, s, "eval_minutes", self.eval_minutes, "must be >= 0 (0 = by steps only)")
        check(self.max_minutes >= 0, s, "max_minutes", self.max_minutes, "must be >= 0 (0 = no time limit)")
        check(check_device_name(self.device), s, "device", self.device, f"choose {DEVICE_NAMES}")
        check(self.precision in PRECISIONS, s, "precision", self.precision, f"choose {', '.join(PRECISIONS)}")
        check(self.threads >= 0, s, "threads", self.threads, "must be >= 0 (0 = torch's default)")
        check(self.max_tokens >= 0, s, "max_tokens", self.max_tokens, "must be >= 0 (0 = batch_size sentences)")
        check(self.save_every >= 0, s, "save_every", self.save_every, "must be >= 0 (0 = only on the clock)")
        check(self.save_minutes >= 0, s, "save_minutes", self.save_minutes, "must be >= 0 (0 = no clock)")
        check(self.keep_last >= 0, s, "keep_last", self.keep_last, "must be >= 0 (0 = keep only the latest)")
        check(self.log_every >= 0, s, "log_every", self.log_every, "must be >= 0 (0 = no train rows or lines)")


@dataclass
class RunConfig:
    """Everything that defines a run: the model (whose type names the family), the training, the data."""

    model: Any = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: Any = field(default_factory=TaskConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    SECTIONS = ("model", "train", "task", "decode")

    def __post_init__(self) -> None:
        task_cls = self.spec.task
        if not isinstance(self.task, task_cls):
            raise QkvError(f"a {self.family} model needs a {task_cls.__name__} task section")
        if isinstance(self.task, TaskConfig) and self.task.name == "parallel":
            check(
                self.task.max_len + 2 <= self.model.max_len,
                "task",
                "max_len",
                self.task.max_len,
                f"must leave room for <bos>/<eos> within model.max_len={self.model.max_len}",
            )

    @property
    def spec(self) -> Family:
        """The registered family of the model config (:mod:`qkv.families`)."""
        return family_of(self.model)

    @property
    def family(self) -> str:
        """The family's name: 'transformer', 'rnn', 'cnn', 'gpt' or 'bert'."""
        return self.spec.name

    def with_family(self, family: str) -> RunConfig:
        """The same training and data with the default model of another translation family (keeping
        ``d_model``, ``max_len`` and the embedding sharing), e.g. the GRU baseline of a Transformer recipe."""
        target = family_named(family)
        if target is self.spec:
            return self
        if not (target.translation and self.spec.translation):
            raise QkvError(
                f"cannot switch a {self.family} recipe to family '{family}': "
                f"only {', '.join(TRANSLATION_FAMILIES)} share their data"
            )
        kept = {k: getattr(self.model, k) for k in ("d_model", "max_len", "share_embeddings", "pad_id")}
        return dataclasses.replace(self, model=target.config(**kept))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in config.json."""
        return {"family": self.family, **{s: config_to_dict(getattr(self, s)) for s in self.SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        family = family_named(data.get("family", "transformer"))  # runs from before the rename say "seq2seq"
        return cls(
            model=config_from_dict(family.config, data["model"], "model"),
            train=config_from_dict(TrainConfig, _upgrade_train(data["train"]), "train"),
            task=config_from_dict(family.task, data["task"], "task"),
            decode=config_from_dict(DecodeConfig, data.get("decode", {}), "decode"),  # older runs lack it
        )

    def with_overrides(
        self, overrides: list[str], sections: tuple[str, ...] = SECTIONS, *, strict: bool = True
    ) -> RunConfig:
        """Apply ``key=value`` strings; ``key`` is ``section.field`` or a field name unique to one section.
        With ``strict``, a task field that the resulting task does not read is an error (not ignored)."""
        changes: dict[str, dict[str, Any]] = {s: {} for s in self.SECTIONS}
        classes = {s: type(getattr(self, s)) for s in self.SECTIONS}
        for item in overrides:
            section, name, value = self._parse_override(item, classes)
            if section not in sections:
                raise QkvError(f"{section}.{name} cannot change when resuming; only {', '.join(sections)} can")
            changes[section][name] = parse_override_value(classes[section], name, value, section)
        out = RunConfig(**{s: replace(getattr(self, s), s, **changes[s]) for s in self.SECTIONS})
        if changes["decode"] and not out.spec.translation:
            name = next(iter(changes["decode"]))
            raise QkvError(f"decode.{name} does nothing for a {out.family} run (it decodes translations); drop it")
        if strict:
            out.check_read(set(changes["task"]))
        return out

    def section_of(self, item: str) -> str:
        """The section a ``key=value`` override sets (a QkvError if it names no field)."""
        return self._parse_override(item, {s: type(getattr(self, s)) for s in self.SECTIONS})[0]

    def _parse_override(self, item: str, classes: dict[str, type]) -> tuple[str, str, str]:
        """(section, field, value text) of one ``key=value``."""
        if "=" not in item or item.startswith("="):
            raise QkvError(f"malformed override {shown(item)}: write KEY=VALUE, e.g. d_model=256 or train.steps=500")
        key, value = item.split("=", 1)
        fields = {s: field_names(classes[s]) for s in self.SECTIONS}
        if "." in key:
            section, name = key.split(".", 1)
            if section not in self.SECTIONS:
                raise QkvError(f"unknown section {shown(section)} in {shown(item)}: use {', '.join(self.SECTIONS)}")
            if name not in fields[section]:
                raise unknown_field(name, fields, section)
            return section, name, value
        owners = [s for s in self.SECTIONS if key in fields[s]]
        if len(owners) > 1:
            raise QkvError(f"'{key}' is ambiguous: write {' or '.join(f'{s}.{key}' for s in owners)}")
        if not owners:
            raise unknown_field(key, fields)
        return owners[0], key, value

    def check_read(self, task_fields: set[str]) -> None:
        """Refuse task fields a user set that this config's task does not read (e.g. ``task.min_len`` for
        parallel text, ``task.vocab_size`` for the dates task)."""
        unread = sorted(task_fields - set(self.task.reads()))
        if unread:
            what = f"the {self.task.name} task" if isinstance(self.task, TaskConfig) else "this text task"
            raise QkvError(
                f"task.{unread[0]} does nothing for {what} (it reads {', '.join(self.task.reads())}); "
                "drop it, or choose the task that reads it"
            )

    def with_data(self, name: str = "this preset", **given: Any) -> RunConfig:
        """The same model and recipe on the data a user gave: ``train``/``valid``/``test`` (one or two
        paths each: parallel text) or ``data`` (a ``qkv prepare`` store) for a translation config,
        ``text``/``valid_text`` for a language model. A built-in task gives way to parallel text; files
        must exist; data of the other kind is refused, naming ``name`` (the preset)."""
        given = {k: v for k, v in given.items() if v}
        if not given:
            return self
        if self.spec.translation:
            return dataclasses.replace(self, task=self._parallel_task(name, given))
        wrong = [k for k in given if k not in ("text", "valid_text")]
        if wrong:
            raise QkvError(
                f"--{wrong[0].replace('_', '-')} is data for translation presets ({', '.join(_presets(True))}); "
                f"{name} is a {self.family} preset and reads --text FILE [--valid-text FILE]"
            )
        paths = {"path": given.get("text"), "valid_path": given.get("valid_text")}
        paths = {k: _existing(v) for k, v in paths.items() if v}
        return dataclasses.replace(self, task=replace(self.task, "task", **paths))

    def _parallel_task(self, name: str, given: dict[str, Any]) -> TaskConfig:
        """This config's task on the given parallel files or store."""
        if "text" in given or "valid_text" in given:
            raise QkvError(
                f"--text is data for language-model presets ({', '.join(_presets(False))}); {name} is a "
                f"{self.family} preset and reads --train SRC TGT --valid SRC TGT (or --data DATA)"
            )
        if "data" in given and any(k in given for k in ("train", "valid", "test")):
            raise QkvError("give --data DATA (a prepared store) or --train/--valid/--test files, not both")
        task = self.task
        if task.name != "parallel":  # a built-in task's limits mean nothing for text: room for the model's
            task = TaskConfig(name="parallel", max_len=self.model.max_len - 2)
        changes: dict[str, Any] = {f"{s}_{side}": None for s in ("train", "valid", "test") for side in ("src", "tgt")}
        changes["data"] = _existing(given["data"], directory=True) if "data" in given else None
        for split in ("train", "valid", "test"):
            files = [_existing(f) for f in given.get(split) or ()]
            if len(files) > 2:
                raise QkvError(f"--{split} takes SRC TGT (two files) or one TSV or JSON Lines file, not {len(files)}")
            if files:
                changes[f"{split}_src"], changes[f"{split}_tgt"] = files[0], (files[1] if len(files) == 2 else None)
        return replace(task, "task", **changes)


def _presets(translation: bool) -> list[str]:
    """The names of the presets of translation (or language-model) families."""
    return [n for n, r in RECIPES.items() if r.spec.translation == translation]


def _existing(path: str | Path, *, directory: bool = False) -> str:
    """``path`` made absolute, or a QkvError when it does not exist (or is not of the kind asked)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise QkvError(f"{path}: no such {'directory' if directory else 'file'}; check the path")
    if directory and not p.is_dir():
        raise QkvError(f"{path} is a file; --data takes the directory `qkv prepare --out` wrote")
    if not directory and p.is_dir():
        raise QkvError(f"{path} is a directory; give a text file (plain or .gz)")
    return str(p)


# Multi30k De→En (or any parallel text) sized for a 2-core CPU: give the files with
# --train SRC TGT --valid SRC TGT [--test SRC TGT].
_MULTI30K = RunConfig(
    model=TransformerConfig(
        d_model=256, h=4, N=3, d_ff=1024, dropout=0.1, attention_dropout=0.0, max_len=128, share_embeddings="all"
    ),
    train=TrainConfig(steps=2200, max_tokens=4096, lr=2e-3, schedule="cosine", warmup=400, min_lr=1e-5, eval_every=550),
    task=TaskConfig(name="parallel", max_len=100, vocab_size=8000, joint_vocab=True),
    # beam 5 with α 1.0, selected on the validation split (α 0.6 / 1.0 / 1.4 / 2.0 and beam 3 / 5 / 8)
    decode=DecodeConfig(beam=5, alpha=1.0),
)

# The same model in half an hour of training on a 2-core CPU, each setting selected on the validation
# split (on an AVX-512 bf16 CPU and on an AVX2 one): batches of 1,536 tokens instead of 4,096 (more,
# smaller steps), the cosine schedule ending at the 30th minute (steps is only an upper bound), bf16 where
# the CPU multiplies it natively, and dropout 0.2 (valid BLEU beam 5: 0.1 / 0.15 / 0.2 gave 40.22 / 41.18 /
# 41.31 once training ran ~4,700 steps in the half hour; README).
_MULTI30K_30MIN = dataclasses.replace(
    _MULTI30K,
    model=dataclasses.replace(_MULTI30K.model, dropout=0.2),
    train=dataclasses.replace(
        _MULTI30K.train,
        max_tokens=1536,
        steps=6000,
        max_minutes=30,
        eval_minutes=10,
        eval_every=4000,
        precision="auto",
    ),
)

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
    "multi30k": _MULTI30K,
    "multi30k-30min": _MULTI30K_30MIN,
    # GPT on characters: the configuration of nanoGPT's laptop-CPU Shakespeare example (context 64, batch
    # 12, 4 layers, 4 heads, d_model 128, no dropout, 2000 iterations, AdamW lr 1e-3 β2 0.99, weight
    # decay 0.1, clip 1.0, warmup 100, cosine to 1e-4), whose GELU is the exact one (GPT-2's tanh form
    # took 2.5x its time forward, 1.6x backward, on the AVX2 development CPU). bf16 where the CPU multiplies
    # it natively (valid loss 1.7472 against fp32's 1.7471; README). Give the text with --text FILE.
    "shakespeare-char": RunConfig(
        model=GPTConfig(max_len=64, d_model=128, h=4, N=4, dropout=0.0, activation="gelu"),
        train=TrainConfig(
            steps=2000,
            batch_size=12,
            lr=1e-3,
            schedule="cosine",
            warmup=100,
            min_lr=1e-4,
            betas=(0.9, 0.99),
            weight_decay=0.1,
            clip=1.0,
            label_smoothing=0.0,
            eval_every=250,
            precision="auto",
        ),
        task=TextConfig(tokenizer="char"),
    ),
    # A small BERT pretrained with masked-language modelling on a text file (--text FILE).
    "bert-mini": RunConfig(
        model=BERTConfig(max_len=128, d_model=256, h=4, N=4, d_ff=1024, dropout=0.1),
        train=TrainConfig(
            steps=3000,
            batch_size=32,
            lr=5e-4,
            schedule="cosine",
            warmup=300,
            betas=(0.9, 0.98),
            eps=1e-6,
            weight_decay=0.01,
            label_smoothing=0.0,
            eval_every=500,
        ),
        task=TextConfig(tokenizer="char"),
    ),
    # The paper's WMT 2014 English-German recipe (sections 5.1-5.4, 6.1, Table 3): a shared BPE of
    # 37,000, batches of ~25,000 source + 25,000 target tokens (max_tokens × accum × processes: 3,125 × 8
    # on one process, accum=1 on 8 GPUs), Adam β2 0.98, the Noam schedule with 4,000 warmup steps, label
    # smoothing 0.1, a checkpoint every 10 minutes, the last 5 (base) / 20 (big) kept for averaging,
    # decoding with beam 4, α 0.6, at most input + 50 tokens. Give the data with --data (qkv prepare).
    **{
        name: RunConfig(
            model=replace(TRANSFORMER_PRESETS[shape], "model", max_len=320, share_embeddings="all"),
            train=TrainConfig(
                steps=steps,
                max_tokens=3125,
                accum=8,
                lr=1.0,
                schedule="noam",
                warmup=4000,
                betas=(0.9, 0.98),
                eps=1e-9,
                label_smoothing=0.1,
                eval_every=5000,
                save_minutes=10,
                keep_last=keep,
            ),
            task=TaskConfig(name="parallel", max_len=250, vocab_size=37000, joint_vocab=True),
            decode=DecodeConfig(beam=4, alpha=0.6, max_len_a=1.0, max_len_b=50),
        )
        for name, shape, steps, keep in (("wmt14-base", "base", 100_000, 5), ("wmt14-big", "big", 300_000, 20))
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
        raise QkvError(f"unknown preset {shown(name)}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def _upgrade_train(section: Any) -> Any:
    """A train section as written before ``precision`` replaced ``bf16: true/false``."""
    if isinstance(section, dict) and "bf16" in section and "precision" not in section:
        precision = "bf16" if section["bf16"] else "fp32"
        section = {k: v for k, v in section.items() if k != "bf16"} | {"precision": precision}
    return section


def read_run_config(run: Path) -> RunConfig:
    """The config.json of a run directory, checked; a missing or damaged one is a QkvError naming it."""
    path = Path(run) / "config.json"
    if not Path(run).is_dir() or not path.exists():
        raise QkvError(f"{run} is not a qkv run directory (no config.json); check the path")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise QkvError(f"{path} is not a qkv run config; restore it or train a new run")
    try:
        return RunConfig.from_dict(data)
    except (KeyError, TypeError) as e:
        raise QkvError(f"{path} is incomplete ({shown(str(e))}); restore it or train a new run") from None
