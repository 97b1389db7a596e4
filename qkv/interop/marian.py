"""Hugging Face Marian (``MarianMTModel``: the opus-mt translation models) in: the config, the weights and
the SentencePiece tokenizers of a Marian directory as a qkv Transformer and its tokenizers.

Marian is the paper's post-LN encoder–decoder with options the Transformer has as fields: the
feed-forward's activation (``swish`` in opus-mt), a bias on the output logits (``final_logits_bias``), the
sinusoid table laid out in halves rather than interleaved, embeddings shared by encoder, decoder and
output (or the decoder's tied to the output only), and the pad token as the decoder's start token (the
tokenizer's ``bos_id``). Name map (qkv ← Marian), per layer i of ``model.{encoder,decoder}.layers.i``:

    self_attn.{q,k,v}_proj → self_attn.in_proj (stacked)   self_attn.out_proj → self_attn.out_proj
    encoder_attn.{q,k,v}_proj → cross_attn.in_proj           encoder_attn.out_proj → cross_attn.out_proj
    self_attn_layer_norm → norm1   encoder_attn_layer_norm → norm2   final_layer_norm → norm3
    fc1 → ffn.w_1   fc2 → ffn.w_2   model.shared / embed_tokens → src_embed (tgt_embed)
    final_logits_bias → generator.bias
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from qkv.attention import MultiHeadAttention
from qkv.checkpoint import load_weights
from qkv.data.spm import SentencePieceTokenizer
from qkv.errors import QkvError, shown
from qkv.interop.hf import hf_value, read_hf_config, read_hf_dir
from qkv.models.transformer import Transformer, TransformerConfig

__all__ = ["halves_order", "marian_config_from_hf", "marian_from_hf", "marian_to_hf", "marian_tokenizers"]

MARIAN_ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}
LAYER_NAMES = [  # (qkv, Marian) within one layer
    ("self_attn.out_proj", "self_attn.out_proj"),
    ("norm1", "self_attn_layer_norm"),
    ("ffn.w_1", "fc1"),
    ("ffn.w_2", "fc2"),
    ("norm3", "final_layer_norm"),
]
CROSS_NAMES = [("cross_attn.out_proj", "encoder_attn.out_proj"), ("norm2", "encoder_attn_layer_norm")]
ATTENTIONS = {"self_attn": "self_attn", "cross_attn": "encoder_attn"}


def _same(config: dict[str, Any], a: str, b: str) -> int:
    """The whole number config.json gives both ``a`` and ``b`` (``b`` may be absent)."""
    value = hf_value(config, a, int)
    if hf_value(config, b, int, value) != value:
        raise QkvError(f"this Marian model has {a}={value} but {b}={config.get(b)}: qkv needs them equal")
    return value


def marian_config_from_hf(config: dict[str, Any]) -> TransformerConfig:
    """qkv's TransformerConfig for a Marian config.json; what qkv cannot express is one line naming it."""
    if not config.get("scale_embedding", False):
        raise QkvError("this Marian model has scale_embedding=false; qkv scales embeddings by √d_model (the paper)")
    if config.get("normalize_before") or config.get("add_final_layer_norm") or config.get("normalize_embedding"):
        raise QkvError("this Marian model normalizes before its sublayers; qkv reads post-LN Marian models")
    act = hf_value(config, "activation_function", str, "gelu")
    if act not in MARIAN_ACTIVATIONS:
        raise QkvError(f"activation_function {shown(act)} is not supported ({', '.join(MARIAN_ACTIVATIONS)})")
    d_model = hf_value(config, "d_model", int)
    if d_model % 2:
        raise QkvError(f"d_model={d_model} is odd: qkv's sinusoid table needs an even width")
    shared = hf_value(config, "share_encoder_decoder_embeddings", bool, True)
    vocab = hf_value(config, "vocab_size", int)
    return TransformerConfig(
        d_model=d_model,
        h=_same(config, "encoder_attention_heads", "decoder_attention_heads"),
        N=hf_value(config, "encoder_layers", int),
        N_dec=hf_value(config, "decoder_layers", int),
        d_ff=_same(config, "encoder_ffn_dim", "decoder_ffn_dim"),
        dropout=hf_value(config, "dropout", float, 0.1),
        attention_dropout=hf_value(config, "attention_dropout", float, 0.0),
        ffn_dropout=hf_value(config, "activation_dropout", float, 0.0),
        max_len=hf_value(config, "max_position_embeddings", int, 512),
        src_vocab_size=vocab,
        tgt_vocab_size=vocab if shared else hf_value(config, "decoder_vocab_size", int, vocab),
        pad_id=hf_value(config, "pad_token_id", int),
        share_embeddings="all" if shared else "decoder",
        activation=MARIAN_ACTIVATIONS[act],
        logits_bias=True,
        position_layout="halves",
    )


