"""Subword tokenization with Hugging Face ``tokenizers``: BPE trained by qkv, or the tokenizer of an
imported Hugging Face model (GPT-2's byte-level BPE, BERT's WordPiece); and loading any tokenizer
file a run directory holds.

qkv's own BPE splits on whitespace with the SentencePiece-style "▁" marker, so decoding restores the
original spacing exactly: output is detokenized text, ready for sacreBLEU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from qkv.data.vocab import SPECIALS, Vocab
from qkv.errors import QkvError, not_text

__all__ = ["SubwordTokenizer", "load_tokenizer"]

ROLES = ("pad", "bos", "eos", "unk", "mask")


class SubwordTokenizer:
    """A ``tokenizers.Tokenizer`` with named special ids (``pad_id``, ``bos_id``, ``eos_id``,
    ``unk_id``, ``mask_id``; None where the model has no such token). qkv's own BPE uses
    0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>; imported models keep theirs (GPT-2: <|endoftext|> for all;
    BERT: [PAD], [CLS] as bos, [SEP] as eos, [UNK], [MASK])."""

    def __init__(self, tokenizer: Tokenizer, specials: dict[str, int | None] | None = None) -> None:
        self.tokenizer = tokenizer
        if specials is None:
            specials = {role: tokenizer.token_to_id(sym) for role, sym in zip(ROLES, SPECIALS, strict=False)}
            for i, sym in enumerate(SPECIALS):
                if specials[ROLES[i]] != i:
                    raise QkvError(f"tokenizer has {sym} at id {specials[ROLES[i]]}, expected {i}")
        self.specials = {role: specials.get(role) for role in ROLES}
        self.pad_id = self.specials["pad"] if self.specials["pad"] is not None else 0
        self.bos_id, self.eos_id = self.specials["bos"], self.specials["eos"]
        self.unk_id, self.mask_id = self.specials["unk"], self.specials["mask"]

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> SubwordTokenizer:
        """Learn BPE merges from ``texts`` up to ``vocab_size`` symbols."""
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS), show_progress=False
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @staticmethod
    def _hf_tokenizer(directory: Path, family: str) -> Tokenizer:
        """The ``tokenizers`` tokenizer a Hugging Face directory holds, from whichever files it has."""
        if (directory / "tokenizer.json").exists():
            return Tokenizer.from_file(str(directory / "tokenizer.json"))
        if family == "gpt" and (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
            from tokenizers.implementations import ByteLevelSubwordTokenizer

            return ByteLevelSubwordTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))._tokenizer
        if family == "bert" and (directory / "vocab.txt").exists():
            from tokenizers.implementations import BertWordPieceTokenizer

            lower = True
            cfg_path = directory / "tokenizer_config.json"
            if cfg_path.exists():
                lower = bool(json.loads(cfg_path.read_text(encoding="utf-8")).get("do_lower_case", True))
            return BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)._tokenizer
        raise QkvError(f"{directory} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt)")

    @classmethod
    def from_hf_dir(cls, directory: Path, family: str) -> SubwordTokenizer:
        """The tokenizer of a Hugging Face GPT-2 (``family="gpt"``) or BERT (``"bert"``) directory."""
        directory = Path(directory)
        try:
            tok = cls._hf_tokenizer(directory, family)
        except QkvError:
            raise
        except Exception as e:  # tokenizers raises its own exception types
            raise QkvError(f"{directory}'s tokenizer cannot be read ({e})") from None
        tok.no_truncation()  # qkv applies its own length limits (a tokenizer.json may carry others)
        tok.no_padding()
        ids = tok.token_to_id
        if family == "gpt":
            eot = ids("<|endoftext|>")
            specials = {"pad": eot, "bos": eot, "eos": eot, "unk": None, "mask": None}
        else:
            specials = {"pad": ids("[PAD]"), "bos": ids("[CLS]"), "eos": ids("[SEP]"), "unk": ids("[UNK]")}
            specials["mask"] = ids("[MASK]")
        return cls(tok, specials)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no special tokens added)."""
        try:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        except TypeError:  # not a str, or a lone surrogate
            raise not_text([text]) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (parallel in Rust)."""
        try:
            return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        except TypeError:
            raise not_text(list(texts)) from None

    def decode(self, ids: list[int]) -> str:
        """Ids -> detokenized text, stopping at <eos>."""
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode_all(self, ids: list[int]) -> str:
        """Ids -> text without stopping at <eos>."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """The subword strings of ``text`` (for labels in attention plots)."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, i: int) -> str:
        """The subword string of one id."""
        return self.tokenizer.id_to_token(i) or "<unk>"

    def token_id(self, symbol: str) -> int | None:
        """The id of ``symbol``, or None."""
        return self.tokenizer.token_to_id(symbol)

    def to_dict(self) -> dict:
        """qkv's tokenizer file: the special ids and the Hugging Face tokenizer JSON."""
        return {"type": "subword", "specials": self.specials, "tokenizer": json.loads(self.tokenizer.to_str())}

    def save(self, path: Path) -> None:
        """Write qkv's tokenizer file."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")


def load_tokenizer(path: Path) -> Vocab | SubwordTokenizer:
    """Load a run's tokenizer file, whichever kind its content says it is."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: is this a complete qkv run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QkvError(f"{path} is corrupt ({e}); restore it or train a new run") from None
    try:
        if isinstance(data, dict) and data.get("type") == "vocab":
            return Vocab.from_dict(data)
        if isinstance(data, dict) and data.get("type") == "sentencepiece":
            from qkv.data.spm import SentencePieceTokenizer

            return SentencePieceTokenizer.from_dict(data)  # type: ignore[return-value]
        if isinstance(data, dict) and data.get("type") == "subword":
            return SubwordTokenizer(Tokenizer.from_str(json.dumps(data["tokenizer"])), data["specials"])
        if isinstance(data, dict) and "model" in data:  # a plain Hugging Face tokenizer.json of qkv's BPE
            return SubwordTokenizer(Tokenizer.from_str(text))
    except QkvError:
        raise
    except Exception as e:  # tokenizers raises its own exception types
        raise QkvError(f"{path} is not a valid tokenizer ({e})") from None
    raise QkvError(f"{path} is not a qkv tokenizer file")
