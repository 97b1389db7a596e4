"""Language-model training (GPT and BERT) end to end: tiny runs, exact resume, and the CLI verbs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv.train import recipe, train

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40).strip()
TINY_GPT = ["d_model=32", "h=2", "N=2", "max_len=16", "steps=12", "eval_every=6", "batch_size=4", "warmup=2"]
TINY_BERT = ["d_model=32", "h=2", "N=2", "d_ff=64", "max_len=16", "steps=12", "eval_every=6", "batch_size=4"]
TINY_BERT += ["warmup=2", "eval_batches=3"]


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def quiet(msg: str) -> None:
    pass


def test_gpt_trains_and_resumes_exactly(tmp_path, text_file):
    over = TINY_GPT + [f"task.path={text_file}", "dropout=0.1"]
    summary = train(recipe("shakespeare-char"), tmp_path / "a", overrides=over, progress=False, log=quiet)
    vocab = json.loads((tmp_path / "a" / "config.json").read_text())["model"]["vocab_size"]
    assert summary["family"] == "gpt" and summary["valid_loss"] < math.log(vocab)  # better than uniform
    train(recipe("shakespeare-char"), tmp_path / "b", overrides=over, until_step=6, progress=False, log=quiet)
    train(out=tmp_path / "b", resume=True, progress=False, log=quiet)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = qkv.load(tmp_path / "a")
    assert isinstance(run, qkv.api.GPTRun)
    pieces = []
    text = run.generate("To be", max_new_tokens=30, temperature=0.8, seed=3, on_text=pieces.append)[0]
    assert len(text) == 30 and "".join(pieces) == text
    assert (
        run.generate(["To be", "W"], max_new_tokens=10, seed=3)[0]
        == run.generate("To be", max_new_tokens=10, seed=3)[0]
    )


def test_bert_pretrains_and_embeds(tmp_path, text_file):
    over = TINY_BERT + [f"task.path={text_file}"]
    summary = train(recipe("bert-mini"), tmp_path / "bert", overrides=over, progress=False, log=quiet)
    assert summary["family"] == "bert" and 0 <= summary["valid_token_accuracy"] <= 1
    run = qkv.load(tmp_path / "bert")
    vecs = run.embed(["To be", "or not", "the question"], normalize=True)
    assert vecs.shape == (3, 32)
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(run.embed(["or not"], normalize=True)[0], vecs[1], atol=1e-5, rtol=1e-5)
    maps = run.attention("To be")
    assert maps.kinds == ["self", "rollout"] and maps.queries["self"][0] == "[CLS]"


def cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "qkv", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_cli_generate_embed_attention_export(tmp_path, text_file):
    res = cli(
        "train", "shakespeare-char", "--text", str(text_file), *TINY_GPT, "--out", str(tmp_path / "g"), "--no-progress"
    )
    assert res.returncode == 0, res.stderr
    assert "sample (temperature 0.8, seed 0)" in res.stdout and "valid loss" in res.stdout
    res = cli("evaluate", str(tmp_path / "g"))
    assert res.returncode == 0, res.stderr
    n_valid = len(qkv.load(tmp_path / "g").tokenizer.encode(TEXT)) - int(len(TEXT) * 0.9)  # chars: one token each
    assert json.loads(res.stdout)["n"] == (n_valid - 1) // 16 * 16  # every validation token once
    res = cli("generate", str(tmp_path / "g"), "--prompt", "To be", "--max-new-tokens", "20", "--seed", "1")
    assert res.returncode == 0 and res.stdout.startswith("To be") and len(res.stdout) == len("To be") + 20 + 1
    res = cli("attention", str(tmp_path / "g"), "To be", "-o", str(tmp_path / "a.png"))
    assert res.returncode == 0, res.stderr
    res = cli("export", "--to-hf", str(tmp_path / "g"), "--out", str(tmp_path / "hf"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
    from tokenizers import Tokenizer

    hf_tok = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    line = "Whether 'tis nobler\nin"
    assert hf_tok.encode(line).ids == qkv.load(tmp_path / "g").tokenizer.encode(line)
    assert hf_tok.decode(hf_tok.encode(line).ids) == line
    res = cli("evaluate", str(tmp_path / "g"), "--beam", "4", "--no-early-stopping")
    assert res.returncode == 2 and "--beam, --early-stopping: how translations are decoded" in res.stderr
    res = cli("embed", str(tmp_path / "g"), "x")
    assert res.returncode == 2 and "needs a bert run" in res.stderr and "Traceback" not in res.stderr
    res = cli("translate", str(tmp_path / "g"), "x")
    assert res.returncode == 2 and "needs a translation (transformer, rnn, cnn) run" in res.stderr
    res = cli("generate", str(tmp_path / "g"), "--prompt", "Q€", "--max-new-tokens", "5")
    assert res.returncode == 2 and "not in this model's vocabulary" in res.stderr
    res = cli("generate", str(tmp_path / "g"), "--prompt", "To be, or not to be", "--max-new-tokens", "5")
    assert res.returncode == 2 and "the model's context is 16" in res.stderr
    res = cli("generate", str(tmp_path / "g"), "--prompt", "To", "--max-new-tokens", "40", "--seed", "2")
    assert res.returncode == 0 and len(res.stdout) == 2 + 40 + 1  # past the context: the window slides
    res = cli("convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and "config.json is missing" in res.stderr
    assert not (tmp_path / "c").exists()


def test_gpt_on_bpe_tokens(tmp_path, text_file):
    over = TINY_GPT + [f"task.path={text_file}", "task.tokenizer=bpe", "task.vocab_size=60", "steps=4", "eval_every=4"]
    train(recipe("shakespeare-char"), tmp_path / "bpe", overrides=over, progress=False, log=quiet)
    run = qkv.load(tmp_path / "bpe")
    assert len(run.tokenizer) <= 60
    assert run.tokenizer.decode(run.tokenizer.encode("To be, or not")) == "To be, or not"
    assert isinstance(run.generate("To be", max_new_tokens=5, seed=0)[0], str)


def test_cli_generate_stdin_json_and_both_export_spellings(tmp_path, text_file):
    over = TINY_GPT + [f"task.path={text_file}", "steps=4", "eval_every=4"]
    train(recipe("shakespeare-char"), tmp_path / "g", overrides=over, progress=False, log=quiet)
    run = str(tmp_path / "g")
    res = cli("generate", run, "--max-new-tokens", "8", "--seed", "4", stdin="To be")  # all of stdin: one prompt
    same = cli("generate", run, "To be", "--max-new-tokens", "8", "--seed", "4")
    assert res.returncode == 0 and res.stdout == same.stdout and res.stdout.startswith("To be")
    res = cli("generate", run, "To", "W", "--max-new-tokens", "5", "--seed", "4", "--json")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["To", "W"] and all(len(r["text"]) == 5 for r in rows)
    new = cli("export", run, "--out", str(tmp_path / "new"))
    old = cli("export", "--to-hf", run, "--out", str(tmp_path / "old"))
    assert new.returncode == old.returncode == 0 and new.stdout == old.stdout == ""
    assert "is now `qkv export RUN --out DIR`" in old.stderr and "note" not in new.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()