def _layers(cfg: TransformerConfig) -> Iterator[tuple[str, bool]]:
    """Each layer's name prefix (the same in qkv and Marian), and whether it has cross-attention."""
    for side, n, cross in (("encoder", cfg.N, False), ("decoder", cfg.decoder_layers, True)):
        for i in range(n):
            yield f"{side}.layers.{i}.", cross


def plain_names(cfg: TransformerConfig) -> Iterator[tuple[str, str]]:
    """(qkv name, Marian name without "model.") of every layer tensor stored the same way in both."""
    for pre, cross in _layers(cfg):
        for q, m in LAYER_NAMES + (CROSS_NAMES if cross else []):
            for kind in ("weight", "bias"):
                yield f"{pre}{q}.{kind}", f"{pre}{m}.{kind}"


def fused_names(cfg: TransformerConfig) -> Iterator[tuple[str, str]]:
    """(qkv's fused in_proj name, Marian's name with {} for q, k, v) of every attention projection."""
    for pre, cross in _layers(cfg):
        for q, m in ATTENTIONS.items():
            if cross or q == "self_attn":
                for kind in ("weight", "bias"):
                    yield f"{pre}{q}.in_proj.{kind}", f"{pre}{m}.{{}}_proj.{kind}"


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """MarianMTModel's names without "model." (a MarianModel has none)."""
    return {k.removeprefix("model."): v for k, v in state.items()}


