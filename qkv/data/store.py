"""A token store: parallel text tokenized once and kept on disk, read through memory maps, so that a
corpus of any size trains in bounded memory (``qkv prepare``, ``qkv train --data``).

Layout of a store directory (all little-endian; ``N`` pairs in a split, ``dtype`` from the manifest):

* ``manifest.json`` — ``{"format": "qkv-token-store", "version": 1, "dtype": "uint16" | "int32",
  "splits": {split: {"pairs", "src_tokens", "tgt_tokens", "empty", "from"}}, "vocab_size": {...},
  "sha256": …}``; the hash covers every array and tokenizer file (names and bytes, in name order).
* ``src_tokenizer.json``, ``tgt_tokenizer.json`` — the tokenizers (the same files a run directory holds).
* ``train.src.bin``, ``train.tgt.bin`` — the token ids of every training sentence, concatenated.
* ``train.src.idx``, ``train.tgt.idx`` — ``N + 1`` int64 offsets: sentence ``i`` is ``bin[idx[i]:idx[i+1]]``.
* ``valid.src.txt``, ``valid.tgt.txt`` (and ``test.*``) — the held-out pairs as text, one per line
  (BLEU is computed on text).

Pairs with an empty side are dropped when preparing (counted in the manifest); the length limit
(``task.max_len``) is a training setting, applied when batches are drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from qkv.checkpoint import atomic_write_json, new_directory, read_json
from qkv.data.batching import Seq2SeqBatch, pad
from qkv.data.bpe import SubwordTokenizer, load_tokenizer
from qkv.data.text import iter_pairs
from qkv.errors import QkvError

__all__ = ["BucketStream", "TokenStore", "describe", "prepare_store", "train_tokenizers"]

FORMAT, VERSION = "qkv-token-store", 1
TOKENIZERS = ("src_tokenizer.json", "tgt_tokenizer.json")
Files = tuple[str, str | None]  # (source file, target file) or (one TSV / JSON Lines file, None)


def _clean_pairs(files: Files, fields: tuple[str, str], counts: dict[str, int]) -> Iterator[tuple[str, str]]:
    """Stripped pairs of ``files`` without those with an empty side (counted in ``counts["empty"]``)."""
    for x, y in iter_pairs(*files, fields=fields):
        x, y = x.strip(), y.strip()
        if x and y:
            yield x, y
        else:
            counts["empty"] += 1


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk


def train_tokenizers(
    files: Files, fields: tuple[str, str], vocab_size: int, joint: bool
) -> tuple[SubwordTokenizer, SubwordTokenizer]:
    """BPE learned from the training pairs, read as a stream (one joint vocabulary, or one per side)."""

    def side(k: int | None) -> Iterator[list[str]]:
        counts = {"empty": 0}
        for chunk in _batched(_clean_pairs(files, fields, counts), 10_000):
            yield [t for pair in chunk for t in pair] if k is None else [pair[k] for pair in chunk]

    if joint:
        tok = SubwordTokenizer.train_bpe(side(None), vocab_size)
        return tok, tok
    return SubwordTokenizer.train_bpe(side(0), vocab_size), SubwordTokenizer.train_bpe(side(1), vocab_size)


def prepare_store(
    out: str | Path,
    splits: dict[str, Files],
    *,
    tokenizers: tuple[Any, Any] | None = None,
    vocab_size: int = 8000,
    joint: bool = True,
    fields: tuple[str, str] = ("src", "tgt"),
    chunk: int = 50_000,
    log: Callable[[str], None] | None = None,
) -> TokenStore:
    """Tokenize ``splits`` (``train`` and ``valid`` required, ``test`` optional) into a new store at
    ``out``, ``chunk`` pairs at a time (the tokenizer encodes each chunk on every core); the BPE is
    learned from the training pairs unless ``tokenizers`` are given. The directory appears only when
    complete."""
    say = log or (lambda msg: None)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QkvError(f"{out} already exists and is not empty; choose another --out")
    for split in ("train", "valid"):
        if split not in splits:
            raise QkvError(f"a store needs {split} pairs: give --{split} SRC TGT (or one TSV / JSON Lines file)")
    if tokenizers is None:
        tokenizers = train_tokenizers(splits["train"], fields, vocab_size, joint)
    biggest = max(len(t) for t in tokenizers)
    dtype = np.uint16 if biggest <= np.iinfo(np.uint16).max + 1 else np.int32
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": np.dtype(dtype).name,
        "vocab_size": {"src": len(tokenizers[0]), "tgt": len(tokenizers[1])},
        "splits": {},
    }
    with new_directory(out) as tmp:
        for tok, name in zip(tokenizers, TOKENIZERS, strict=True):
            tok.save(tmp / name)
        for split, files in splits.items():
            counts = {"empty": 0}
            pairs = _clean_pairs(files, fields, counts)
            if split == "train":
                info = _write_tokens(tmp, split, pairs, tokenizers, dtype, chunk)
            else:
                info = _write_text(tmp, split, pairs)
            if not info["pairs"]:
                where = files[0] if files[1] is None else f"{files[0]} / {files[1]}"
                raise QkvError(f"no usable sentence pairs in {where} (every line has an empty side)")
            manifest["splits"][split] = {**info, "empty": counts["empty"], "from": [f for f in files if f]}
        manifest["sha256"] = _content_hash(tmp)
        atomic_write_json(tmp / "manifest.json", manifest)
    for split, info in manifest["splits"].items():  # notes only once all is well: an error stays one line
        say(f"qkv: {split}: {info['pairs']:,} pairs ({info['empty']:,} with an empty side dropped)")
    return TokenStore(out)


def _write_tokens(
    directory: Path, split: str, pairs: Iterator[tuple[str, str]], tokenizers: tuple[Any, Any], dtype: Any, chunk: int
) -> dict[str, int]:
    """Tokenize ``pairs`` into ``SPLIT.{src,tgt}.{bin,idx}``, ``chunk`` pairs at a time."""
    ends = {"src": [np.zeros(1, dtype=np.int64)], "tgt": [np.zeros(1, dtype=np.int64)]}
    totals = {"src": 0, "tgt": 0}
    n = 0
    files = {side: open(directory / f"{split}.{side}.bin", "wb") for side in ("src", "tgt")}  # noqa: SIM115
    try:
        for block in _batched(pairs, chunk):
            n += len(block)
            for k, side in enumerate(("src", "tgt")):
                ids = tokenizers[k].encode_batch([p[k] for p in block])
                lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                flat = np.fromiter((i for x in ids for i in x), dtype=dtype, count=int(lengths.sum()))
                files[side].write(flat.tobytes())
                ends[side].append(totals[side] + np.cumsum(lengths))
                totals[side] += int(lengths.sum())
    finally:
        for f in files.values():
            f.close()
    for side in ("src", "tgt"):
        np.concatenate(ends[side]).astype("<i8").tofile(directory / f"{split}.{side}.idx")
    return {"pairs": n, "src_tokens": totals["src"], "tgt_tokens": totals["tgt"]}


def _write_text(directory: Path, split: str, pairs: Iterator[tuple[str, str]]) -> dict[str, int]:
    """Held-out pairs as text, ``SPLIT.src.txt`` and ``SPLIT.tgt.txt``: one sentence a line, ended by "\n" (a
    "\n" inside a sentence becomes a space; other line breaks stay, see :func:`_written_lines`)."""
    n = 0
    with open(directory / f"{split}.src.txt", "w", encoding="utf-8", newline="\n") as fs:
        with open(directory / f"{split}.tgt.txt", "w", encoding="utf-8", newline="\n") as ft:
            for x, y in pairs:
                fs.write(x.replace("\n", " ") + "\n")
                ft.write(y.replace("\n", " ") + "\n")
                n += 1
    return {"pairs": n}


def _written_lines(path: Path) -> list[str]:
    """The sentences of a held-out text file as :func:`_write_text` wrote them: split at "\n" alone, for a
    sentence may hold "\r", U+2028 and the other breaks that ``splitlines`` and text mode would split at."""
    lines = path.read_bytes().decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _content_hash(directory: Path) -> str:
    """sha256 over the names and bytes of a store's array, text and tokenizer files."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(directory).iterdir() if p.name != "manifest.json"):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return h.hexdigest()


