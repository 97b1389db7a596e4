"""Marian (opus-mt) in: randomly initialised MarianMTModels of two odd shapes, with SentencePiece models
trained on the fly, convert to qkv runs whose encoder outputs and logits match transformers' to 1e-4,
whose greedy tokens equal ``generate(num_beams=1)``, and whose tokenizers give MarianTokenizer's ids and
texts. No downloads."""

from __future__ import annotations

import json

import pytest
import torch
from marian_dirs import SHAPES, make_marian_dir, sentences  # tests/marian_dirs.py

import qkv
from qkv.cli import main
from qkv.decode import beam_search, greedy
from qkv.errors import QkvError
from qkv.interop import convert_from_hf

pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=list(SHAPES))
def marian_dir(request, tmp_path_factory):
    """A MarianMTModel directory of one of the two odd shapes."""
    return make_marian_dir(tmp_path_factory.mktemp("marian") / request.param, request.param)


@pytest.fixture(scope="module")
def converted(marian_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "marian"
    convert_from_hf(marian_dir, run)
    return qkv.load(run, device="cpu")


def hf_pair(marian_dir):
    model = transformers.MarianMTModel.from_pretrained(marian_dir).eval()
    return model, transformers.MarianTokenizer.from_pretrained(marian_dir)


def test_token_ids_and_texts_equal_marian_tokenizers(marian_dir, converted):
    _, tok = hf_pair(marian_dir)
    texts = sentences(100, 2)
    assert [converted.src_tokenizer.encode(t) + [0] for t in texts] == [tok(t)["input_ids"] for t in texts]
    targets = tok(text_target=texts)["input_ids"]
    assert [converted.tgt_tokenizer.encode(t) + [0] for t in texts] == targets
    assert [converted.tgt_tokenizer.decode(ids) for ids in targets] == tok.batch_decode(
        targets, skip_special_tokens=True
    )


def test_a_lone_surrogate_is_one_line_for_sentencepiece(converted):
    """sentencepiece's binding failed to cast such a text (a RuntimeError): now one QkvError."""
    with pytest.raises(QkvError, match="a lone surrogate"):
        converted.translate(["ein \udcff hund"])


def test_encoder_outputs_and_logits_equal_transformers(marian_dir, converted):
    model, tok = hf_pair(marian_dir)
    texts = sentences(16, 3)[:16]
    enc = tok(texts, return_tensors="pt", padding=True)
    src = converted.encode_source(texts)
    assert torch.equal(src, enc["input_ids"])
    g = torch.Generator().manual_seed(0)
    tgt = torch.randint(2, model.config.decoder_vocab_size - 1, (len(texts), 7), generator=g)
    tgt[:, 0] = model.config.decoder_start_token_id
    with torch.no_grad():
        memory, _, _ = converted.model.encode(src)
        mask = enc["attention_mask"].bool()[..., None]
        hf_memory = model.model.encoder(**enc).last_hidden_state
        assert (memory - hf_memory).masked_select(mask).abs().max() < 1e-4
        logits = converted.model(src, tgt)
        assert (logits - model(**enc, decoder_input_ids=tgt).logits).abs().max() < 1e-4


def test_greedy_tokens_equal_generate(marian_dir, converted):
    model, tok = hf_pair(marian_dir)
    texts = sentences(24, 4)[:24]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=20)
    theirs = [[t for t in row[1:].tolist() if t != model.config.pad_token_id] for row in out]
    tgt_tok = converted.tgt_tokenizer
    hyps = greedy(
        converted.model, converted.encode_source(texts), bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id, max_len=20
    )
    assert [h.tokens for h in hyps] == theirs
    assert len({tuple(t) for t in theirs}) > 3  # varied outputs, not one repeated string
    assert converted.translate(texts, beam=1, max_len=20) == tok.batch_decode(out, skip_special_tokens=True)


def test_the_converted_run_works_with_every_translation_verb(marian_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["convert", "--from-hf", str(marian_dir), "--out", str(run)]) == 0
    assert main(["translate", str(run), "Ein Hund läuft.", "--beam", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "Ein Hund läuft."
    maps = qkv.load(run).attention("Ein Hund läuft im Park.")
    assert maps.source[-1] == "</s>" or len(maps.source) > 3
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert (cfg["activation"], cfg["position_layout"], cfg["logits_bias"]) in {
        ("swish", "halves", True),
        ("gelu", "halves", True),
    }


def test_what_qkv_cannot_express_is_one_line(marian_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(marian_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "scale_embedding": False}))
    with pytest.raises(QkvError, match="scale_embedding=false"):
        convert_from_hf(bad, tmp_path / "out")
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "source.spm").unlink()
    with pytest.raises(QkvError, match="source.spm is missing"):
        convert_from_hf(bad, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_export_then_import_gives_back_the_marian_model(marian_dir, converted, tmp_path):
    """qkv convert then qkv export writes the same weights, and MarianTokenizer reads the files back."""
    from safetensors.torch import load_file

    out = tmp_path / "exported"
    assert main(["export", str(converted.path), "--out", str(out)]) == 0
    original, exported = load_file(marian_dir / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in original.items():
        if name in exported:
            assert torch.equal(tensor, exported[name]), name
    model = transformers.MarianMTModel.from_pretrained(out).eval()
    tok = transformers.MarianTokenizer.from_pretrained(out)
    texts = sentences(20, 5)[:20]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], converted.encode_source(texts))
    with torch.no_grad():
        out_ids = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=16)
    assert tok.batch_decode(out_ids, skip_special_tokens=True) == converted.translate(texts, beam=1, max_len=16)


