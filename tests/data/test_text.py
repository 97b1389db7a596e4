"""Parallel text: its layouts (two files, TSV, JSON Lines, gzip), one-line errors for bad files, filtering
that is counted, BPE."""

from __future__ import annotations

import gzip
import json

import pytest

from qkv.data import SubwordTokenizer, load_tokenizer, read_lines, read_parallel
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


def test_one_tsv_file_reads_like_two_files_and_gzip_like_plain(tmp_path):
    two = read_parallel(write(tmp_path, "a.de", SRC), write(tmp_path, "a.en", TGT))
    tsv = write(tmp_path, "pairs.tsv", [f"{x}\t{y}" for x, y in zip(SRC, TGT, strict=True)])
    packed = tmp_path / "pairs.data"  # compressed, under a name that says nothing: the bytes decide
    packed.write_bytes(gzip.compress(tsv.read_bytes()))
    assert read_parallel(tsv).pairs == read_parallel(packed).pairs == two.pairs
    assert read_parallel(tsv).empty == two.empty == 5
    assert read_lines(packed) == read_lines(tsv)


def test_json_lines_with_default_and_nested_fields(tmp_path):
    rows = [{"src": x, "tgt": y} for x, y in zip(SRC, TGT, strict=True)]
    flat = write(tmp_path, "a.jsonl", [json.dumps(r) for r in rows])
    nested = write(tmp_path, "b.jsonl", [json.dumps({"translation": {"de": r["src"], "en": r["tgt"]}}) for r in rows])
    expected = read_parallel(write(tmp_path, "a.de", SRC), write(tmp_path, "a.en", TGT)).pairs
    assert read_parallel(flat).pairs == expected
    assert read_parallel(nested, fields=("translation.de", "translation.en")).pairs == expected
    with pytest.raises(QkvError, match=r"b\.jsonl: line 1 has no field 'src' \(it has 'translation'\); set task"):
        read_parallel(nested)


def test_field_names_with_a_layout_that_has_no_fields_are_refused(tmp_path):
    """--fields / task.src_field name JSON Lines fields: given with TSV or two files they would do nothing."""
    tsv = write(tmp_path, "a.tsv", [f"{x}\t{y}" for x, y in zip(SRC, TGT, strict=True)])
    src, tgt = write(tmp_path, "a.de", SRC), write(tmp_path, "a.en", TGT)
    with pytest.raises(QkvError, match=r"fields de,en name JSON Lines fields, but .*a\.tsv is a TSV file"):
        read_parallel(tsv, fields=("de", "en"))
    with pytest.raises(QkvError, match=r"is two aligned files: drop --fields"):
        read_parallel(src, tgt, fields=("de", "en"))
    assert read_parallel(tsv, fields=("src", "tgt")).pairs == read_parallel(src, tgt).pairs  # the default: fine


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["ein\ta", "zwei drei"], r"x: line 2 has 1 tab-separated fields, not 2"),
        (["a\tb\tc"], r"x: line 1 has 3 tab-separated fields"),
        (['{"src": "a", "tgt": "b"}', "{oops"], r"x: line 2 is not JSON"),
        (['{"src": "a", "tgt": 3}'], r"x: line 1: the fields src, tgt must be strings"),
    ],
)
def test_bad_single_files_name_the_line(tmp_path, lines, message):
    with pytest.raises(QkvError, match=message):
        read_parallel(write(tmp_path, "x", lines))


def test_damaged_gzip_is_one_line(tmp_path):
    bad = tmp_path / "cut.gz"
    whole = gzip.compress("".join(f"satz {i}\tsentence {i * 7919 % 10007}\n" for i in range(5000)).encode())
    bad.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(QkvError, match=r"cut\.gz is a damaged gzip file"):
        read_parallel(bad)


def test_a_text_that_is_not_utf8_is_one_line_not_a_tokenizer_exception():
    """Bytes that were not UTF-8, decoded with surrogateescape, reach the tokenizer as lone surrogates; the
    tokenizers library raised a TypeError ("TextInputSequence must be str"): now one QkvError saying which."""
    tok = SubwordTokenizer.train_bpe(SRC + TGT, vocab_size=120, min_frequency=1)
    with pytest.raises(QkvError, match=r"the text holds '\\udcff', a lone surrogate"):
        tok.encode("ein \udcff hund")
    with pytest.raises(QkvError, match=r"text 2 holds '\\ud800', a lone surrogate"):
        tok.encode_batch(["ein hund", "a \ud800"])
    assert tok.encode_batch(["ein hund"]) == [tok.encode("ein hund")]
