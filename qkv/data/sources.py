"""Where training data comes from: a built-in task or parallel text files, behind one interface.

A source has two tokenizers, fixed ``valid``/``test`` splits of text pairs, and a resumable training
stream of batches whose position is plain JSON (``state_dict``).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Protocol

from qkv.config import replace
from qkv.data.batching import Seq2SeqBatch, encode_pairs, load_rng_state, rng_state
from qkv.data.bpe import SubwordTokenizer
from qkv.data.store import BucketStream, TokenStore, prepare_store
from qkv.data.tasks import TaskConfig, get_task
from qkv.data.text import read_parallel
from qkv.data.vocab import Vocab
from qkv.errors import QkvError, shown

__all__ = [
    "ParallelSource",
    "Source",
    "SyntheticSource",
    "TaskStream",
    "build_source",
    "resolve_paths",
]

Tokenizer = Vocab | SubwordTokenizer


class Stream(Protocol):
    """A resumable stream of training batches."""

    def next_batch(self) -> Seq2SeqBatch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Source(Protocol):
    """Tokenizers, held-out splits and a training stream."""

    src_tok: Tokenizer
    tgt_tok: Tokenizer

    def split(self, name: str) -> list[tuple[str, str]]: ...
    def has_split(self, name: str) -> bool: ...
    def stream(self, batch_size: int, max_tokens: int, seed: int) -> Stream: ...


class TaskStream:
    """Batches of ``batch_size`` pairs sampled from a built-in task; its position is the RNG state."""

    def __init__(self, source: SyntheticSource, batch_size: int, seed: int) -> None:
        self.source, self.batch_size = source, batch_size
        self.rng = random.Random(seed)

    def next_batch(self) -> Seq2SeqBatch:
        """The next batch."""
        pairs = [self.source.task.train_pair(self.rng) for _ in range(self.batch_size)]
        return encode_pairs(pairs, self.source.src_tok, self.source.tgt_tok)

    def state_dict(self) -> dict[str, Any]:
        """Position in the stream."""
        return rng_state(self.rng)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        load_rng_state(self.rng, state)


class SyntheticSource:
    """A built-in task generated on the fly."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.task = get_task(cfg)
        self.src_tok, self.tgt_tok = self.task.vocabs()

    def split(self, name: str) -> list[tuple[str, str]]:
        """The held-out ``valid`` or ``test`` pairs."""
        return self.task.split(name)

    def has_split(self, name: str) -> bool:
        """Both held-out splits are always there."""
        return name in ("valid", "test")

    def stream(self, batch_size: int, max_tokens: int, seed: int) -> TaskStream:
        """Random batches of ``batch_size`` pairs (``max_tokens`` is not used here)."""
        return TaskStream(self, batch_size, seed)


