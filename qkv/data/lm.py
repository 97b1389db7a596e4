"""Plain text for language models: a causal LM (GPT) reads random windows; a masked LM (BERT) reads
windows with 15% of tokens selected for prediction (80% replaced by [MASK], 10% by a random token,
10% kept).

The text is one file; the last ``val_fraction`` of its tokens is the validation split unless a
``valid_path`` is given. Stream positions are plain JSON, so resuming is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from qkv.config import ConfigBase, check
from qkv.data.batching import load_rng_state, rng_state
from qkv.data.bpe import SubwordTokenizer
from qkv.data.text import read_text
from qkv.data.vocab import Vocab
from qkv.errors import QkvError

__all__ = ["LMBatch", "MLMBatch", "MLMStream", "TextConfig", "TextSource", "WindowStream", "mask_tokens"]

IGNORE = -100
MASK = "<mask>"
TOKENIZERS = ("char", "bpe", "pretrained")


@dataclass
class TextConfig(ConfigBase):
    """A text file to model: ``path``, tokenized by characters (``char``), by BPE trained on it
    (``bpe``, ``vocab_size``), or by an imported model's own tokenizer (``pretrained``)."""

    SECTION: ClassVar[str] = "task"

    name: str = "text"
    path: str | None = None
    valid_path: str | None = None
    val_fraction: float = 0.1
    tokenizer: str = "char"
    vocab_size: int = 8000
    mask_prob: float = 0.15
    eval_batches: int = 50
    max_seq_len: int = 0

    def __post_init__(self) -> None:
        s = "task"
        check(self.name == "text", s, "name", self.name, "language models read text: name must be 'text'")
        check(0.0 < self.val_fraction < 1.0, s, "val_fraction", self.val_fraction, "must be in (0, 1)")
        check(self.tokenizer in TOKENIZERS, s, "tokenizer", self.tokenizer, f"one of {', '.join(TOKENIZERS)}")
        check(self.vocab_size >= 16, s, "vocab_size", self.vocab_size, "must be >= 16")
        check(0.0 < self.mask_prob < 1.0, s, "mask_prob", self.mask_prob, "must be in (0, 1)")
        check(self.eval_batches >= 1, s, "eval_batches", self.eval_batches, "must be >= 1")
        check(self.max_seq_len >= 0, s, "max_seq_len", self.max_seq_len, "must be >= 0 (0 = the model's max_len)")

    def reads(self) -> tuple[str, ...]:
        """The fields in effect: ``vocab_size`` only for a BPE trained here, ``val_fraction`` only
        without a ``valid_path``."""
        unread = {"vocab_size"} if self.tokenizer != "bpe" else set()
        unread |= {"val_fraction"} if self.valid_path is not None else set()
        return tuple(f for f in super().reads() if f not in unread)


@dataclass
class LMBatch:
    """Causal LM batch: idx (B, T) and targets (B, T) = idx shifted by one."""

    idx: Tensor
    targets: Tensor

    @property
    def num_target_tokens(self) -> int:
        """Predicted tokens."""
        return self.targets.numel()

    def to(self, device: torch.device | str) -> LMBatch:
        """The same batch on ``device``."""
        return LMBatch(self.idx.to(device), self.targets.to(device))


@dataclass
class MLMBatch:
    """Masked LM batch: ids (B, T) with masking applied; labels (B, T), -100 where nothing is predicted."""

    ids: Tensor
    labels: Tensor

    @property
    def num_target_tokens(self) -> int:
        """Predicted (selected) tokens."""
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str) -> MLMBatch:
        """The same batch on ``device``."""
        return MLMBatch(self.ids.to(device), self.labels.to(device))