class TokenStore:
    """A store written by :func:`prepare_store`, opened read-only: tokenizers, held-out text, and the
    training sentences through memory maps (nothing is read until used)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise QkvError(f"{self.path} is not a qkv token store (no manifest.json); make one with qkv prepare")
        m = read_json(manifest)
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
            raise QkvError(f"{manifest} is not a version-{VERSION} qkv token store manifest; run qkv prepare again")
        self.manifest, self.sha256 = m, str(m.get("sha256"))
        self.tokenizers = tuple(load_tokenizer(self.path / name) for name in TOKENIZERS)
        self._train: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(ids, offsets) memory maps of each side of the training split; sizes checked against the manifest."""
        if self._train is None:
            info, dtype = self.manifest["splits"]["train"], np.dtype(self.manifest["dtype"])
            out = {}
            for side in ("src", "tgt"):
                bin_path, idx_path = self.path / f"train.{side}.bin", self.path / f"train.{side}.idx"
                sizes = (info[f"{side}_tokens"] * dtype.itemsize, (info["pairs"] + 1) * 8)
                for p, size in zip((bin_path, idx_path), sizes, strict=True):
                    if not p.exists() or p.stat().st_size != size:
                        raise QkvError(f"{p} is missing or truncated ({size:,} bytes expected); run qkv prepare again")
                ids = np.memmap(bin_path, dtype=dtype, mode="r") if sizes[0] else np.zeros(0, dtype)
                out[side] = (ids, np.memmap(idx_path, dtype="<i8", mode="r"))
            self._train = out
        return self._train

    def __len__(self) -> int:
        return int(self.manifest["splits"]["train"]["pairs"])

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Tokens per training sentence, (source, target), each (N,)."""
        a = self._arrays()
        return np.diff(a["src"][1]), np.diff(a["tgt"][1])

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        """The token ids of training pair ``i``."""
        a = self._arrays()
        return tuple(ids[off[i] : off[i + 1]].tolist() for ids, off in (a["src"], a["tgt"]))  # type: ignore[return-value]

    def split(self, name: str) -> list[tuple[str, str]]:
        """The held-out pairs of ``name`` (``valid`` or ``test``) as text."""
        if name not in self.manifest["splits"] or name == "train":
            have = [s for s in self.manifest["splits"] if s != "train"]
            raise QkvError(f"the store {self.path} has no {name} split (it has {', '.join(have)})")
        src, tgt = (_written_lines(self.path / f"{name}.{s}.txt") for s in ("src", "tgt"))
        if len(src) != len(tgt):
            counts = f"{len(src)} sources, {len(tgt)} targets"
            raise QkvError(f"the store {self.path}'s {name} split has {counts}: prepare it again")
        return list(zip(src, tgt, strict=True))

    def verify(self) -> None:
        """Recompute the content hash; a QkvError when the files no longer match the manifest."""
        if _content_hash(self.path) != self.sha256:
            raise QkvError(f"{self.path} has changed since qkv prepare wrote it (content hash differs); prepare again")


class BucketStream:
    """Token-budget batches from a store: each epoch, the pairs within ``max_len`` tokens a side are
    ordered by width (the longer side + 1; ties in a random order), cut into batches of at most
    ``max_tokens`` padded tokens, and the batches shuffled — all from ``seed`` and the epoch, with the
    store read through its memory maps. The position is (epoch, batch, store hash): resuming is exact."""

    def __init__(self, store: TokenStore, max_len: int, max_tokens: int, seed: int, ids: dict[str, int]) -> None:
        src_len, tgt_len = store.lengths()
        width = np.maximum(src_len, tgt_len) + 1  # + <eos> / <bos>
        keep = np.flatnonzero(np.maximum(src_len, tgt_len) <= max_len)
        if not len(keep):
            raise QkvError(f"no training pair is within task.max_len={max_len} tokens a side; raise task.max_len")
        if int(width[keep].max()) > max_tokens:
            raise QkvError(f"train.max_tokens={max_tokens} is below the longest pair ({width[keep].max()} tokens)")
        self.store, self.max_tokens, self.seed, self.ids = store, max_tokens, seed, ids
        self.keep, self.width, self.dropped = keep, width[keep], len(src_len) - len(keep)
        self.epoch, self.pos = 0, 0
        self._order, self._bounds = self.epoch_batches(0)

    def epoch_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(pair order, (batches, 2) start/end rows into it) of one epoch, batches in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.keep))
        perm = perm[np.argsort(self.width[perm], kind="stable")]  # by width; random among equals
        widths = self.width[perm]
        bounds, start, n = [], 0, len(perm)
        while start < n:  # the most pairs whose count × widest (the last: widths ascend) fits the budget
            room = min(n - start, self.max_tokens // int(widths[start]))
            fits = np.arange(1, room + 1) * widths[start : start + room] <= self.max_tokens
            end = start + int(np.flatnonzero(fits)[-1]) + 1
            bounds.append((start, end))
            start = end
        rows = np.array(bounds, dtype=np.int64)
        return self.keep[perm], rows[rng.permutation(len(rows))]

    @property
    def batches_per_epoch(self) -> int:
        """Batches in the current epoch."""
        return len(self._bounds)

    def next_batch(self) -> Seq2SeqBatch:
        """The next batch (a new epoch starts when one ends)."""
        if self.pos == len(self._bounds):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order, self._bounds = self.epoch_batches(self.epoch)
        start, end = self._bounds[self.pos]
        self.pos += 1
        pairs = [self.store.pair(int(i)) for i in self._order[start:end]]
        bos, eos, pad_id = self.ids["bos"], self.ids["eos"], self.ids["pad"]
        return Seq2SeqBatch(
            src=pad([s + [eos] for s, _ in pairs], pad_id),
            tgt_in=pad([[bos] + t for _, t in pairs], pad_id),
            tgt_out=pad([t + [eos] for _, t in pairs], pad_id),
        )

    def state_dict(self) -> dict[str, Any]:
        """Position: epoch, batch index, and the hash of the store it indexes."""
        return {"epoch": self.epoch, "pos": self.pos, "store": self.store.sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (of the same store)."""
        if state.get("store", self.store.sha256) != self.store.sha256:
            raise QkvError(
                f"the data store {self.store.path} differs from the one this run was trained on "
                "(content hash); resume with the same store"
            )
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order, self._bounds = self.epoch_batches(self.epoch)


def describe(store: TokenStore) -> str:
    """One line about a store: pairs and tokens per split."""
    s = store.manifest["splits"]
    t = s["train"]
    held = ", ".join(f"{k} {v['pairs']:,}" for k, v in s.items() if k != "train")
    return f"{store.path}: train {t['pairs']:,} pairs ({t['src_tokens']:,} + {t['tgt_tokens']:,} tokens), {held}"