class ParallelSource:
    """Parallel text, BPE-tokenized: files (the held-out splits read as text, the training split prepared
    into a token store under ``workdir`` — a run directory — when first streamed) or a store made by
    ``qkv prepare`` (``task.data``). The BPE is learned from the training pairs unless tokenizers are
    given (a resumed or loaded run passes its own)."""

    def __init__(
        self, cfg: TaskConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None, log=None, workdir=None
    ) -> None:
        self.cfg, self.workdir = cfg, None if workdir is None else Path(workdir)
        self.log = log or (lambda msg: None)
        self._splits: dict[str, list[tuple[str, str]]] = {}
        self._store = TokenStore(cfg.data) if cfg.data is not None else None
        if self._store is None:
            for side in ("train_src", "valid_src"):
                if getattr(cfg, side) is None:
                    raise QkvError(
                        f"task.{side} is not set: parallel text needs --train SRC TGT and --valid SRC TGT "
                        "(or --data DATA from qkv prepare)"
                    )
        self._given = tokenizers  # used to prepare the files; None: a BPE is learned from them
        if tokenizers is None:
            tokenizers = self.store().tokenizers  # type: ignore[assignment]
            self._note_vocab_size()
        elif self._store is not None and [t.to_dict() for t in tokenizers] != [
            t.to_dict() for t in self._store.tokenizers
        ]:
            raise QkvError(f"the store {cfg.data} has other tokenizers than this run; use the store it was trained on")
        self.src_tok, self.tgt_tok = tokenizers  # type: ignore[misc]

    def _note_vocab_size(self) -> None:
        """Say so when a prepared store's vocabulary is not the size the recipe's ``task.vocab_size`` asks
        for (that field acts only where the BPE is learned: ``qkv prepare --vocab-size``, or ``--train``)."""
        if self._store is None:
            return
        sizes = set(self._store.manifest["vocab_size"].values())
        if sizes != {self.cfg.vocab_size}:
            found = " and ".join(f"{n:,}" for n in sorted(sizes))
            self.log(
                f"qkv: note: the store {self.cfg.data} has a vocabulary of {found} symbols, the recipe's "
                f"task.vocab_size is {self.cfg.vocab_size:,} (qkv prepare --vocab-size {self.cfg.vocab_size} makes "
                "the recipe's)"
            )

    def store(self) -> TokenStore:
        """The training pairs as a token store: ``task.data``, or the one prepared from the files into
        ``workdir/data`` (reused when there; a temporary directory without a ``workdir``)."""
        if self._store is None:
            if self.workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="qkv-data-")
                self.workdir = Path(self._tmp.name)
            directory = self.workdir / "data"
            if (directory / "manifest.json").exists():
                self._store = TokenStore(directory)
            else:
                self._store = prepare_store(
                    directory,
                    self.cfg.files,
                    tokenizers=self._given,
                    vocab_size=self.cfg.vocab_size,
                    joint=self.cfg.joint_vocab,
                    fields=(self.cfg.src_field, self.cfg.tgt_field),
                    log=self.log,
                )
        return self._store

    def has_split(self, name: str) -> bool:
        """Whether held-out pairs of ``name`` were given."""
        if self.cfg.data is not None:
            return name in self.store().manifest["splits"]
        return name in self.cfg.files

    def split(self, name: str) -> list[tuple[str, str]]:
        """The ``valid`` or ``test`` pairs, as text."""
        if name not in ("valid", "test"):
            raise QkvError(f"unknown split {shown(name)}: choose valid or test")
        if name not in self._splits:
            if self.cfg.data is not None:
                self._splits[name] = self.store().split(name)
            else:
                if name not in self.cfg.files:
                    raise QkvError(f"no {name} files in this run's config; give --src FILE --ref FILE to evaluate")
                src, tgt = self.cfg.files[name]
                text = read_parallel(src, tgt, fields=(self.cfg.src_field, self.cfg.tgt_field))
                self.log("qkv: " + text.report(f"{name} ({src}{'' if tgt is None else f', {tgt}'})"))
                self._splits[name] = text.pairs
        return self._splits[name]

    def stream(self, batch_size: int, max_tokens: int, seed: int) -> BucketStream:
        """Token-budget batches (``max_tokens`` padded tokens per side, or ``batch_size`` × longest)."""
        budget = max_tokens if max_tokens > 0 else batch_size * (self.cfg.max_len + 1)
        t = self.tgt_tok
        ids = {"bos": t.bos_id, "eos": t.eos_id, "pad": t.pad_id}
        stream = BucketStream(self.store(), self.cfg.max_len, budget, seed, ids)
        self.log(
            f"qkv: train: {len(stream.keep):,} pairs used; {stream.dropped:,} over task.max_len={self.cfg.max_len} "
            "tokens filtered out"
        )
        return stream


def build_source(
    cfg: TaskConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None, log=None, workdir=None
) -> Source:
    """The data source a task config describes (``workdir``: where parallel text is prepared for training)."""
    if cfg.name == "parallel":
        return ParallelSource(cfg, tokenizers, log, workdir)
    return SyntheticSource(cfg)


def resolve_paths(cfg: TaskConfig) -> TaskConfig:
    """The same config with data file paths made absolute (so a run works from any directory)."""
    changes = {}
    for split in ("train", "valid", "test"):
        for side in ("src", "tgt"):
            name = f"{split}_{side}"
            value = getattr(cfg, name)
            if value is not None:
                changes[name] = str(Path(value).expanduser().resolve())
    if cfg.data is not None:
        changes["data"] = str(Path(cfg.data).expanduser().resolve())
    return replace(cfg, "task", **changes)
