"""The token store: its documented layout, content hash, memory-mapped pairs equal to encoding the text,
token-budget batches that cover an epoch and resume exactly, and one-line errors for damaged stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qkv.data import SubwordTokenizer, read_parallel
from qkv.data.store import BucketStream, TokenStore, _content_hash, prepare_store
from qkv.errors import QkvError

WORDS = "ein zwei drei hund katze haus baum frau mann kind geht läuft sitzt liest auf im park".split()
ENGLISH = "one two three dog cat house tree woman man child goes runs sits reads on in park".split()


def corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of 1..12 words, the target a word-by-word gloss of the source."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        k = rng.integers(0, len(WORDS), size=int(rng.integers(1, 13)))
        pairs.append((" ".join(WORDS[i] for i in k), " ".join(ENGLISH[i] for i in k)))
    return pairs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    train = corpus(300) + [("", "leer"), ("nur quelle", "  ")]  # two pairs with an empty side
    for name, pairs in (("train", train), ("valid", corpus(20, 1)), ("test", corpus(30, 2))):
        (d / f"{name}.de").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
        (d / f"{name}.en").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def store(files, tmp_path_factory):
    splits = {s: (str(files / f"{s}.de"), str(files / f"{s}.en")) for s in ("train", "valid", "test")}
    return prepare_store(tmp_path_factory.mktemp("s") / "data", splits, vocab_size=60, chunk=64)


def test_layout_and_manifest(store, files):
    names = {p.name for p in store.path.iterdir()}
    assert names == {
        "manifest.json",
        "src_tokenizer.json",
        "tgt_tokenizer.json",
        *(f"train.{side}.{ext}" for side in ("src", "tgt") for ext in ("bin", "idx")),
        *(f"{split}.{side}.txt" for split in ("valid", "test") for side in ("src", "tgt")),
    }
    m = json.loads((store.path / "manifest.json").read_text())
    assert m["splits"]["train"]["pairs"] == 300 and m["splits"]["train"]["empty"] == 2
    assert m["dtype"] == "uint16" and m["sha256"] == _content_hash(store.path)
    offsets = np.fromfile(store.path / "train.src.idx", dtype="<i8")
    assert len(offsets) == 301 and offsets[-1] * 2 == (store.path / "train.src.bin").stat().st_size
    assert store.split("test") == read_parallel(files / "test.de", files / "test.en").pairs


def test_pairs_are_the_encoded_text_and_bpe_equals_in_memory_training(store, files):
    pairs = read_parallel(files / "train.de", files / "train.en").pairs
    src_tok, tgt_tok = store.tokenizers
    for i in (0, 1, 137, 299):
        assert store.pair(i) == (src_tok.encode(pairs[i][0]), tgt_tok.encode(pairs[i][1]))
    in_memory = SubwordTokenizer.train_bpe([s for s, _ in pairs] + [t for _, t in pairs], 60)
    assert src_tok.to_dict() == in_memory.to_dict()  # streamed in chunks, the same merges
    src_len, _ = store.lengths()
    assert src_len.tolist() == [len(src_tok.encode(s)) for s, _ in pairs]


def test_bucket_batches_respect_budget_cover_epoch_and_resume(store):
    ids = {"bos": 1, "eos": 2, "pad": 0}
    stream = BucketStream(store, max_len=10, max_tokens=64, seed=3, ids=ids)
    src_len, tgt_len = store.lengths()
    kept = int((np.maximum(src_len, tgt_len) <= 10).sum())
    assert len(stream.keep) == kept and stream.dropped == 300 - kept > 0
    seen = 0
    for _ in range(stream.batches_per_epoch):
        b = stream.next_batch()
        assert b.src.numel() <= 64 and b.tgt_in.numel() <= 64 and b.src.size(1) <= 11
        seen += int((b.tgt_out == 2).sum())
    assert seen == kept  # every kept pair exactly once an epoch
    state = stream.state_dict()
    ahead = [stream.next_batch() for _ in range(5)]
    other = BucketStream(store, max_len=10, max_tokens=64, seed=3, ids=ids)
    other.load_state_dict(json.loads(json.dumps(state)))
    for a in ahead:
        b = other.next_batch()
        assert a.src.equal(b.src) and a.tgt_out.equal(b.tgt_out)
    e0, e1 = stream.epoch_batches(0), stream.epoch_batches(1)
    assert not np.array_equal(e0[0], e1[0])  # reshuffled per epoch
    with pytest.raises(QkvError, match="differs from the one this run was trained on"):
        other.load_state_dict({**state, "store": "0" * 64})
    with pytest.raises(QkvError, match="max_tokens=8 is below the longest pair"):
        BucketStream(store, max_len=10, max_tokens=8, seed=0, ids=ids)


def test_damaged_or_foreign_stores_are_one_line(store, files, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in store.path.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "train.tgt.bin").write_bytes((copy / "train.tgt.bin").read_bytes()[:-4])
    damaged = TokenStore(copy)
    with pytest.raises(QkvError, match=r"train\.tgt\.bin is missing or truncated"):
        damaged.lengths()
    with pytest.raises(QkvError, match="has changed since qkv prepare wrote it"):
        damaged.verify()
    store.verify()
    with pytest.raises(QkvError, match="not a qkv token store"):
        TokenStore(files)
    with pytest.raises(QkvError, match="already exists and is not empty"):
        prepare_store(store.path, {"train": (str(files / "train.de"), None)})
    with pytest.raises(QkvError, match="has no train split|no split"):
        store.split("train")


def test_held_out_sentences_with_other_line_breaks_come_back_aligned(store, files, tmp_path):
    """Sentences may hold line breaks other than "\n" (U+2028, U+2029, \x0b, \x0c, \x1c, \x85, a lone \r):
    the held-out text comes back pair for pair, as read. (It was read with ``splitlines``, which split at
    them: more lines than pairs, references shifted against their sources.)"""
    import json as json_

    pairs = [("ein\u2028hund", "a dog"), ("eine katze", "a\x0bcat\x85"), ("baum\rhaus", "tree\u2029house\x0c")]
    pairs.append(("x\x1cy", "z"))
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json_.dumps({"src": a, "tgt": b}) + "\n" for a, b in pairs), encoding="utf-8")
    splits = {"train": (str(files / "train.de"), str(files / "train.en")), "valid": (str(valid), None)}
    again = prepare_store(tmp_path / "s", splits, tokenizers=store.tokenizers)
    assert again.split("valid") == [(a.strip(), b.strip()) for a, b in pairs]  # (prepare strips each side)
    (again.path / "valid.tgt.txt").write_text("one\n", encoding="utf-8")  # damaged: fewer targets than sources
    with pytest.raises(QkvError, match="4 sources, 1 targets: prepare it again"):
        again.split("valid")


def test_given_tokenizers_are_used_and_a_killed_prepare_leaves_nothing(store, files, tmp_path):
    splits = {s: (str(files / f"{s}.de"), str(files / f"{s}.en")) for s in ("train", "valid")}
    again = prepare_store(tmp_path / "again", splits, tokenizers=store.tokenizers)
    assert again.pair(5) == store.pair(5) and "test" not in again.manifest["splits"]
    bad = {**splits, "valid": (str(files / "valid.de"), str(files / "train.en"))}  # misaligned: fails midway
    with pytest.raises(QkvError, match="different line counts"):
        prepare_store(tmp_path / "never", bad, tokenizers=store.tokenizers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