@pytest.fixture(scope="module")
def qkv_run(tmp_path_factory):
    """A translation run trained by qkv on parallel text (BPE, interleaved positions, relu)."""
    from qkv.recipes import recipe
    from qkv.train import train

    root = tmp_path_factory.mktemp("qkvrun")
    src = sentences(400, 11)
    (root / "train.tsv").write_text("".join(f"{s}\t{' '.join(s.split()[::-1])}\n" for s in src if s))
    (root / "valid.tsv").write_text("".join(f"{s}\t{' '.join(s.split()[::-1])}\n" for s in sentences(20, 12) if s))
    cfg = recipe("multi30k").with_data("'multi30k'", train=[root / "train.tsv"], valid=[root / "valid.tsv"])
    tiny = ["d_model=32", "h=4", "N=2", "d_ff=48", "steps=40", "max_tokens=600", "warmup=10", "eval_every=40"]
    overrides = [*tiny, "vocab_size=200", "model.max_len=64", "task.max_len=40"]
    train(cfg, root / "run", overrides=overrides, progress=False, log=lambda m: None)
    return root / "run"


def test_a_run_qkv_trained_translates_the_same_in_transformers(qkv_run, tmp_path):
    """qkv run -> export -> transformers: the same greedy translations of 50 sentences (the interleaved
    sinusoid table becomes Marian's halves by a permutation of the model's coordinates)."""
    out = tmp_path / "hf"
    assert main(["export", str(qkv_run), "--out", str(out)]) == 0
    run = qkv.load(qkv_run, device="cpu")
    assert run.config.model.position_layout == "interleaved"
    model = transformers.MarianMTModel.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = [t for t in sentences(60, 13) if t][:50]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], run.encode_source(texts))
    with torch.no_grad():
        ids = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=30)
        assert (
            model(**enc, decoder_input_ids=ids[:, :5]).logits - run.model(enc["input_ids"], ids[:, :5])
        ).abs().max() < 1e-4
    assert tok.batch_decode(ids, skip_special_tokens=True) == run.translate(texts, beam=1, max_len=30)


REFUSED = [("norm_first", "model.norm_first=true"), ("attention", "model.attention=dot")]


@pytest.mark.parametrize(("option", "message"), REFUSED)
def test_an_option_marian_cannot_express_is_refused(option, message):
    from qkv.interop.marian import marian_to_hf
    from qkv.models import TransformerConfig, build_transformer

    value = {"norm_first": True, "attention": "dot"}[option]
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=8, h=2, N=1, **{option: value})
    with pytest.raises(QkvError, match=f"cannot be a Marian model: {message}"):
        marian_to_hf(build_transformer(cfg))