def mask_tokens(
    ids: Tensor, *, prob: float, mask_id: int, regular: Tensor, special: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """BERT's masking: select each non-special token with probability ``prob``; of the selected,
    80% become ``mask_id``, 10% a random ``regular`` token, 10% stay. Returns (inputs, labels)."""
    selectable = ~torch.isin(ids, special)
    selected = (torch.rand(ids.shape, generator=generator, device=ids.device) < prob) & selectable
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs = ids.clone()
    inputs[selected & (roll < 0.8)] = mask_id
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    picks = regular[torch.randint(len(regular), ids.shape, generator=generator, device=ids.device)]
    inputs[swap] = picks[swap]
    return inputs, labels


class WindowStream:
    """Random windows of ``block`` tokens (nanoGPT's sampling); position = the RNG state.

    ``sequential=True`` reads the non-overlapping windows from the start instead, once: every token
    of the text is predicted exactly once (the last batch may be smaller; :attr:`num_batches` says how many).
    """

    def __init__(self, ids: Tensor, block: int, batch_size: int, seed: int, *, sequential: bool = False) -> None:
        if len(ids) <= block + 1:
            raise QkvError(f"the text has {len(ids)} tokens, fewer than the context of {block}; use more text")
        self.ids, self.block, self.batch_size = ids, block, batch_size
        self.rng = random.Random(seed)
        self.sequential, self.cursor = sequential, 0

    @property
    def num_batches(self) -> int:
        """Batches in one sequential pass."""
        windows = (len(self.ids) - 1) // self.block
        return -(-windows // self.batch_size)

    def _starts(self) -> list[int]:
        if not self.sequential:
            return [self.rng.randrange(len(self.ids) - self.block - 1) for _ in range(self.batch_size)]
        end = (len(self.ids) - 1) // self.block * self.block  # windows need one more token for the targets
        starts = list(range(self.cursor, min(end, self.cursor + self.batch_size * self.block), self.block))
        if not starts:
            raise QkvError("a sequential window stream was read past its end")
        self.cursor = starts[-1] + self.block
        return starts

    def next_batch(self) -> LMBatch:
        """The next batch."""
        starts = self._starts()
        idx = torch.stack([self.ids[s : s + self.block] for s in starts])
        targets = torch.stack([self.ids[s + 1 : s + 1 + self.block] for s in starts])
        return LMBatch(idx, targets)

    def state_dict(self) -> dict[str, Any]:
        """Position in the stream."""
        return rng_state(self.rng)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        load_rng_state(self.rng, state)


class MLMStream(WindowStream):
    """Windows of ``block - 2`` tokens framed as [CLS] … [SEP] and masked; each batch's masking comes
    from a generator seeded by (seed, batch number), so the position is RNG state + counter."""

    def __init__(
        self, ids: Tensor, block: int, batch_size: int, seed: int, masking: dict[str, Any], *, sequential: bool = False
    ) -> None:
        super().__init__(ids, block - 2, batch_size, seed, sequential=sequential)
        self.seed, self.count, self.masking = seed, 0, masking

    def next_batch(self) -> MLMBatch:  # type: ignore[override]
        """The next masked batch."""
        windows = super().next_batch().idx  # (B, block - 2)
        B = windows.size(0)
        m = self.masking
        cls, sep = (torch.full((B, 1), m[k], device=windows.device) for k in ("cls", "sep"))
        ids = torch.cat([cls, windows, sep], dim=1)
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.count)
        self.count += 1
        inputs, labels = mask_tokens(
            ids, prob=m["prob"], mask_id=m["mask"], regular=m["regular"], special=m["special"], generator=gen
        )
        return MLMBatch(inputs, labels)

    def state_dict(self) -> dict[str, Any]:
        """Position in the stream."""
        return {**super().state_dict(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        super().load_state_dict(state)
        self.count = state["count"]


class TextSource:
    """A text file, tokenized; train and validation token streams."""

    def __init__(
        self, cfg: TextConfig, tokenizer: Vocab | SubwordTokenizer | None = None, *, mlm: bool = False, log=None
    ):
        self.cfg, self.mlm = cfg, mlm
        say = log or (lambda msg: None)
        if cfg.path is None:
            raise QkvError("task.path is not set: give the text to train on with --text FILE")
        text = read_text(cfg.path)
        if tokenizer is None:
            if cfg.tokenizer == "char":
                tokenizer = Vocab(sorted(set(text)) + ([MASK] if mlm else []), "text")
            elif cfg.tokenizer == "bpe":
                tokenizer = SubwordTokenizer.train_bpe(text.splitlines(), cfg.vocab_size)
            else:
                raise QkvError("task.tokenizer=pretrained needs a run converted with `qkv convert --from-hf`")
        self.tokenizer = tokenizer
        ids = torch.tensor(_encode_all(tokenizer, text), dtype=torch.long, device="cpu")  # data lives on the CPU
        if cfg.valid_path is not None:
            valid = _encode_all(tokenizer, read_text(cfg.valid_path))
            self.train_ids, self.valid_ids = ids, torch.tensor(valid, dtype=torch.long, device="cpu")
        else:
            n = int(len(ids) * (1 - cfg.val_fraction))
            self.train_ids, self.valid_ids = ids[:n], ids[n:]
        say(
            f"qkv: text {cfg.path}: {len(text):,} characters, {len(ids):,} tokens "
            f"({len(self.train_ids):,} train, {len(self.valid_ids):,} validation), vocabulary {len(tokenizer):,}"
        )

    def masking(self) -> dict[str, Any]:
        """Special ids and candidate tokens for MLM masking."""
        tok = self.tokenizer
        mask_id = tok.token_id(MASK) if isinstance(tok, Vocab) else tok.mask_id
        if mask_id is None:
            raise QkvError("this tokenizer has no mask token; a masked LM needs one")
        special = {tok.pad_id, tok.bos_id, tok.eos_id, mask_id} | ({tok.unk_id} if tok.unk_id is not None else set())
        special_t = torch.tensor(sorted(i for i in special if i is not None), device="cpu")
        regular = torch.tensor([i for i in range(len(tok)) if i not in special], device="cpu")
        return {
            "cls": tok.bos_id,
            "sep": tok.eos_id,
            "mask": mask_id,
            "prob": self.cfg.mask_prob,
            "regular": regular,
            "special": special_t,
        }

    def stream(self, block: int, batch_size: int, seed: int) -> WindowStream:
        """Training batches."""
        if self.mlm:
            return MLMStream(self.train_ids, block, batch_size, seed, self.masking())
        return WindowStream(self.train_ids, block, batch_size, seed)

    def eval_batches(
        self, split: str, block: int, batch_size: int, *, full: bool = False
    ) -> list[LMBatch] | list[MLMBatch]:
        """A fixed set of ``eval_batches`` random batches of ``split`` (the same every call), or with
        ``full`` every non-overlapping window of it, so that each token is scored once."""
        ids = self.valid_ids if split in ("valid", "test") else self.train_ids
        if self.mlm:
            stream: WindowStream = MLMStream(ids, block, batch_size, 12345, self.masking(), sequential=full)
        else:
            stream = WindowStream(ids, block, batch_size, 12345, sequential=full)
        n = stream.num_batches if full else self.cfg.eval_batches
        return [stream.next_batch() for _ in range(n)]  # type: ignore[misc]


def _encode_all(tokenizer: Vocab | SubwordTokenizer, text: str) -> list[int]:
    if isinstance(tokenizer, Vocab):
        return tokenizer.encode(text)
    return [i for line in tokenizer.encode_batch(text.splitlines(keepends=True)) for i in line]
