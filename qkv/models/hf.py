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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from qkv.checkpoint import load_weights
from qkv.errors import QkvError
from qkv.models.bert import BERT, BERTConfig
from qkv.models.gpt import GPT, GPTConfig

__all__ = ["bert_from_hf", "bert_to_hf", "gpt_from_hf", "gpt_to_hf", "read_hf_dir"]

HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def read_hf_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """config.json and the weights of a Hugging Face model directory."""
    d = Path(directory)
    if not d.is_dir():
        raise QkvError(f"{d} is not a directory; give a Hugging Face model directory")
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"{d / 'config.json'} is missing: not a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise QkvError(f"{d / 'config.json'} is not valid JSON ({e})") from None
    if (d / "model.safetensors").exists():
        state = load_file(d / "model.safetensors")
    elif (d / "pytorch_model.bin").exists():
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise QkvError(f"{d} has no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    return config, state


def _activation(config: dict[str, Any], key: str) -> str:
    act = config.get(key, "gelu")
    if act not in HF_ACTIVATIONS:
        raise QkvError(f"activation '{act}' of this checkpoint is not supported ({', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[act]


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
        vocab_size=config["vocab_size"],
        max_len=config.get("n_positions", 1024),
        d_model=config["n_embd"],
        h=config["n_head"],
        N=config["n_layer"],
        d_ff=config.get("n_inner") or 0,
        dropout=0.0,
        activation=_activation(config, "activation_function"),
        eps=config.get("layer_norm_epsilon", 1e-5),
    )


def gpt_from_hf(directory: str | Path) -> GPT:
    """A qkv GPT holding a Hugging Face GPT-2 checkpoint."""
    config, state = read_hf_dir(directory)
    cfg = gpt_config_from_hf(config)
    s = _strip(state, "transformer.")
    ours: dict[str, Tensor] = {"tok_embed.weight": s["wte.weight"], "positions.embedding.weight": s["wpe.weight"]}
    for i in range(cfg.N):
        h, q = f"h.{i}.", f"blocks.layers.{i}."
        ours |= {
            q + "norm1.weight": s[h + "ln_1.weight"],
            q + "norm1.bias": s[h + "ln_1.bias"],
            q + "self_attn.in_proj.weight": s[h + "attn.c_attn.weight"].t(),
            q + "self_attn.in_proj.bias": s[h + "attn.c_attn.bias"],
            q + "self_attn.out_proj.weight": s[h + "attn.c_proj.weight"].t(),
            q + "self_attn.out_proj.bias": s[h + "attn.c_proj.bias"],
            q + "norm3.weight": s[h + "ln_2.weight"],
            q + "norm3.bias": s[h + "ln_2.bias"],
            q + "ffn.w_1.weight": s[h + "mlp.c_fc.weight"].t(),
            q + "ffn.w_1.bias": s[h + "mlp.c_fc.bias"],
            q + "ffn.w_2.weight": s[h + "mlp.c_proj.weight"].t(),
            q + "ffn.w_2.bias": s[h + "mlp.c_proj.bias"],
        }
    ours |= {"blocks.norm.weight": s["ln_f.weight"], "blocks.norm.bias": s["ln_f.bias"]}
    model = GPT(cfg)
    load_weights(model, {k: v.contiguous() for k, v in ours.items()}, f"{directory} (GPT-2)")
    return model.eval()


def gpt_to_hf(model: GPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face GPT2LMHeadModel config and state dict for a qkv GPT."""
    cfg = model.cfg
    if cfg.activation != "gelu_tanh":
        raise QkvError("only GPTs with activation gelu_tanh can be exported as GPT-2")
    p = {k: v.detach() for k, v in model.state_dict().items()}
    s: dict[str, Tensor] = {
        "transformer.wte.weight": p["tok_embed.weight"],
        "transformer.wpe.weight": p["positions.embedding.weight"],
    }
    for i in range(cfg.N):
        h, q = f"transformer.h.{i}.", f"blocks.layers.{i}."
        s |= {
            h + "ln_1.weight": p[q + "norm1.weight"],
            h + "ln_1.bias": p[q + "norm1.bias"],
            h + "attn.c_attn.weight": p[q + "self_attn.in_proj.weight"].t(),
            h + "attn.c_attn.bias": p[q + "self_attn.in_proj.bias"],
            h + "attn.c_proj.weight": p[q + "self_attn.out_proj.weight"].t(),
            h + "attn.c_proj.bias": p[q + "self_attn.out_proj.bias"],
            h + "ln_2.weight": p[q + "norm3.weight"],
            h + "ln_2.bias": p[q + "norm3.bias"],
            h + "mlp.c_fc.weight": p[q + "ffn.w_1.weight"].t(),
            h + "mlp.c_fc.bias": p[q + "ffn.w_1.bias"],
            h + "mlp.c_proj.weight": p[q + "ffn.w_2.weight"].t(),
            h + "mlp.c_proj.bias": p[q + "ffn.w_2.bias"],
        }
    s |= {"transformer.ln_f.weight": p["blocks.norm.weight"], "transformer.ln_f.bias": p["blocks.norm.bias"]}
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
        "activation_function": "gelu_new",
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
        vocab_size=config["vocab_size"],
        max_len=config.get("max_position_embeddings", 512),
        type_vocab_size=config.get("type_vocab_size", 2),
        d_model=config["hidden_size"],
        h=config["num_attention_heads"],
        N=config["num_hidden_layers"],
        d_ff=config["intermediate_size"],
        dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        activation=_activation(config, "hidden_act"),
        eps=config.get("layer_norm_eps", 1e-12),
        pad_id=config.get("pad_token_id", 0) or 0,
        pooler=pooler,
    )


def bert_from_hf(directory: str | Path) -> BERT:
    """A qkv BERT holding a Hugging Face BERT checkpoint (BertModel or BertForMaskedLM)."""
    config, state = read_hf_dir(directory)
    s = _strip(state, "bert.")
    cfg = bert_config_from_hf(config, pooler="pooler.dense.weight" in s)
    e = "embeddings."
    ours: dict[str, Tensor] = {
        "tok_embed.weight": s[e + "word_embeddings.weight"],
        "positions.embedding.weight": s[e + "position_embeddings.weight"],
        "segment_embed.weight": s[e + "token_type_embeddings.weight"],
        "embed_norm.weight": s[e + "LayerNorm.weight"],
        "embed_norm.bias": s[e + "LayerNorm.bias"],
    }
    for i in range(cfg.N):
        h, q = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        a = h + "attention.self."
        ours |= {
            q + "self_attn.in_proj.weight": torch.cat([s[a + n + ".weight"] for n in ("query", "key", "value")]),
            q + "self_attn.in_proj.bias": torch.cat([s[a + n + ".bias"] for n in ("query", "key", "value")]),
            q + "self_attn.out_proj.weight": s[h + "attention.output.dense.weight"],
            q + "self_attn.out_proj.bias": s[h + "attention.output.dense.bias"],
            q + "norm1.weight": s[h + "attention.output.LayerNorm.weight"],
            q + "norm1.bias": s[h + "attention.output.LayerNorm.bias"],
            q + "ffn.w_1.weight": s[h + "intermediate.dense.weight"],
            q + "ffn.w_1.bias": s[h + "intermediate.dense.bias"],
            q + "ffn.w_2.weight": s[h + "output.dense.weight"],
            q + "ffn.w_2.bias": s[h + "output.dense.bias"],
            q + "norm3.weight": s[h + "output.LayerNorm.weight"],
            q + "norm3.bias": s[h + "output.LayerNorm.bias"],
        }
    if cfg.pooler:
        ours |= {"pooler.weight": s["pooler.dense.weight"], "pooler.bias": s["pooler.dense.bias"]}
    model = BERT(cfg)
    head = "cls.predictions."
    if head + "transform.dense.weight" in s:
        ours |= {
            "mlm_dense.weight": s[head + "transform.dense.weight"],
            "mlm_dense.bias": s[head + "transform.dense.bias"],
            "mlm_norm.weight": s[head + "transform.LayerNorm.weight"],
            "mlm_norm.bias": s[head + "transform.LayerNorm.bias"],
            "mlm_bias": s[head + "bias"],
        }
    else:  # an encoder-only checkpoint (e.g. a sentence-transformers model): keep the fresh MLM head
        ours |= {k: v for k, v in model.state_dict().items() if k.startswith("mlm_")}
    load_weights(model, {k: v.contiguous() for k, v in ours.items()}, f"{directory} (BERT)")
    return model.eval()


def bert_to_hf(model: BERT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face BertForMaskedLM config and state dict for a qkv BERT."""
    cfg = model.cfg
    p = {k: v.detach() for k, v in model.state_dict().items()}
    d = cfg.d_model
    e = "bert.embeddings."
    s: dict[str, Tensor] = {
        e + "word_embeddings.weight": p["tok_embed.weight"],
        e + "position_embeddings.weight": p["positions.embedding.weight"],
        e + "token_type_embeddings.weight": p["segment_embed.weight"],
        e + "LayerNorm.weight": p["embed_norm.weight"],
        e + "LayerNorm.bias": p["embed_norm.bias"],
    }
    for i in range(cfg.N):
        h, q = f"bert.encoder.layer.{i}.", f"encoder.layers.{i}."
        w, b = p[q + "self_attn.in_proj.weight"], p[q + "self_attn.in_proj.bias"]
        for j, n in enumerate(("query", "key", "value")):
            s[h + f"attention.self.{n}.weight"] = w[j * d : (j + 1) * d]
            s[h + f"attention.self.{n}.bias"] = b[j * d : (j + 1) * d]
        s |= {
            h + "attention.output.dense.weight": p[q + "self_attn.out_proj.weight"],
            h + "attention.output.dense.bias": p[q + "self_attn.out_proj.bias"],
            h + "attention.output.LayerNorm.weight": p[q + "norm1.weight"],
            h + "attention.output.LayerNorm.bias": p[q + "norm1.bias"],
            h + "intermediate.dense.weight": p[q + "ffn.w_1.weight"],
            h + "intermediate.dense.bias": p[q + "ffn.w_1.bias"],
            h + "output.dense.weight": p[q + "ffn.w_2.weight"],
            h + "output.dense.bias": p[q + "ffn.w_2.bias"],
            h + "output.LayerNorm.weight": p[q + "norm3.weight"],
            h + "output.LayerNorm.bias": p[q + "norm3.bias"],
        }
    if cfg.pooler:
        s |= {"bert.pooler.dense.weight": p["pooler.weight"], "bert.pooler.dense.bias": p["pooler.bias"]}
    s |= {
        "cls.predictions.transform.dense.weight": p["mlm_dense.weight"],
        "cls.predictions.transform.dense.bias": p["mlm_dense.bias"],
        "cls.predictions.transform.LayerNorm.weight": p["mlm_norm.weight"],
        "cls.predictions.transform.LayerNorm.bias": p["mlm_norm.bias"],
        "cls.predictions.bias": p["mlm_bias"],
    }
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
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
