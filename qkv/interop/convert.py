"""Run directories from Hugging Face checkpoints, and back: ``qkv convert --from-hf`` and
``qkv export --to-hf``.

A converted run is a complete qkv run (config.json, model.safetensors, tokenizer.json), so every verb
works on it; an export writes config.json, model.safetensors and tokenizer.json in Hugging Face's
layout. Nothing is written unless all of it can be: an existing directory is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from qkv.checkpoint import atomic_write_json, new_directory, weights_to_save
from qkv.data.bpe import SubwordTokenizer
from qkv.data.lm import TextConfig
from qkv.data.vocab import Vocab
from qkv.errors import QkvError, shown
from qkv.interop.hf import bert_from_hf, bert_to_hf, gpt_from_hf, gpt_to_hf, read_hf_config
from qkv.recipes import RunConfig, TrainConfig

__all__ = ["convert_from_hf", "export_to_hf"]


def convert_from_hf(directory: str | Path, out: str | Path) -> Path:
    """Make a qkv run directory ``out`` of a Hugging Face GPT-2 or BERT directory."""
    src, out = Path(directory), Path(out)
    model_type = read_hf_config(src).get("model_type")
    if model_type == "gpt2":
        family, model = "gpt", gpt_from_hf(src)
    elif model_type == "bert":
        family, model = "bert", bert_from_hf(src)
    else:
        raise QkvError(
            f"model_type {shown(model_type)} cannot be converted: qkv reads GPT-2 ('gpt2') and BERT ('bert')"
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
    """Write a GPT or BERT run as a Hugging Face directory (GPT2LMHeadModel / BertForMaskedLM)."""
    from qkv.api import load

    run = load(run_dir)
    out = Path(out)
    family = run.config.family
    if family == "gpt":
        config, state = gpt_to_hf(run.model)
    elif family == "bert":
        config, state = bert_to_hf(run.model)
    else:
        raise QkvError("only GPT and BERT runs can be exported to Hugging Face (encoder-decoder runs cannot)")
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
