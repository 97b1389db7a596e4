"""Parallel text: one-line errors for bad files, filtering that is counted, BPE, token-budget batches."""

from __future__ import annotations

import pytest

from qkv.data import SubwordTokenizer, TokenBudgetStream, load_tokenizer, read_parallel
from qkv.errors import QkvError

SRC = ["Ein Hund läuft.", "Zwei Männer sitzen auf einer Bank.", "", "Eine Frau liest ein Buch im Park."] * 5
TGT = ["A dog runs.", "Two men sit on a bench.", "Hello", "A woman reads a book in the park."] * 5


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_reads_and_counts_filtered_pairs(tmp_path):
    text = read_parallel(write(tmp_path, "a.de", SRC), write(tmp_path, "a.en", TGT))
    assert len(text.pairs) == 15 and text.empty == 5
    assert "15 pairs (5 with an empty side" in text.report("train")


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    a, b = write(tmp_path, "a.de", SRC), write(tmp_path, "b.en", TGT[:-1])
    with pytest.raises(QkvError, match=r"a\.de has 20 lines, .*b\.en has 19"):
        read_parallel(a, b)


def test_invalid_utf8_gives_file_and_line(tmp_path):
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"gut\nauch gut\nschlecht \xff\xfe\n")
    with pytest.raises(QkvError, match=r"bad\.de: line 3 is not valid UTF-8"):
        read_parallel(bad, write(tmp_path, "b.en", ["a", "b", "c"]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QkvError, match="no such file"):
        read_parallel(tmp_path / "nope.de", tmp_path / "nope.en")
    empty = tmp_path / "empty.de"
    empty.write_text("\n\n")
    with pytest.raises(QkvError, match="is empty"):
        read_parallel(empty, write(tmp_path, "x.en", ["a"]))


def test_bpe_round_trip_is_detokenized_text(tmp_path):
    tok = SubwordTokenizer.train_bpe(SRC + TGT, vocab_size=120, min_frequency=1)
    for text in ("Zwei Männer sitzen auf einer Bank.", "A woman reads a book in the park."):
        ids = tok.encode(text)
        assert all(i >= 4 for i in ids)
        assert tok.decode(ids + [2, 9, 9]) == text
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.encode("Ein Hund läuft.") == tok.encode("Ein Hund läuft.")
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)


def test_token_budget_batches_respect_budget_cover_epoch_and_resume():
    src = [[5] * (1 + i % 13) for i in range(200)]
    tgt = [[6] * (1 + (i * 7) % 11) for i in range(200)]
    stream = TokenBudgetStream(src, tgt, max_tokens=64, seed=3)
    n = stream.batches_per_epoch
    seen = []
    for _ in range(n):
        b = stream.next_batch()
        assert b.src.numel() <= 64 and b.tgt_in.numel() <= 64
        seen.append(b)
    assert sum(int((b.tgt_out == 2).sum()) for b in seen) == 200  # every pair exactly once
    state = stream.state_dict()
    ahead = [stream.next_batch() for _ in range(5)]
    other = TokenBudgetStream(src, tgt, max_tokens=64, seed=3)
    other.load_state_dict(state)
    for a in ahead:
        b = other.next_batch()
        assert a.src.equal(b.src) and a.tgt_out.equal(b.tgt_out)
    assert stream.epoch_batches(0) != stream.epoch_batches(1)  # reshuffled per epoch
    with pytest.raises(QkvError, match="max_tokens"):
        TokenBudgetStream(src, tgt, max_tokens=8, seed=0)
