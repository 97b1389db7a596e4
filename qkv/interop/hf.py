"""Hugging Face interop: GPT-2 and BERT checkpoints in (config.json + model.safetensors, or
pytorch_model.bin read with ``weights_only=True``), and out again, exactly.

Name maps (qkv ← Hugging Face), per layer i:

    GPT-2  h.i.ln_1 → blocks.layers.i.norm1      h.i.attn.c_attn (Conv1D, transposed) → self_attn.in_proj
           h.i.ln_2 → blocks.layers.i.norm3      h.i.attn.c_proj → self_attn.out_proj
           h.i.mlp.c_fc → ffn.w_1, h.i.mlp.c_proj → ffn.w_2, ln_f → blocks.norm, wte/wpe → embeddings
    BERT   attention.self.{query,key,value} → self_attn.in_proj (stacked), attention.output.dense →
           out_proj, attention.output.LayerNorm → norm1, intermediate.dense → ffn.w_1,
           output.dense → ffn.w_2, output.LayerNorm → norm3, embeddings.* → tok/positions/segment/embed_norm,
           cls.predictions.* → mlm_dense / mlm_norm / mlm_bias
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from qkv.attention import MultiHeadAttention
from qkv.checkpoint import load_weights
from qkv.config import typed_value
from qkv.errors import QkvError, shown
from qkv.models.bert import BERT, BERTConfig
from qkv.models.gpt import GPT, GPTConfig

__all__ = ["bert_from_hf", "bert_to_hf", "gpt_from_hf", "gpt_to_hf", "read_hf_config", "read_hf_dir"]

HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
TO_HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # what an exported config names


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """The config.json of a Hugging Face model directory, checked to be a JSON object."""
    d = Path(directory)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise QkvError(f"{d / 'config.json'} is missing: {d} is not a Hugging Face model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QkvError(f"{d / 'config.json'} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise QkvError(f"{d / 'config.json'} is not a Hugging Face config (a JSON object)")
    return config


def read_hf_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """config.json and the weights of a Hugging Face model directory."""
    d = Path(directory)
    config = read_hf_config(d)
    if (d / "model.safetensors").exists():
        try:
            state = load_file(d / "model.safetensors")
        except (SafetensorError, OSError, ValueError) as e:
            raise QkvError(f"{d / 'model.safetensors'} is corrupt ({shown(str(e), 200)})") from None
    elif (d / "pytorch_model.bin").exists():
        state = _load_pickled_tensors(d / "pytorch_model.bin")
    else:
        raise QkvError(f"{d} has no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    return config, state


def _load_pickled_tensors(path: Path) -> dict[str, Tensor]:
    """A pytorch_model.bin read with ``weights_only=True``: tensors only, never code; anything else is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        why = "holds objects other than tensors" if isinstance(e, pickle.UnpicklingError) else "cannot be read"
        raise QkvError(
            f"{path} {why}, so qkv refuses it (it loads weights only, never code); "
            "if you trust it, save it as model.safetensors with the library that made it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise QkvError(f"{path} is not a state dict of tensors")
    return state


def _complete(convert: Any) -> Any:
    """Turn a key missing from a checkpoint's config or tensors into one line naming it."""

    def wrapped(directory: str | Path) -> Any:
        try:
            return convert(directory)
        except KeyError as e:
            raise QkvError(f"{directory} lacks {shown(e.args[0])}: not a complete checkpoint of this kind") from None

    wrapped.__doc__, wrapped.__name__ = convert.__doc__, convert.__name__
    return wrapped


def _activation(config: dict[str, Any], key: str) -> str:
    act = hf_value(config, key, str, "gelu")
    if act not in HF_ACTIVATIONS:
        raise QkvError(f"activation {shown(act)} of this checkpoint is not supported ({', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[act]


REQUIRED = object()


def hf_value(config: dict[str, Any], key: str, kind: type, default: Any = REQUIRED) -> Any:
    """config.json's ``key`` as a ``kind`` (int, float, bool or str; a whole number is taken where a float is
    asked for), or ``default`` where it is absent or null; a value of another type is one line naming the
    key, and so is a required key that is null (a missing one is a KeyError, which :func:`_complete` names)."""
    value = config.get(key) if default is not REQUIRED else config[key]
    if value is None:
        if default is REQUIRED:
            raise QkvError(f"config.json's {key} is null; a checkpoint of this kind needs it")
        return default
    return typed_value(kind, value, f"config.json's {key}")


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove a leading ``prefix`` (e.g. 'transformer.' or 'bert.') where present."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def gpt_config_from_hf(config: dict[str, Any]) -> GPTConfig:
    """qkv's GPTConfig for a Hugging Face GPT-2 config."""
    if config.get("model_type", "gpt2") != "gpt2":
        raise QkvError(f"model_type '{config.get('model_type')}' is not GPT-2")
    if config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights", True):
        raise QkvError("GPT-2 checkpoints with non-standard attention scaling are not supported")
    return GPTConfig(
        vocab_size=hf_value(config, "vocab_size", int),
        max_len=hf_value(config, "n_positions", int, 1024),
        d_model=hf_value(config, "n_embd", int),
        h=hf_value(config, "n_head", int),
        N=hf_value(config, "n_layer", int),
        d_ff=hf_value(config, "n_inner", int, 0),
        dropout=0.0,
        activation=_activation(config, "activation_function"),
        eps=hf_value(config, "layer_norm_epsilon", float, 1e-5),
    )


# (qkv name, GPT-2 name without the "transformer." prefix, stored transposed by GPT-2's Conv1D)
GPT2_LAYER_NAMES = [
    ("norm1.weight", "ln_1.weight", False),
    ("norm1.bias", "ln_1.bias", False),
    ("self_attn.in_proj.weight", "attn.c_attn.weight", True),
    ("self_attn.in_proj.bias", "attn.c_attn.bias", False),
    ("self_attn.out_proj.weight", "attn.c_proj.weight", True),
    ("self_attn.out_proj.bias", "attn.c_proj.bias", False),
    ("norm3.weight", "ln_2.weight", False),
    ("norm3.bias", "ln_2.bias", False),
    ("ffn.w_1.weight", "mlp.c_fc.weight", True),
    ("ffn.w_1.bias", "mlp.c_fc.bias", False),
    ("ffn.w_2.weight", "mlp.c_proj.weight", True),
    ("ffn.w_2.bias", "mlp.c_proj.bias", False),
]


def gpt2_names(num_layers: int) -> list[tuple[str, str, bool]]:
    """Every (qkv name, GPT-2 name, transposed) of a GPT with ``num_layers`` layers."""
    names = [
        ("tok_embed.weight", "wte.weight", False),
        ("positions.embedding.weight", "wpe.weight", False),
        ("blocks.norm.weight", "ln_f.weight", False),
        ("blocks.norm.bias", "ln_f.bias", False),
    ]
    for i in range(num_layers):
        names += [(f"blocks.layers.{i}.{q}", f"h.{i}.{h}", t) for q, h, t in GPT2_LAYER_NAMES]
    return names


@_complete
def gpt_from_hf(directory: str | Path) -> GPT:
    """A qkv GPT holding a Hugging Face GPT-2 checkpoint."""
    config, state = read_hf_dir(directory)
    cfg = gpt_config_from_hf(config)
    s = _strip(state, "transformer.")
    ours = {q: (s[h].t() if t else s[h]).contiguous() for q, h, t in gpt2_names(cfg.N)}
    model = GPT(cfg)
    load_weights(model, ours, f"{directory} (GPT-2)")
    return model.eval()


def gpt_to_hf(model: GPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face GPT2LMHeadModel config and state dict for a qkv GPT."""
    cfg = model.cfg
    if cfg.activation not in TO_HF_ACTIVATIONS:
        known = ", ".join(TO_HF_ACTIVATIONS)
        raise QkvError(f"a GPT with activation {cfg.activation} cannot be exported as GPT-2 (it takes {known})")
    p = {k: v.detach() for k, v in model.state_dict().items()}
    s = {f"transformer.{h}": (p[q].t() if t else p[q]) for q, h, t in gpt2_names(cfg.N)}
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_ctx": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.N,
        "n_head": cfg.h,
        "n_inner": cfg.d_ff or None,
        "activation_function": TO_HF_ACTIVATIONS[cfg.activation],
        "layer_norm_epsilon": cfg.eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "tie_word_embeddings": True,
    }
    return config, {k: v.contiguous().clone() for k, v in s.items()}


def bert_config_from_hf(config: dict[str, Any], pooler: bool) -> BERTConfig:
    """qkv's BERTConfig for a Hugging Face BERT config."""
    if config.get("model_type", "bert") != "bert":
        raise QkvError(f"model_type '{config.get('model_type')}' is not BERT")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise QkvError("only absolute position embeddings are supported")
    return BERTConfig(
        vocab_size=hf_value(config, "vocab_size", int),
        max_len=hf_value(config, "max_position_embeddings", int, 512),
        type_vocab_size=hf_value(config, "type_vocab_size", int, 2),
        d_model=hf_value(config, "hidden_size", int),
        h=hf_value(config, "num_attention_heads", int),
        N=hf_value(config, "num_hidden_layers", int),
        d_ff=hf_value(config, "intermediate_size", int),
        dropout=hf_value(config, "hidden_dropout_prob", float, 0.1),
        attention_dropout=hf_value(config, "attention_probs_dropout_prob", float, 0.1),
        activation=_activation(config, "hidden_act"),
        eps=hf_value(config, "layer_norm_eps", float, 1e-12),
        pad_id=hf_value(config, "pad_token_id", int, 0),
        pooler=pooler,
    )


BERT_LAYER_NAMES = [  # (qkv name, Hugging Face name) inside layer i; Q, K, V are stacked separately
    ("self_attn.out_proj.weight", "attention.output.dense.weight"),
    ("self_attn.out_proj.bias", "attention.output.dense.bias"),
    ("norm1.weight", "attention.output.LayerNorm.weight"),
    ("norm1.bias", "attention.output.LayerNorm.bias"),
    ("ffn.w_1.weight", "intermediate.dense.weight"),
    ("ffn.w_1.bias", "intermediate.dense.bias"),
    ("ffn.w_2.weight", "output.dense.weight"),
    ("ffn.w_2.bias", "output.dense.bias"),
    ("norm3.weight", "output.LayerNorm.weight"),
    ("norm3.bias", "output.LayerNorm.bias"),
]
BERT_QKV = ("query", "key", "value")  # Hugging Face's names of W^Q, W^K, W^V inside attention.self
BERT_MLM_NAMES = [  # outside the "bert." prefix
    ("mlm_dense.weight", "cls.predictions.transform.dense.weight"),
    ("mlm_dense.bias", "cls.predictions.transform.dense.bias"),
    ("mlm_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("mlm_norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("mlm_bias", "cls.predictions.bias"),
]


def bert_names(num_layers: int, pooler: bool) -> list[tuple[str, str]]:
    """(qkv name, Hugging Face name without "bert.") of the embeddings, layers and pooler."""
    names = [
        ("tok_embed.weight", "embeddings.word_embeddings.weight"),
        ("positions.embedding.weight", "embeddings.position_embeddings.weight"),
        ("segment_embed.weight", "embeddings.token_type_embeddings.weight"),
        ("embed_norm.weight", "embeddings.LayerNorm.weight"),
        ("embed_norm.bias", "embeddings.LayerNorm.bias"),
    ]
    for i in range(num_layers):
        names += [(f"encoder.layers.{i}.{q}", f"encoder.layer.{i}.{h}") for q, h in BERT_LAYER_NAMES]
    if pooler:
        names += [("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias")]
    return names


@_complete
def bert_from_hf(directory: str | Path) -> BERT:
    """A qkv BERT holding a Hugging Face BERT checkpoint (BertModel or BertForMaskedLM)."""
    config, state = read_hf_dir(directory)
    s = _strip(state, "bert.")
    cfg = bert_config_from_hf(config, pooler="pooler.dense.weight" in s)
    ours = {q: s[h] for q, h in bert_names(cfg.N, cfg.pooler)}
    for i in range(cfg.N):
        a = f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):  # W^Q, W^K, W^V stacked into the fused projection
            parts = (s[f"{a}{n}.{kind}"] for n in BERT_QKV)
            ours[f"encoder.layers.{i}.self_attn.in_proj.{kind}"] = MultiHeadAttention.merge_in_proj(*parts)
    model = BERT(cfg)
    if BERT_MLM_NAMES[0][1] in s:
        ours |= {q: s[h] for q, h in BERT_MLM_NAMES}
    else:  # an encoder-only checkpoint (e.g. a sentence-transformers model): keep the fresh MLM head
        ours |= {q: v for q, v in model.state_dict().items() if q.startswith("mlm_")}
    load_weights(model, {k: v.contiguous() for k, v in ours.items()}, f"{directory} (BERT)")
    return model.eval()


def bert_to_hf(model: BERT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face BertForMaskedLM config and state dict for a qkv BERT."""
    cfg = model.cfg
    p = {k: v.detach() for k, v in model.state_dict().items()}
    d = cfg.d_model
    s = {f"bert.{h}": p[q] for q, h in bert_names(cfg.N, cfg.pooler)} | {h: p[q] for q, h in BERT_MLM_NAMES}
    for i in range(cfg.N):
        for kind in ("weight", "bias"):
            parts = MultiHeadAttention.split_in_proj(p[f"encoder.layers.{i}.self_attn.in_proj.{kind}"])
            for n, part in zip(BERT_QKV, parts, strict=True):
                s[f"bert.encoder.layer.{i}.attention.self.{n}.{kind}"] = part
    activation = TO_HF_ACTIVATIONS[cfg.activation]
    config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": d,
        "num_hidden_layers": cfg.N,
        "num_attention_heads": cfg.h,
        "intermediate_size": cfg.d_ff,
        "hidden_act": activation,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.eps,
        "pad_token_id": cfg.pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    return config, {k: v.contiguous().clone() for k, v in s.items()}