def marian_state_to_qkv(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """qkv Transformer tensors from a Marian state dict (names without "model.")."""
    s = state
    ours: dict[str, Tensor] = {}
    if cfg.share_embeddings == "all":
        ours["src_embed.weight"] = s["shared.weight"] if "shared.weight" in s else s["encoder.embed_tokens.weight"]
    else:
        ours["src_embed.weight"] = s["encoder.embed_tokens.weight"]
        ours["tgt_embed.weight"] = s["decoder.embed_tokens.weight"]
    ours["generator.bias"] = s["final_logits_bias"].reshape(-1) if "final_logits_bias" in s else None  # type: ignore
    for q, m in plain_names(cfg):
        ours[q] = s[m]
    for q, m in fused_names(cfg):  # W^Q, W^K, W^V stored apart by Marian, fused in qkv
        ours[q] = MultiHeadAttention.merge_in_proj(*(s[m.format(p)] for p in "qkv"))
    if ours["generator.bias"] is None:  # a MarianModel without the LM head's bias: zeros
        ours["generator.bias"] = ours["src_embed.weight"].new_zeros(cfg.tgt_vocab_size)
    return {k: v.contiguous() for k, v in ours.items()}


def marian_from_hf(directory: str | Path) -> Transformer:
    """A qkv Transformer holding a Hugging Face Marian checkpoint."""
    config, state = read_hf_dir(directory)
    cfg = marian_config_from_hf(config)
    try:
        tensors = marian_state_to_qkv(_strip(state), cfg)
    except KeyError as e:
        raise QkvError(f"{directory} lacks {shown(e.args[0])}: not a complete Marian checkpoint") from None
    model = Transformer(cfg)
    load_weights(model, tensors, f"{directory} (Marian)")
    return model.eval()


def marian_tokenizers(directory: str | Path) -> tuple[SentencePieceTokenizer, SentencePieceTokenizer]:
    """The source and target tokenizers of a Marian directory (source.spm, target.spm, vocab.json; a
    target_vocab.json where the vocabularies are separate)."""
    import json

    d = Path(directory)
    config = read_hf_config(d)

    def read(name: str) -> bytes:
        try:
            return (d / name).read_bytes()
        except FileNotFoundError:
            raise QkvError(
                f"{d / name} is missing: a Marian directory holds source.spm, target.spm and vocab.json"
            ) from None

    def vocab(name: str) -> dict[str, int]:
        try:
            pieces = json.loads(read(name).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QkvError(f"{d / name} is not valid JSON ({e})") from None
        ids = pieces.values() if isinstance(pieces, dict) else [None]
        if not all(type(i) is int and i >= 0 for i in ids):
            raise QkvError(f"{d / name} must map each piece to its id, a whole number >= 0")
        return pieces

    source, target = read("source.spm"), read("target.spm")
    shared = hf_value(config, "share_encoder_decoder_embeddings", bool, True)
    separate = (d / "target_vocab.json").exists() or not shared
    src_vocab = vocab("vocab.json")
    tgt_vocab = vocab("target_vocab.json") if separate else src_vocab
    decode_with = target if separate else source  # MarianTokenizer decodes a joint vocabulary with the source model
    pad = hf_value(config, "pad_token_id", int)

    def specials(v: dict[str, int]) -> dict[str, int]:
        if "<unk>" not in v:
            raise QkvError(f"{d}: the vocabulary has no <unk>")
        start = hf_value(config, "decoder_start_token_id", int, pad)
        return {"pad": pad, "bos": start, "eos": hf_value(config, "eos_token_id", int), "unk": v["<unk>"]}

    return (
        SentencePieceTokenizer(source, src_vocab, specials(src_vocab), source),
        SentencePieceTokenizer(target, tgt_vocab, specials(tgt_vocab), decode_with),
    )


MARIAN_ACTIVATION_NAMES = {"swish": "swish", "gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}


def halves_order(d_model: int) -> Tensor:
    """The coordinate order that turns qkv's interleaved sinusoid table into Marian's halves: coordinate j
    of the halves layout is coordinate ``order[j]`` of the interleaved one (sines 0, 2, 4, …, then cosines
    1, 3, 5, …). Permuting every residual-stream coordinate of a model this way changes nothing it computes
    (LayerNorm, residual sums and matrix products all commute with it), so an interleaved model is exactly
    a halves model with permuted weights."""
    import torch

    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def _permuted(name: str, t: Tensor, order: Tensor) -> Tensor:
    """``t`` in the permuted residual-stream basis: embeddings and matrices that read the stream permute
    their columns; those that write it (out_proj, w_2) and LayerNorms permute their rows."""
    writes = name.endswith(("out_proj.weight", "out_proj.bias", "w_2.weight", "w_2.bias")) or ".norm" in name
    if writes:
        return t[order]
    if name.endswith(("embed.weight", "in_proj.weight", "w_1.weight")):
        return t[:, order]
    return t  # in_proj / w_1 biases and the logits bias live in other bases


def marian_to_hf(model: Transformer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face MarianMTModel config and state dict for a qkv Transformer; an option Marian cannot
    express is one line naming it."""
    cfg = model.cfg
    refusals = [
        (cfg.norm_first, "model.norm_first=true (pre-LN): Marian is post-LN"),
        (cfg.attention != "scaled", f"model.attention={cfg.attention}: Marian's attention is scaled"),
        (cfg.share_embeddings == "none", "model.share_embeddings=none: Marian ties the output to the decoder's"),
        (cfg.d_model % 2 == 1, f"model.d_model={cfg.d_model} is odd"),
    ]
    for refused, why in refusals:
        if refused:
            raise QkvError(f"this run cannot be a Marian model: {why}")
    p = {k: v.detach() for k, v in model.state_dict().items()}
    if cfg.position_layout == "interleaved":
        order = halves_order(cfg.d_model)
        p = {k: _permuted(k, v, order) for k, v in p.items()}
    s: dict[str, Tensor] = {}
    for q, m in plain_names(cfg):
        s[f"model.{m}"] = p[q]
    for q, m in fused_names(cfg):
        for name, part in zip("qkv", MultiHeadAttention.split_in_proj(p[q]), strict=True):
            s[f"model.{m.format(name)}"] = part
    shared = cfg.share_embeddings == "all"
    if shared:
        s["model.shared.weight"] = s["model.encoder.embed_tokens.weight"] = p["src_embed.weight"]
        s["model.decoder.embed_tokens.weight"] = p["src_embed.weight"]
    else:
        s["model.encoder.embed_tokens.weight"] = p["src_embed.weight"]
        s["model.decoder.embed_tokens.weight"] = p["tgt_embed.weight"]
    s["lm_head.weight"] = s["model.decoder.embed_tokens.weight"]
    bias = p["generator.bias"] if cfg.logits_bias else p["src_embed.weight"].new_zeros(cfg.tgt_vocab_size)
    s["final_logits_bias"] = bias.reshape(1, -1)
    config = {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": cfg.src_vocab_size,
        "decoder_vocab_size": cfg.tgt_vocab_size,
        "share_encoder_decoder_embeddings": shared,
        "tie_word_embeddings": True,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.N,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.h,
        "decoder_attention_heads": cfg.h,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": MARIAN_ACTIVATION_NAMES[cfg.activation],
        "dropout": cfg.dropout,
        "attention_dropout": cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        "activation_dropout": cfg.ffn_dropout,
        "max_position_embeddings": cfg.max_len,
        "scale_embedding": True,
        "pad_token_id": cfg.pad_id,
        "forced_eos_token_id": None,
    }
    return config, {k: v.contiguous().clone() for k, v in s.items()}
