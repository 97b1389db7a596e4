"""CTranslate2 out: a Transformer translation run written as a CTranslate2 model directory with
CTranslate2's own model specification classes (``pip install ctranslate2``), for its fast ``Translator``.

Why not through CTranslate2's Marian converter: it assumes Marian's conventions — the decoder starts from
a zero embedding and ``<pad>`` is the last vocabulary entry — which hold for converted opus-mt runs but not
for runs qkv trains (the decoder starts from ``<bos>``'s embedding). CTranslate2's generic Transformer
specification expresses qkv's model as it is: post- or pre-LN, the activation, √d_model-scaled
embeddings, the sinusoid table as stored encodings (either layout), the logits bias, the start token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qkv.checkpoint import new_directory
from qkv.errors import QkvError

__all__ = ["export_to_ct2", "ct2_tokens"]

CT2_ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_tanh": "GELUTanh", "swish": "SWISH"}


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise QkvError("writing a CTranslate2 model needs CTranslate2: `pip install ctranslate2`") from None
    return ctranslate2


def _spec(model: Any) -> Any:
    """CTranslate2's TransformerSpec holding the weights of a qkv Transformer."""
    _ctranslate2()  # a one-line error when the package is missing
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    if cfg.attention != "scaled":
        raise QkvError(f"model.attention={cfg.attention}: CTranslate2 runs scaled dot-product attention only")
    activation = getattr(common_spec.Activation, CT2_ACTIVATIONS[cfg.activation])
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.N, cfg.decoder_layers), cfg.h, pre_norm=cfg.norm_first, activation=activation
    )
    p = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}

    def linear(s: Any, name: str, rows: slice = slice(None)) -> None:
        s.weight = p[f"{name}.weight"][rows].contiguous()
        if f"{name}.bias" in p:
            s.bias = p[f"{name}.bias"][rows].contiguous()

    def norm(s: Any, name: str) -> None:
        s.gamma, s.beta = p[f"{name}.weight"], p[f"{name}.bias"]

    d = cfg.d_model
    for side, stack, embed in ((spec.encoder, "encoder", "src_embed"), (spec.decoder, "decoder", "tgt_embed")):
        side.scale_embeddings = math.sqrt(d)
        side.position_encodings.encodings = model.positions.pe.float().cpu()
        table = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        table.weight = p[f"{embed}.weight"] if f"{embed}.weight" in p else p["src_embed.weight"]
        if cfg.norm_first:
            norm(side.layer_norm, f"{stack}.norm")
        for i, layer in enumerate(side.layer):
            pre = f"{stack}.layers.{i}."
            linear(layer.self_attention.linear[0], pre + "self_attn.in_proj")  # fused Q, K, V: the same layout
            linear(layer.self_attention.linear[1], pre + "self_attn.out_proj")
            norm(layer.self_attention.layer_norm, pre + "norm1")
            if stack == "decoder":
                linear(layer.attention.linear[0], pre + "cross_attn.in_proj", slice(0, d))
                linear(layer.attention.linear[1], pre + "cross_attn.in_proj", slice(d, 3 * d))
                linear(layer.attention.linear[2], pre + "cross_attn.out_proj")
                norm(layer.attention.layer_norm, pre + "norm2")
            linear(layer.ffn.linear_0, pre + "ffn.w_1")
            linear(layer.ffn.linear_1, pre + "ffn.w_2")
            norm(layer.ffn.layer_norm, pre + "norm3")
    spec.decoder.projection.weight = p["generator.weight"]
    if cfg.logits_bias:
        spec.decoder.projection.bias = p["generator.bias"]
    return spec


def ct2_tokens(tok: Any) -> list[str]:
    """A tokenizer's vocabulary as CTranslate2 takes it: token strings by id."""
    return [tok.id_to_token(i) for i in range(len(tok))]


def export_to_ct2(run: Any, out: str | Path) -> Path:
    """Write a loaded translation run as a CTranslate2 model directory ``out`` (float32 weights)."""
    out = Path(out)
    spec = _spec(run.model)
    src, tgt = run.src_tokenizer, run.tgt_tokenizer
    spec.register_source_vocabulary(ct2_tokens(src))
    spec.register_target_vocabulary(ct2_tokens(tgt))
    spec.config.bos_token = tgt.id_to_token(tgt.bos_id)
    spec.config.eos_token = tgt.id_to_token(tgt.eos_id)
    spec.config.unk_token = tgt.id_to_token(tgt.unk_id) if tgt.unk_id is not None else "<unk>"
    spec.config.decoder_start_token = tgt.id_to_token(tgt.bos_id)
    spec.validate()
    spec.optimize(quantization="float32")
    with new_directory(out) as tmp:
        spec.save(str(tmp))
    return out
