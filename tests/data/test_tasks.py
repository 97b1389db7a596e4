"""Built-in tasks and vocabularies: correct pairs, truly held-out splits, round trips."""

from __future__ import annotations

import random

import pytest

from qkv.data import TaskConfig, Vocab, get_task
from qkv.data.tasks import number_words, ordinal_words, year_words
from qkv.errors import QkvError


def test_number_words():
    assert number_words(7) == ["seven"]
    assert number_words(13) == ["thirteen"]
    assert number_words(40) == ["forty"]
    assert number_words(99) == ["ninety", "nine"]
    assert ordinal_words(1) == ["first"]
    assert ordinal_words(12) == ["twelfth"]
    assert ordinal_words(20) == ["twentieth"]
    assert ordinal_words(30) == ["thirtieth"]
    assert ordinal_words(23) == ["twenty", "third"]
    rng = random.Random(0)
    assert year_words(1987, rng) == ["nineteen", "eighty", "seven"]
    assert year_words(1905, rng) == ["nineteen", "oh", "five"]
    assert year_words(1900, rng) == ["nineteen", "hundred"]
    assert year_words(2000, rng) == ["two", "thousand"]
    assert year_words(2007, rng) == ["two", "thousand", "seven"]
    assert {tuple(year_words(2023, random.Random(s))) for s in range(20)} == {
        ("twenty", "twenty", "three"),
        ("two", "thousand", "twenty", "three"),
    }


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "dates"])
def test_pairs_are_correct_and_in_vocabulary(name):
    task = get_task(TaskConfig(name=name))
    src_vocab, tgt_vocab = task.vocabs()
    rng = random.Random(1)
    for _ in range(300):
        src, tgt = task.train_pair(rng)
        assert src_vocab.decode(src_vocab.encode(src)) == src
        assert tgt_vocab.decode(tgt_vocab.encode(tgt)) == tgt
        if name == "copy":
            assert src == tgt
        elif name == "reverse":
            assert tgt == src[::-1]
        elif name == "sort":
            assert tgt == "".join(sorted(src))
        else:
            y, m, d = (int(x) for x in tgt.split("-"))
            assert 1900 <= y <= 2099 and 1 <= m <= 12 and 1 <= d <= 31


def test_dates_reorders():
    task = get_task(TaskConfig(name="dates"))
    pairs = dict(task.sample(random.Random(s)) for s in range(200))
    assert pairs.get("the fourth of july nineteen eighty seven", "1987-07-04") == "1987-07-04"
    forms = {src.split()[0] for src in pairs}
    assert "the" in forms and "march" in forms  # several word orders


@pytest.mark.parametrize("name", ["reverse", "dates"])
def test_held_out_splits_are_disjoint_and_never_trained_on(name):
    task = get_task(TaskConfig(name=name, valid_size=200, test_size=200))
    valid, test = task.split("valid"), task.split("test")
    assert len(valid) == 200 and len(test) == 200
    assert not {s for s, _ in valid} & {s for s, _ in test}
    assert task.split("test") == test  # deterministic
    held_out = {s for s, _ in valid} | {s for s, _ in test}
    rng = random.Random(0)
    assert not any(task.train_pair(rng)[0] in held_out for _ in range(5000))


def test_vocab_errors_and_round_trip(tmp_path):
    v = Vocab(["hello", "world"], "word")
    assert v.encode("hello world") == [4, 5]
    assert v.decode([4, 5, 2, 4]) == "hello world"
    with pytest.raises(QkvError, match="'there' in 'hello there' is not in this model's vocabulary"):
        v.encode("hello there")
    with pytest.raises(QkvError, match="<pad>"):
        v.encode("<pad>")
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == v.itos
    with pytest.raises(QkvError, match="unknown vocabulary level"):
        Vocab(["a"], "byte")
