"""Where training data comes from: a built-in task or parallel text files, behind one interface.

A source has two tokenizers, fixed ``valid``/``test`` splits of text pairs, and a resumable training
stream of batches whose position is plain JSON (``state_dict``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

from qkv.config import replace
from qkv.data.batching import Seq2SeqBatch, encode_pairs, load_rng_state, pad, rng_state
from qkv.data.bpe import SubwordTokenizer
from qkv.data.tasks import TaskConfig, get_task
from qkv.data.text import read_parallel
from qkv.data.vocab import Vocab
from qkv.errors import QkvError, shown

__all__ = [
    "ParallelSource",
    "Source",
    "SyntheticSource",
    "TaskStream",
    "TokenBudgetStream",
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


class TokenBudgetStream:
    """Token-budget batches over a fixed corpus: each epoch, pairs are ordered by length (ties broken
    at random), cut into batches of at most ``max_tokens`` padded tokens per side, and the batches are
    shuffled — all from ``seed`` and the epoch number, so the position is just (epoch, batch)."""

    def __init__(
        self,
        src: list[list[int]],
        tgt: list[list[int]],
        max_tokens: int,
        seed: int,
        *,
        bos_id: int = 1,
        eos_id: int = 2,
        pad_id: int = 0,
    ) -> None:
        longest = max(max(len(s), len(t)) + 1 for s, t in zip(src, tgt, strict=True))
        if longest > max_tokens:
            raise QkvError(f"train.max_tokens={max_tokens} is below the longest pair ({longest} tokens); raise it")
        self.src, self.tgt, self.max_tokens, self.seed = src, tgt, max_tokens, seed
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.epoch, self.pos = 0, 0
        self._batches = self.epoch_batches(0)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches (lists of pair indices) of one epoch, in training order."""
        rng = random.Random(f"{self.seed}-{epoch}")
        order = list(range(len(self.src)))
        rng.shuffle(order)
        order.sort(key=lambda i: (len(self.tgt[i]), len(self.src[i])))
        batches: list[list[int]] = []
        cur: list[int] = []
        widest = 0
        for i in order:
            width = max(len(self.src[i]), len(self.tgt[i])) + 1  # + <eos> / <bos>
            if cur and max(widest, width) * (len(cur) + 1) > self.max_tokens:
                batches.append(cur)
                cur, widest = [], 0
            cur.append(i)
            widest = max(widest, width)
        if cur:
            batches.append(cur)
        rng.shuffle(batches)
        return batches

    def next_batch(self) -> Seq2SeqBatch:
        """The next batch (a new epoch starts when one ends)."""
        if self.pos == len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self.epoch_batches(self.epoch)
        idx = self._batches[self.pos]
        self.pos += 1
        bos, eos, pad_id = self.bos_id, self.eos_id, self.pad_id
        return Seq2SeqBatch(
            src=pad([self.src[i] + [eos] for i in idx], pad_id),
            tgt_in=pad([[bos] + self.tgt[i] for i in idx], pad_id),
            tgt_out=pad([self.tgt[i] + [eos] for i in idx], pad_id),
        )

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in the current epoch."""
        return len(self._batches)

    def state_dict(self) -> dict[str, Any]:
        """Position: epoch and batch index."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._batches = self.epoch_batches(self.epoch)


class SyntheticSource:
    """A built-in task generated on the fly."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.task = get_task(cfg)
        self.src_tok, self.tgt_tok = self.task.vocabs()

    def split(self, name: str) -> list[tuple[str, str]]:
        """The held-out ``valid`` or ``test`` pairs."""
        return self.task.split(name)

    def stream(self, batch_size: int, max_tokens: int, seed: int) -> TaskStream:
        """Random batches of ``batch_size`` pairs (``max_tokens`` is not used here)."""
        return TaskStream(self, batch_size, seed)


class ParallelSource:
    """Parallel text files, BPE-tokenized. Tokenizers are trained on the training split unless given
    (a resumed or loaded run passes its own)."""

    def __init__(self, cfg: TaskConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None, log=None) -> None:
        for side in ("train_src", "train_tgt", "valid_src", "valid_tgt"):
            if getattr(cfg, side) is None:
                raise QkvError(f"task.{side} is not set: parallel text needs --train SRC TGT and --valid SRC TGT")
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self._train: tuple[list[list[int]], list[list[int]]] | None = None
        self._splits: dict[str, list[tuple[str, str]]] = {}
        if tokenizers is None:
            train = self._read("train")
            srcs, tgts = [s for s, _ in train], [t for _, t in train]
            if cfg.joint_vocab:
                joint = SubwordTokenizer.train_bpe(srcs + tgts, cfg.vocab_size)
                tokenizers = (joint, joint)
            else:
                tokenizers = (
                    SubwordTokenizer.train_bpe(srcs, cfg.vocab_size),
                    SubwordTokenizer.train_bpe(tgts, cfg.vocab_size),
                )
        self.src_tok, self.tgt_tok = tokenizers

    def _read(self, split: str) -> list[tuple[str, str]]:
        if split not in self._splits:
            src, tgt = getattr(self.cfg, f"{split}_src"), getattr(self.cfg, f"{split}_tgt")
            if src is None:
                raise QkvError(f"no {split} files in this run's config; give --src FILE --ref FILE to evaluate")
            text = read_parallel(src, tgt)
            self.log("qkv: " + text.report(f"{split} ({src}, {tgt})"))
            self._splits[split] = text.pairs
        return self._splits[split]

    def split(self, name: str) -> list[tuple[str, str]]:
        """The ``valid`` or ``test`` pairs, as text."""
        if name not in ("valid", "test"):
            raise QkvError(f"unknown split {shown(name)}: choose valid or test")
        return self._read(name)

    def train_ids(self) -> tuple[list[list[int]], list[list[int]]]:
        """Training pairs as ids, without pairs whose side exceeds ``task.max_len`` tokens (counted)."""
        if self._train is None:
            pairs = self._read("train")
            src = self.src_tok.encode_batch([s for s, _ in pairs])  # type: ignore[union-attr]
            tgt = self.tgt_tok.encode_batch([t for _, t in pairs])  # type: ignore[union-attr]
            keep = [i for i in range(len(pairs)) if max(len(src[i]), len(tgt[i])) <= self.cfg.max_len]
            dropped = len(pairs) - len(keep)
            self.log(
                f"qkv: train: {len(keep):,} pairs used; {dropped:,} over task.max_len={self.cfg.max_len} "
                "tokens filtered out"
            )
            self._train = ([src[i] for i in keep], [tgt[i] for i in keep])
        return self._train

    def stream(self, batch_size: int, max_tokens: int, seed: int) -> TokenBudgetStream:
        """Token-budget batches (``max_tokens`` padded tokens per side, or ``batch_size`` × longest)."""
        src, tgt = self.train_ids()
        budget = max_tokens if max_tokens > 0 else batch_size * (self.cfg.max_len + 1)
        t = self.tgt_tok
        return TokenBudgetStream(src, tgt, budget, seed, bos_id=t.bos_id, eos_id=t.eos_id, pad_id=t.pad_id)


def build_source(cfg: TaskConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None, log=None) -> Source:
    """The data source a task config describes."""
    if cfg.name == "parallel":
        return ParallelSource(cfg, tokenizers, log)
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
    return replace(cfg, "task", **changes)
