"""Run directories from Hugging Face checkpoints, and back: ``qkv convert --from-hf`` and
``qkv export --to-hf``.

A converted run is a complete qkv run (config.json, model.safetensors, tokenizer.json), so every verb
works on it; an export writes config.json, model.safetensors and tokenizer.json in Hugging Face's
layout. Nothing is written unless all of it can be: an existing directory is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from qkv.checkpoint import atomic_write_json, new_directory, weights_to_save
from qkv.data.bpe import SubwordTokenizer
from qkv.data.lm import TextConfig
from qkv.data.spm import SentencePieceTokenizer
from qkv.data.tasks import TaskConfig
from qkv.data.vocab import Vocab
from qkv.decode import DecodeConfig
from qkv.errors import QkvError, shown
from qkv.interop.hf import bert_from_hf, bert_to_hf, gpt_from_hf, gpt_to_hf, read_hf_config
from qkv.interop.marian import marian_from_hf, marian_to_hf, marian_tokenizers
from qkv.recipes import RunConfig, TrainConfig

__all__ = ["convert_from_hf", "export_to_hf"]


def convert_from_hf(directory: str | Path, out: str | Path) -> Path:
    """Make a qkv run directory ``out`` of a Hugging Face GPT-2 or BERT directory."""
    src, out = Path(directory), Path(out)
    model_type = read_hf_config(src).get("model_type")
    if model_type == "marian":
        return _convert_marian(src, out)
    if model_type == "gpt2":
        family, model = "gpt", gpt_from_hf(src)
    elif model_type == "bert":
        family, model = "bert", bert_from_hf(src)
    else:
        raise QkvError(
            f"model_type {shown(model_type)} cannot be converted: qkv reads GPT-2 ('gpt2'), BERT ('bert') "
            "and Marian ('marian')"
        )
    tokenizer = SubwordTokenizer.from_hf_dir(src, family)
    max_seq = 0
    st_config = src / "sentence_bert_config.json"
    if st_config.exists():  # sentence-transformers truncates to its own max_seq_length
        max_seq = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", 0) or 0)
    cfg = RunConfig(
        model=model.cfg,
        train=TrainConfig(label_smoothing=0.0, weight_decay=0.01, lr=1e-4, schedule="constant", warmup=0),
        task=TextConfig(tokenizer="pretrained", max_seq_len=max_seq),
    )
    with new_directory(out) as tmp:
        atomic_write_json(tmp / "config.json", {**cfg.to_dict(), "converted_from": str(src.resolve())})
        save_file(weights_to_save(model), tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(tmp / "tokenizer.json")
    return out


def _convert_marian(src: Path, out: Path) -> Path:
    """A translation run of a Marian directory: the Transformer, both SentencePiece tokenizers, and the way
    its generation_config.json decodes (beam width, transformers' length penalty, early stopping), so that the run
    translates as transformers' ``generate`` does."""
    model = marian_from_hf(src)
    src_tok, tgt_tok = marian_tokenizers(src)
    gen: dict[str, Any] = {}
    if (src / "generation_config.json").exists():
        gen = json.loads((src / "generation_config.json").read_text(encoding="utf-8"))
    beam, alpha = int(gen.get("num_beams") or 4), float(gen.get("length_penalty", 1.0))
    early = gen.get("early_stopping", False)
    if early not in (True, False):
        raise QkvError(
            f"generation_config.json's early_stopping={early!r} is not a rule qkv decodes with (it has false: "
            "transformers' heuristic, and true): set one of them in a copy of the directory"
        )
    cfg = RunConfig(
        model=model.cfg,
        train=TrainConfig(lr=5e-5, schedule="constant", warmup=0, max_tokens=4096),
        task=TaskConfig(name="parallel", max_len=model.cfg.max_len - 2),
        decode=DecodeConfig(
            beam=min(beam, 64), alpha=alpha, max_len_a=1.0, max_len_b=50, penalty="transformers", early_stopping=early
        ),
    )
    with new_directory(out) as tmp:
        atomic_write_json(tmp / "config.json", {**cfg.to_dict(), "converted_from": str(src.resolve())})
        save_file(weights_to_save(model), tmp / "model.safetensors", metadata={"format": "pt"})
        src_tok.save(tmp / "src_tokenizer.json")
        tgt_tok.save(tmp / "tgt_tokenizer.json")
    return out


def _hf_tokenizer_json(tokenizer: Vocab | SubwordTokenizer) -> str:
    """Hugging Face tokenizer.json text for a run's tokenizer (a character vocabulary becomes a
    WordLevel model over single characters)."""
    if isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.tokenizer.to_str(pretty=True)
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(tokenizer.itos)}, unk_token="<unk>"))
    pattern = r"\S" if tokenizer.level == "char" else r"[\s\S]"
    if tokenizer.level == "word":
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tok.decoder = decoders.Fuse()
    return tok.to_str(pretty=True)