def test_fine_tuning_starts_from_the_converted_run(converted, tmp_path, capsys):
    """qkv train PRESET --init RUN: the new run has RUN's tokenizers and model section, and its weights
    start as RUN's (with a learning rate of ~0 they stay so); a model override beside --init is refused."""
    pairs = [(s, s.lower()) for s in sentences(60, 21) if s]
    (tmp_path / "train.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    out = tmp_path / "tuned"
    argv = ["train", "multi30k", "--train", str(tmp_path / "train.tsv"), "--valid", str(tmp_path / "train.tsv")]
    argv += ["--init", str(converted.path), "steps=2", "lr=1e-12", "schedule=constant", "warmup=0", "max_tokens=300"]
    argv += ["eval_every=2", "task.max_len=40", "--out", str(out), "--json", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    tuned = qkv.load(out, device="cpu")
    assert tuned.config.model == converted.config.model and tuned.config.train.init == str(converted.path.resolve())
    assert (out / "tgt_tokenizer.json").read_text() == (converted.path / "tgt_tokenizer.json").read_text()
    a, b = tuned.model.state_dict(), converted.model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert main([*argv[:-4], "d_model=64", "--out", str(tmp_path / "no")]) == 2
    assert "--init" in capsys.readouterr().err and not (tmp_path / "no").exists()


def ct2_translate(model_dir, run, texts: list[str], beam: int, max_len: int) -> list[str]:
    """CTranslate2's translations of ``texts`` with the run's tokenizers (source pieces + </s> in)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    st, tt = run.src_tokenizer, run.tgt_tokenizer
    pieces = [[st.id_to_token(i) for i in st.encode(t)] + [st.id_to_token(st.eos_id)] for t in texts]
    translator = ctranslate2.Translator(str(model_dir), device="cpu", intra_threads=1)
    results = translator.translate_batch(pieces, beam_size=beam, max_decoding_length=max_len, min_decoding_length=0)
    return [tt.decode([tt.token_id(p) for p in r.hypotheses[0]]) for r in results]


@pytest.mark.parametrize("which", ["trained by qkv", "converted from Marian"])
def test_ctranslate2_translates_as_qkv_does(which, qkv_run, converted, tmp_path):
    """qkv export --format ct2 -> CTranslate2's Translator: the same greedy translations of 50 sentences,
    for a run qkv trained (interleaved positions, relu) and one converted from Marian (halves, bias, swish
    or gelu)."""
    pytest.importorskip("ctranslate2")
    path = qkv_run if which == "trained by qkv" else converted.path
    out = tmp_path / "ct2"
    assert main(["export", str(path), "--format", "ct2", "--out", str(out)]) == 0
    run = qkv.load(path, device="cpu")
    texts = [t for t in sentences(60, 31) if t][:50]
    assert ct2_translate(out, run, texts, beam=1, max_len=20) == run.translate(texts, beam=1, max_len=20)


@pytest.mark.parametrize(
    ("beam", "alpha", "early"), [(4, 1.0, False), (3, 0.6, False), (5, 0.0, False), (4, 1.0, True)]
)
def test_beam_search_with_transformers_penalty_equals_generate(marian_dir, converted, beam, alpha, early):
    """penalty="transformers" ranks by log p / |Y|^α and stops by transformers' heuristic (or, with
    early_stopping, at K ended hypotheses): the same best hypotheses as ``generate(num_beams=K,
    length_penalty=α, early_stopping=…)`` on 40 sentences (some ending on </s>, some at the length limit).
    qkv's default, GNMT's ((5 + |Y|) / 6)^α with an exact stopping bound, differs."""
    model, tok = hf_pair(marian_dir)
    texts = [t for t in sentences(40, 9) if t][:40]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, num_beams=beam, length_penalty=alpha, early_stopping=early, do_sample=False, max_new_tokens=30
        )
    theirs = [[t for t in row[1:].tolist() if t != model.config.pad_token_id] for row in out]
    tt = converted.tgt_tokenizer
    ids = {"bos_id": tt.bos_id, "eos_id": tt.eos_id, "max_len": 30}
    src = converted.encode_source(texts)
    ours = beam_search(
        converted.model, src, beam=beam, alpha=alpha, penalty="transformers", early_stopping=early, **ids
    )
    assert [h[0].tokens for h in ours] == theirs
    assert 0 < sum(t[-1] == tt.eos_id for t in theirs) < len(theirs)  # both ways of ending are covered


def test_the_stopping_rule_of_generation_config_converts_and_exports(marian_dir, tmp_path):
    import shutil

    src = tmp_path / "marian"
    shutil.copytree(marian_dir, src)
    gen = {"num_beams": 3, "length_penalty": 0.6, "early_stopping": True}
    (src / "generation_config.json").write_text(json.dumps(gen))
    convert_from_hf(src, tmp_path / "run")
    d = qkv.load(tmp_path / "run").config.decode
    assert (d.beam, d.alpha, d.penalty, d.early_stopping) == (3, 0.6, "transformers", True)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    exported = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (exported["num_beams"], exported["early_stopping"]) == (3, True)
    (src / "generation_config.json").write_text(json.dumps({**gen, "early_stopping": "never"}))
    with pytest.raises(QkvError, match="early_stopping='never' is not a rule qkv decodes with"):
        convert_from_hf(src, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_a_converted_run_decodes_as_generate_by_default(marian_dir, converted):
    model, tok = hf_pair(marian_dir)
    assert (converted.config.decode.penalty, converted.config.decode.alpha) == ("transformers", 1.0)
    texts = [t for t in sentences(20, 10) if t][:20]
    with torch.no_grad():
        out = model.generate(**tok(texts, return_tensors="pt", padding=True), num_beams=4, max_new_tokens=30)
    assert converted.translate(texts, beam=4, max_len=30) == tok.batch_decode(out, skip_special_tokens=True)


def test_a_converted_run_goes_through_ctranslate2s_own_converter(converted, tmp_path):
    """For a run converted from Marian (Marian's conventions: pad last, decoder started from pad's zero
    embedding) the documented path works too: qkv export -> ct2-transformers-converter -> Translator."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    if converted.src_tokenizer.vocab != converted.tgt_tokenizer.vocab:
        pytest.skip(
            "CTranslate2's transformers converter gives both sides the source vocabulary (qkv's writer does not)"
        )
    hf, ct2 = tmp_path / "hf", tmp_path / "ct2"
    assert main(["export", str(converted.path), "--out", str(hf)]) == 0
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2))
    texts = [t for t in sentences(60, 32) if t][:50]
    assert ct2_translate(ct2, converted, texts, beam=1, max_len=20) == converted.translate(texts, beam=1, max_len=20)
