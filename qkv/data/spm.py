"""SentencePiece tokenizers of imported Marian models (the opus-mt family), encoding and decoding
exactly as transformers' ``MarianTokenizer``: a text's pieces from the side's SentencePiece model
(a leading ``>>xx<<`` language code kept whole), mapped to ids by the model's ``vocab.json`` (unknown
pieces to ``<unk>``); decoding drops special ids and joins the pieces with the SentencePiece model
MarianTokenizer decodes with (the source model for a joint vocabulary, the target model otherwise).

The run directory holds each side's tokenizer in one JSON file: the vocabulary, the special ids and the
SentencePiece model itself (base64), so the run describes itself. The ``sentencepiece`` package is
needed only to use such a run (``pip install sentencepiece``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from qkv.errors import QkvError, not_text

__all__ = ["SentencePieceTokenizer"]

ROLES = ("pad", "bos", "eos", "unk")


def _processor(model: bytes) -> Any:
    try:
        import sentencepiece
    except ImportError:
        raise QkvError("this run's tokenizer is SentencePiece: install it with `pip install sentencepiece`") from None
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    return sp


class SentencePieceTokenizer:
    """One side of a Marian model's tokenization: ``encode`` with ``model`` (a serialized SentencePiece
    model), ids from ``vocab``; ``decode`` with ``decode_model``. ``specials`` names the pad, bos
    (Marian's decoder start: its pad token), eos and unk ids."""

    def __init__(self, model: bytes, vocab: dict[str, int], specials: dict[str, int], decode_model: bytes) -> None:
        self.model, self.decode_model = model, decode_model
        self.vocab = dict(vocab)
        self.itos = {i: s for s, i in self.vocab.items()}
        self.specials = {role: int(specials[role]) for role in ROLES}
        self.pad_id, self.bos_id = self.specials["pad"], self.specials["bos"]
        self.eos_id, self.unk_id = self.specials["eos"], self.specials["unk"]
        self.mask_id = None
        self._skip = {self.pad_id, self.eos_id, self.unk_id}  # MarianTokenizer's special tokens
        self._sp, self._sp_decode = _processor(model), _processor(decode_model)

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """The pieces of ``text`` (a leading ``>>xx<<`` language code is one piece)."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        try:
            return code + self._sp.encode(text, out_type=str)
        except (TypeError, RuntimeError):  # a lone surrogate fails pybind11's cast to a C++ string
            raise not_text([text]) from None

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no <eos> added)."""
        return [self.vocab.get(p, self.unk_id) for p in self.tokenize(text)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts."""
        return [self.encode(t) for t in texts]

    def decode_all(self, ids: list[int]) -> str:
        """Ids -> text, special ids dropped."""
        pieces = [self.itos[i] for i in ids if i not in self._skip and i in self.itos]
        return self._sp_decode.decode_pieces(pieces).replace("▁", " ").strip()

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, stopping at <eos>."""
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.decode_all(ids)

    def id_to_token(self, i: int) -> str:
        """The piece of one id."""
        return self.itos.get(i, "<unk>")

    def token_id(self, symbol: str) -> int | None:
        """The id of ``symbol``, or None."""
        return self.vocab.get(symbol)

    def to_dict(self) -> dict:
        """qkv's tokenizer file (see the module docstring)."""
        return {
            "type": "sentencepiece",
            "specials": self.specials,
            "vocab": self.vocab,
            "model": base64.b64encode(self.model).decode("ascii"),
            "decode_model": base64.b64encode(self.decode_model).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SentencePieceTokenizer:
        """Inverse of :meth:`to_dict`."""
        models = (base64.b64decode(data["model"]), base64.b64decode(data["decode_model"]))
        return cls(models[0], data["vocab"], data["specials"], models[1])

    def save(self, path: Path) -> None:
        """Write qkv's tokenizer file."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
