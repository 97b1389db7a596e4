"""Fuzzing `qkv convert --from-hf`: one value of a Marian, GPT-2 or BERT directory's config.json (or its
generation, tokenizer or vocabulary file) replaced by a value of any JSON type. The conversion must exit 0,
or 2 with one `qkv: error:` line — never an internal error — and a converted run must then answer its verb
(translate, generate, embed) the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fuzz_values import JSON_VALUES  # tests/fuzz_values.py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkv.cli import main

pytest.importorskip("transformers")

FILES = {
    "marian": ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "target_vocab.json"),
    "gpt": ("config.json", "tokenizer.json"),
    "bert": ("config.json", "tokenizer.json"),
}
VERBS = {
    "marian": ["translate", "{run}", "a b c", "--beam", "2"],
    "gpt": ["generate", "{run}", "t1 t2", "--max-new-tokens", "3"],
    "bert": ["embed", "{run}", "w1 w2"],
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small directory of each kind `qkv convert` reads."""
    from marian_dirs import make_marian_dir  # tests/marian_dirs.py

    from tests.interop.test_hf import BERT_SHAPES, GPT_SHAPES, _write_tokenizer, hf_bert, hf_gpt

    dirs = {"marian": make_marian_dir(tmp_path_factory.mktemp("marian") / "m", "separate-gelu")}
    dirs["gpt"], dirs["bert"] = tmp_path_factory.mktemp("gpt"), tmp_path_factory.mktemp("bert")
    hf_gpt(dirs["gpt"], GPT_SHAPES[0])
    hf_bert(dirs["bert"], BERT_SHAPES[0])
    for family in ("gpt", "bert"):
        _write_tokenizer(dirs[family], family)
    return dirs


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, str, str, object]:
    """(kind, file, a key of it or a new one, its new value)."""
    kind = draw(st.sampled_from(sorted(FILES)))
    return kind, draw(st.sampled_from(FILES[kind])), draw(st.text(max_size=30)), draw(JSON_VALUES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=damage())
def test_a_damaged_checkpoint_converts_or_is_one_line(hf_dirs, tmp_path_factory, capsys, change):
    kind, name, key, value = change
    d = tmp_path_factory.mktemp("fuzz") / kind
    shutil.copytree(hf_dirs[kind], d)
    path = d / name
    data = json.loads(path.read_text()) if path.exists() else {}
    keys = sorted(data)
    data[keys[hash(key) % len(keys)] if keys and key else key or "x"] = value
    path.write_text(json.dumps(data))
    run = str(d.parent / "run")
    for argv in (["convert", "--from-hf", str(d), "--out", run], [a.format(run=run) for a in VERBS[kind]]):
        code = main(argv)
        _, err = capsys.readouterr()
        assert code in (0, 2), (argv[0], change, err)
        if code == 2:
            assert err.startswith("qkv: error:") and err.count("\n") == 1, err
            break


@pytest.mark.parametrize(
    "kind, name, key, value, needle",
    [
        ("marian", "config.json", "vocab_size", None, "config.json's vocab_size is null"),
        ("marian", "config.json", "d_model", "512", "config.json's d_model='512': must be a whole number"),
        ("marian", "config.json", "share_encoder_decoder_embeddings", 1, "must be true or false"),
        ("marian", "vocab.json", "x", [], "must map each piece to its id"),
        ("gpt", "config.json", "n_embd", 32.0, "config.json's n_embd=32.0: must be a whole number"),
        ("gpt", "tokenizer.json", "x", None, "tokenizer cannot be read"),
        ("bert", "config.json", "hidden_act", ["gelu"], "config.json's hidden_act"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_it(hf_dirs, tmp_path, capsys, kind, name, key, value, needle):
    """Values of the wrong type used to reach the model's config or the tokenizer as they were: a TypeError
    (vocab_size null), an unhashable list, tokenizers' own exception — internal errors."""
    d = tmp_path / kind
    shutil.copytree(hf_dirs[kind], d)
    data = json.loads((d / name).read_text())
    data[key] = value
    (d / name).write_text(json.dumps(data))
    assert main(["convert", "--from-hf", str(d), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error:") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run").exists()
