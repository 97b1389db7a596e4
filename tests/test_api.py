"""The Python API over every family: ``qkv.load`` returns the registered run class, runs written before
the family rename still load, and every inference verb makes its tensors on the model's device."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import qkv
from qkv.devices import DTYPES
from qkv.families import FAMILIES, TRANSLATION_FAMILIES, family_named, family_of
from qkv.linear import Linear, set_packing
from qkv.recipes import RunConfig


@pytest.fixture(scope="module")
def runs(family_runs):
    """One tiny run of every family (tests/conftest.py)."""
    return family_runs


def use(run):
    """Every inference verb of a run, with results as plain data."""
    if run.config.spec.translation:
        out = [run.translate(["a b c", "c a"], beam=b) for b in (1, 3)]
        out.append(run.evaluate("test", beam=2)["token_accuracy"])
        maps = run.attention("a b")  # every family's maps, with the page's statistics
        out += [maps.to_dict(), maps.to_page()["stats"]]
        return out
    maps = run.attention("To be")
    out = [run.evaluate()["loss"], maps.to_dict(), maps.to_page()["stats"]]
    if run.config.family == "gpt":
        out.append(run.generate(["To be", "W"], max_new_tokens=6, seed=1))
        out.append(run.generate("To", max_new_tokens=4, temperature=0))
    else:
        out.append(run.embed(["To be", "or not to be"]).tolist())
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_load_returns_the_registered_run_class(runs, family):
    run = qkv.load(runs[family])
    assert type(run) is FAMILIES[family].run and run.config.family == family
    assert json.loads((runs[family] / "config.json").read_text())["family"] == family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inference_makes_no_tensor_on_the_default_device(runs, family):
    """With the default device set to 'meta', any tensor made without naming a device has no data and
    fails; the verbs must give the same results as before, so every tensor follows the model's device."""
    run = qkv.load(runs[family])
    expected = use(run)
    with torch.device("meta"):
        got = use(run)
    assert got == expected


def _on_cpu_unpacked(path, precision="fp32"):
    """The run on the CPU with the packed fast path off: the kernels a GPU run's arithmetic meets here."""
    run = qkv.load(path, device="cpu", precision=precision)
    set_packing(run.model, False)
    return run


@pytest.mark.filterwarnings("ignore:PyTorch was compiled without cuDNN")  # the GRU asks, on the simulated GPU
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_verb_runs_on_a_gpu(runs, family, precision, fake_cuda):
    """On a simulated GPU (tests/conftest.py: a tensor made on the CPU meets one on cuda and raises) every
    verb — greedy and beam translation, evaluation, attention maps, sampling, embeddings — runs, in fp32
    and in bf16 weights, and gives what the same kernels give on the CPU."""
    expected = use(_on_cpu_unpacked(runs[family], precision))
    run = qkv.load(runs[family], device="cuda", precision=precision)
    assert {(p.device.type, p.dtype) for p in run.model.parameters()} == {("cuda", DTYPES[precision])}
    assert run.device.type == "cuda"
    assert all(m._packed is None for m in run.model.modules() if isinstance(m, Linear))
    assert use(run) == expected


def test_a_tensor_made_on_the_cpu_fails_the_gpu_test(runs, fake_cuda, monkeypatch):
    """The simulated GPU catches a verb that makes one tensor on the CPU (here: the source padding mask)."""
    from qkv.models import transformer

    real = transformer.padding_mask
    monkeypatch.setattr(transformer, "padding_mask", lambda tokens, pad: real(tokens.cpu(), pad))
    run = qkv.load(runs["transformer"], device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        run.translate(["a b c"])


def test_a_run_from_before_the_rename_still_loads(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs["transformer"], old)
    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**cfg, "family": "seq2seq"}))
    a, b = qkv.load(runs["transformer"]), qkv.load(old)
    assert b.config.family == "transformer" and type(b) is type(a)
    assert b.translate(["a b c", "b b"], beam=2) == a.translate(["a b c", "b b"], beam=2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_registry_is_the_one_source(family):
    spec = FAMILIES[family]
    assert family_named(family) is spec and family_of(spec.config()) is spec
    assert spec.translation == (family in TRANSLATION_FAMILIES)
    assert all(family_named(alias) is spec for alias in spec.aliases)
    cfg = RunConfig(model=spec.config(), task=spec.task())
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.family == family


def test_public_model_names():
    from qkv.models import BERT, GPT, ConvS2S, RNNSeq2Seq, Transformer

    assert {m.__name__ for m in (Transformer, GPT, BERT, RNNSeq2Seq, ConvS2S)} == {
        "Transformer",
        "GPT",
        "BERT",
        "RNNSeq2Seq",
        "ConvS2S",
    }
    assert callable(GPT.from_hf) and callable(BERT.from_hf)


def test_translate_decodes_decode_rows_over_the_beam_width_sentences_at_a_time(tiny_run, monkeypatch):
    import qkv.families.translation as translation

    run = qkv.load(tiny_run)
    sizes: list[int] = []
    decode = translation.translate_batch
    monkeypatch.setattr(translation, "DECODE_ROWS", 40)

    def counting(model, src, *args, **kwargs):
        sizes.append(len(src))
        return decode(model, src, *args, **kwargs)

    monkeypatch.setattr(translation, "translate_batch", counting)
    texts = ["abc", "hello", "xyz"] * 20  # 60 sentences
    run.translate(texts, beam=1)
    assert sizes == [40, 20]
    sizes.clear()
    run.translate(texts, beam=4)  # 40 rows: 10 sentences of 4 beams
    assert sizes == [10] * 6
    sizes.clear()
    run.translate(texts, beam=4, batch_size=25)  # a size given is kept
    assert sizes == [25, 25, 10]
    with pytest.raises(qkv.errors.QkvError, match="batch size must be >= 1"):
        run.translate(texts, batch_size=0)  # not taken for "the default"


def test_teacher_forced_metrics_made_a_block_of_positions_at_a_time_equal_the_whole_logits(tiny_run, monkeypatch):
    import torch.nn.functional as F

    import qkv.families.translation as translation
    from qkv.data import encode_pairs, get_task

    run = qkv.load(tiny_run)
    pairs = get_task(run.config.task).split("test")[:16]
    b = encode_pairs(pairs, run.src_tokenizer, run.tgt_tokenizer, torch.device("cpu"))
    pad = run.tgt_tokenizer.pad_id
    with torch.no_grad():
        logits = run.model(b.src, b.tgt_in)  # (B, T, V): the whole block at once
    want_nll = float(F.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=pad, reduction="sum"))
    real = b.tgt_out != pad
    want = (want_nll, int(((logits.argmax(-1) == b.tgt_out) & real).sum()), int(real.sum()))
    monkeypatch.setattr(translation, "EVAL_LOGITS", 7 * logits.size(-1))  # blocks of 7 positions
    nll, correct, tokens = translation.teacher_forced(run.model, b.src, b.tgt_in, b.tgt_out, pad)
    assert b.tgt_out.numel() > 7 * 3 and (correct, tokens) == want[1:]
    assert abs(nll - want[0]) < 1e-4 * want[0]
