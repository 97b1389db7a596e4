"""A fixed vocabulary of words or characters, saved as JSON in the run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qkv.errors import QkvError
from qkv.errors import shown as shown_value

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "Vocab"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
LEVELS = ("word", "char", "text")


@dataclass
class Vocab:
    """Symbols <-> ids. ``level="word"`` splits text on whitespace, ``"char"`` into characters without
    whitespace (the built-in tasks), ``"text"`` into every character, whitespace included (character-level
    language models).

    Ids 0..3 are <pad>, <bos>, <eos>, <unk>. A symbol outside the vocabulary is an error (a fixed
    vocabulary means the model has never seen it), reported with the symbol and the known ones.
    """

    symbols: list[str]
    level: str = "word"
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise QkvError(f"unknown vocabulary level '{self.level}': choose one of {', '.join(LEVELS)}")
        self.itos = list(SPECIALS) + [s for s in self.symbols if s not in SPECIALS]
        self.index = {s: i for i, s in enumerate(self.itos)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        """Split text into symbols."""
        if self.level == "word":
            return text.split()
        return list(text) if self.level == "text" else [c for c in text if not c.isspace()]

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no <bos>/<eos>); an unknown symbol raises a QkvError naming it."""
        ids = []
        for sym in self.tokenize(text):
            i = self.index.get(sym)
            if i is None or i < len(SPECIALS):
                shown = ", ".join(map(repr, self.symbols[:40])) + (" …" if len(self.symbols) > 40 else "")
                raise QkvError(
                    f"symbol {shown_value(sym)} in {shown_value(text)} is not in this model's vocabulary ({shown})"
                )
            ids.append(i)
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once."""
        return [self.encode(t) for t in texts]

    def token_id(self, symbol: str) -> int | None:
        """The id of ``symbol``, or None."""
        return self.index.get(symbol)

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, stopping at <eos> and skipping other special symbols."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return (" " if self.level == "word" else "").join(out)

    def decode_all(self, ids: list[int]) -> str:
        """Ids -> text without stopping at <eos> (special symbols are skipped)."""
        return (" " if self.level == "word" else "").join(self.itos[i] for i in ids if i >= len(SPECIALS))

    def id_to_token(self, i: int) -> str:
        """The symbol of one id."""
        return self.itos[i]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"type": "vocab", "level": self.level, "symbols": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """Inverse of :meth:`to_dict`."""
        return cls([s for s in data["symbols"] if s not in SPECIALS], data["level"])

    def save(self, path: Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """Read a vocabulary written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
