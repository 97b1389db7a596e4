"""Subword tokenization: byte-pair encoding trained with Hugging Face ``tokenizers``, and loading any
tokenizer file a run directory holds.

The BPE tokenizer splits on whitespace with the SentencePiece-style "▁" marker, so decoding restores
the original spacing exactly: output is detokenized text, ready for sacreBLEU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from qkv.data.vocab import SPECIALS, Vocab
from qkv.errors import QkvError

__all__ = ["BPETokenizer", "load_tokenizer"]


class BPETokenizer:
    """Byte-pair encoding with qkv's special ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        for i, sym in enumerate(SPECIALS):
            if tokenizer.token_to_id(sym) != i:
                raise QkvError(f"tokenizer has {sym} at id {tokenizer.token_to_id(sym)}, expected {i}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from ``texts`` up to ``vocab_size`` symbols."""
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS), show_progress=False
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no <bos>/<eos>)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (parallel in Rust)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Ids -> detokenized text, stopping at <eos>."""
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """The subword strings of ``text`` (for labels in attention plots)."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, i: int) -> str:
        """The subword string of one id."""
        return self.tokenizer.id_to_token(i) or "<unk>"

    def save(self, path: Path) -> None:
        """Write Hugging Face's tokenizer JSON."""
        Path(path).write_text(self.tokenizer.to_str(pretty=True), encoding="utf-8")


def load_tokenizer(path: Path) -> Vocab | BPETokenizer:
    """Load a run's tokenizer file, whichever kind its content says it is."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: is this a complete qkv run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QkvError(f"{path} is corrupt ({e}); restore it or train a new run") from None
    if isinstance(data, dict) and data.get("type") == "vocab":
        return Vocab.from_dict(data)
    if isinstance(data, dict) and "model" in data:
        try:
            return BPETokenizer(Tokenizer.from_str(text))
        except Exception as e:  # tokenizers raises its own exception types
            raise QkvError(f"{path} is not a valid tokenizer ({e})") from None
    raise QkvError(f"{path} is not a qkv tokenizer file")