def export_to_hf(run_dir: str | Path, out: str | Path) -> Path:
    """Write a run as a Hugging Face directory: GPT2LMHeadModel, BertForMaskedLM, or for a Transformer
    translation run MarianMTModel (with Marian's SentencePiece files when the run has them, else a
    tokenizer.json that appends </s> as Marian expects)."""
    from qkv.api import load

    run = load(run_dir, device="cpu")
    out = Path(out)
    family = run.config.family
    if family == "transformer":
        return _export_marian(run, out)
    if family == "gpt":
        config, state = gpt_to_hf(run.model)
    elif family == "bert":
        config, state = bert_to_hf(run.model)
    else:
        raise QkvError(f"a {family} run cannot be exported to Hugging Face (GPT, BERT and Transformer runs can)")
    tok = run.tokenizer
    for role in ("bos", "eos", "pad"):
        tid = getattr(tok, f"{role}_id", None)
        if tid is not None:
            config[f"{role}_token_id"] = tid
    with new_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(_hf_tokenizer_json(tok), encoding="utf-8")
    return out


def _export_marian(run: Any, out: Path) -> Path:
    """A translation run as a MarianMTModel directory."""
    config, state = marian_to_hf(run.model)
    src, tgt = run.src_tokenizer, run.tgt_tokenizer
    config |= {"eos_token_id": tgt.eos_id, "decoder_start_token_id": tgt.bos_id, "bos_token_id": None}
    files: dict[str, bytes] = {}
    if isinstance(src, SentencePieceTokenizer) and isinstance(tgt, SentencePieceTokenizer):
        separate = src.vocab != tgt.vocab
        files = {"source.spm": src.model, "target.spm": tgt.model, "vocab.json": _json_bytes(src.vocab)}
        if separate:
            files["target_vocab.json"] = _json_bytes(tgt.vocab)
        files["tokenizer_config.json"] = _json_bytes(
            {"tokenizer_class": "MarianTokenizer", "separate_vocabs": separate}
        )
    elif src.to_dict() == tgt.to_dict():
        files = {"tokenizer.json": _with_eos(_hf_tokenizer_json(tgt), tgt).encode("utf-8")}
        specials = {f"{r}_token": tgt.id_to_token(getattr(tgt, f"{r}_id")) for r in ("pad", "eos", "unk")}
        files["tokenizer_config.json"] = _json_bytes({"tokenizer_class": "PreTrainedTokenizerFast", **specials})
    else:
        raise QkvError(
            "this run has separate source and target vocabularies; transformers keeps one tokenizer per "
            "directory, so it exports only with Marian's SentencePiece tokenizers (a run converted from Marian)"
        )
    with new_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(_generation(run, config), indent=2), encoding="utf-8")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")


def _with_eos(tokenizer_json: str, tok: Any) -> str:
    """tokenizer.json text whose encodings end in the run's </s> (Marian's inputs do)."""
    data = json.loads(tokenizer_json)
    eos = tok.id_to_token(tok.eos_id)
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {eos: {"id": eos, "ids": [tok.eos_id], "tokens": [eos]}},
    }
    return json.dumps(data, ensure_ascii=False)


def _generation(run: Any, config: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json: the run's beam width and stopping rule; the ids transformers needs to decode."""
    return {
        "num_beams": run.config.decode.beam,
        "early_stopping": run.config.decode.early_stopping,
        "max_length": run.model.cfg.max_len,
        "decoder_start_token_id": config["decoder_start_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
