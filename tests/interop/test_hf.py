"""Hugging Face interop: random GPT-2 and BERT checkpoints give the same logits / hidden states in qkv,
greedy generation gives the same tokens, and export -> import is exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qkv.decode import generate
from qkv.errors import QkvError
from qkv.models.bert import BERT
from qkv.models.gpt import GPT

transformers = pytest.importorskip("transformers")

GPT_SHAPES = [
    dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=97),
    dict(n_embd=48, n_layer=3, n_head=3, n_positions=40, vocab_size=61, n_inner=80),
]
BERT_SHAPES = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=90),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=96, vocab_size=71),
]


def hf_gpt(tmp_path, shape, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


def hf_bert(tmp_path, shape, seed=0, mlm=False):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**shape, max_position_embeddings=64)
    cls = transformers.BertForMaskedLM if mlm else transformers.BertModel
    model = cls(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("shape", GPT_SHAPES)
def test_gpt2_logits_match(tmp_path, shape):
    ref = hf_gpt(tmp_path, shape)
    ours = GPT.from_hf(str(tmp_path))
    ids = torch.randint(0, shape["vocab_size"], (3, 17))
    with torch.no_grad():
        expected = ref(ids).logits
    assert (ours(ids) - expected).abs().max() < 1e-4


def test_gpt2_from_pytorch_model_bin(tmp_path):
    ref = hf_gpt(tmp_path, GPT_SHAPES[0])
    # the older checkpoint format: a torch pickle, which qkv reads with weights_only=True
    (tmp_path / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = GPT.from_hf(str(tmp_path))
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("shape", GPT_SHAPES)
def test_gpt2_greedy_generation_matches(tmp_path, shape):
    ref = hf_gpt(tmp_path, shape, seed=1)
    ours = GPT.from_hf(str(tmp_path))
    prompt = torch.randint(1, shape["vocab_size"], (1, 5))
    with torch.no_grad():
        hf = ref.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    mine = generate(ours, [prompt[0].tolist()], max_new_tokens=20, temperature=0.0)[0]
    assert mine == hf[0, 5:].tolist()


@pytest.mark.parametrize("shape", BERT_SHAPES)
def test_bert_hidden_states_match_with_padding(tmp_path, shape):
    ref = hf_bert(tmp_path, shape)
    ours = BERT.from_hf(str(tmp_path))
    ids = torch.randint(1, shape["vocab_size"], (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, mask, types)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() < 1e-4
    assert ours.pooler is not None  # BertModel has a pooler; it is kept


def test_bert_mlm_logits_match(tmp_path):
    shape = BERT_SHAPES[0]
    ref = hf_bert(tmp_path, shape, mlm=True)
    ours = BERT.from_hf(str(tmp_path))
    ids = torch.randint(1, shape["vocab_size"], (2, 10))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = ours.mlm_logits(ours(ids))
    assert (got - expected).abs().max() < 1e-4


def _write_tokenizer(directory, family):
    """A small tokenizer of the right kind, so that `qkv convert` has one to bring along."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    if family == "gpt":
        vocab = {f"t{i}": i for i in range(96)} | {"<|endoftext|>": 96}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    else:
        names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(85)]
        tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_convert_export_round_trip_is_exact(tmp_path, family):
    import qkv
    from qkv.interop import convert_from_hf, export_to_hf

    src = tmp_path / "hf"
    if family == "gpt":
        ref = hf_gpt(src, GPT_SHAPES[0])
    else:
        ref = hf_bert(src, BERT_SHAPES[0], mlm=True)
    _write_tokenizer(src, family)
    run = convert_from_hf(src, tmp_path / "run")
    loaded = qkv.load(run)
    assert json.loads((run / "config.json").read_text())["family"] == family
    out = export_to_hf(run, tmp_path / "back")
    again = convert_from_hf(out, tmp_path / "run2")
    a, b = load_file(run / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and transformers reads the export
    cls = transformers.GPT2LMHeadModel if family == "gpt" else transformers.BertForMaskedLM
    back = cls.from_pretrained(out).eval()
    ids = torch.randint(5, 85, (2, 8))
    with torch.no_grad():
        if family == "gpt":
            assert (back(ids).logits - ref(ids).logits).abs().max() < 1e-5
            assert (loaded.model(ids) - ref(ids).logits).abs().max() < 1e-4
        else:
            assert (back(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() < 1e-5
    with pytest.raises(QkvError, match="already exists"):
        export_to_hf(run, out)


class _Payload:
    """An object whose unpickling would run code: weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_untrusted_or_incomplete_checkpoints_are_one_line(tmp_path, capsys):
    import pickle

    from qkv.cli import main

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 8}))
    with open(evil / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": _Payload()}, f, protocol=2)
    assert main(["convert", "--from-hf", str(evil), "--out", str(tmp_path / "a")]) == 2
    out, err = capsys.readouterr()
    assert "holds objects other than tensors" in err and "unpickled code ran" not in out + err
    ref = tmp_path / "gpt"
    hf_gpt(ref, GPT_SHAPES[0])
    state = load_file(ref / "model.safetensors")
    state.pop("transformer.ln_f.weight")
    save_file(state, ref / "model.safetensors")
    assert main(["convert", "--from-hf", str(ref), "--out", str(tmp_path / "b")]) == 2
    assert "lacks 'ln_f.weight'" in capsys.readouterr().err
    cfg = json.loads((ref / "config.json").read_text())
    cfg.pop("vocab_size")
    (ref / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", "--from-hf", str(ref), "--out", str(tmp_path / "c")]) == 2
    assert "lacks 'vocab_size'" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")


def test_a_gpt_with_the_exact_gelu_exports_as_gpt2(family_runs, tmp_path):
    """The shakespeare-char recipe's exact GELU is GPT-2's ``activation_function: gelu``: transformers reads
    the export and gives qkv's logits."""
    import qkv
    from qkv.interop import export_to_hf

    run = qkv.load(family_runs["gpt"])
    assert run.model.cfg.activation == "gelu"
    out = export_to_hf(family_runs["gpt"], tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu"
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, run.model.cfg.vocab_size, (2, 8))
    with torch.no_grad():
        assert (back(ids).logits - run.model(ids)).abs().max() < 1e-5


def test_a_gpt_whose_activation_gpt2_lacks_is_one_line(family_runs, tmp_path):
    import shutil

    from qkv.interop import export_to_hf

    run = tmp_path / "run"
    shutil.copytree(family_runs["gpt"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["activation"] = "swish"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QkvError, match="activation swish cannot be exported as GPT-2"):
        export_to_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
