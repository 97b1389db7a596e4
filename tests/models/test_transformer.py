"""The encoder–decoder Transformer: parity with torch.nn.Transformer, config validation, presets."""

from __future__ import annotations

import warnings

import pytest
import torch

from qkv.attention import causal_mask
from qkv.errors import QkvError
from qkv.layers import TransformerLayer
from qkv.models import TransformerConfig, build_transformer, count_parameters, padding_mask


def _copy_attn(dst: torch.nn.MultiheadAttention, src) -> None:
    dst.in_proj_weight.copy_(src.in_proj.weight)
    dst.in_proj_bias.copy_(src.in_proj.bias)
    dst.out_proj.weight.copy_(src.out_proj.weight)
    dst.out_proj.bias.copy_(src.out_proj.bias)


def _copy_norm(dst: torch.nn.LayerNorm, src: torch.nn.LayerNorm) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def _copy_ffn(dst, layer: TransformerLayer) -> None:
    dst.linear1.weight.copy_(layer.ffn.w_1.weight)
    dst.linear1.bias.copy_(layer.ffn.w_1.bias)
    dst.linear2.weight.copy_(layer.ffn.w_2.weight)
    dst.linear2.bias.copy_(layer.ffn.w_2.bias)


def torch_reference(model) -> torch.nn.Transformer:
    """An nn.Transformer with the weights of ``model``'s encoder and decoder stacks."""
    cfg = model.cfg
    with warnings.catch_warnings():  # torch warns that pre-LN stacks cannot use nested tensors
        warnings.simplefilter("ignore", UserWarning)
        ref = torch.nn.Transformer(
            cfg.d_model,
            cfg.h,
            cfg.N,
            cfg.decoder_layers,
            cfg.d_ff,
            dropout=0.0,
            batch_first=True,
            norm_first=cfg.norm_first,
        )
    with torch.no_grad():
        for mine, theirs in zip(model.encoder.layers, ref.encoder.layers, strict=True):
            _copy_attn(theirs.self_attn, mine.self_attn)
            _copy_ffn(theirs, mine)
            _copy_norm(theirs.norm1, mine.norm1)
            _copy_norm(theirs.norm2, mine.norm3)
        for mine, theirs in zip(model.decoder.layers, ref.decoder.layers, strict=True):
            _copy_attn(theirs.self_attn, mine.self_attn)
            _copy_attn(theirs.multihead_attn, mine.cross_attn)
            _copy_ffn(theirs, mine)
            _copy_norm(theirs.norm1, mine.norm1)
            _copy_norm(theirs.norm2, mine.norm2)
            _copy_norm(theirs.norm3, mine.norm3)
        if cfg.norm_first:
            _copy_norm(ref.encoder.norm, model.encoder.norm)
            _copy_norm(ref.decoder.norm, model.decoder.norm)
        else:  # the paper's post-LN stacks have no final LayerNorm; nn.Transformer always adds one
            ref.encoder.norm = None
            ref.decoder.norm = None
    return ref.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_stacks_match_torch_transformer(norm_first):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        d_model=32, h=4, N=2, N_dec=3, d_ff=64, dropout=0.0, norm_first=norm_first, src_vocab_size=11, tgt_vocab_size=13
    )
    model = build_transformer(cfg).eval()
    ref = torch_reference(model)
    src = torch.randint(4, 11, (3, 9))
    src[0, 6:] = 0  # padding
    x_src = torch.randn(3, 9, 32)
    x_tgt = torch.randn(3, 7, 32)
    key_ok = padding_mask(src, 0)
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # compare the math, not nested-tensor shortcuts
    try:
        with torch.no_grad():
            mem_ref = ref.encoder(x_src, src_key_padding_mask=src == 0)
            out_ref = ref.decoder(
                x_tgt, mem_ref, tgt_mask=~causal_mask(7), memory_key_padding_mask=src == 0, tgt_is_causal=True
            )
            mem, _ = model.encoder(x_src, key_ok)
            out, _ = model.decoder(x_tgt, is_causal=True, memory=mem, memory_mask=key_ok)
            _, weights = model.decoder(x_tgt, is_causal=True, memory=mem, memory_mask=key_ok, need_weights=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    assert (mem - mem_ref).abs().max() < 1e-5
    assert (out - out_ref).abs().max() < 1e-5
    assert len(weights) == 3 and weights[0].cross.shape == (3, 4, 7, 9)


def test_presets_and_parameter_counts():
    base = TransformerConfig.from_name("base", src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings="all")
    big = TransformerConfig.from_name("big", src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings="all")
    assert (base.d_model, base.h, base.N, base.d_ff, base.dropout) == (512, 8, 6, 2048, 0.1)
    assert (big.d_model, big.h, big.N, big.d_ff, big.dropout) == (1024, 16, 6, 4096, 0.3)
    # per layer: encoder 4d² + 2·d·d_ff (+ biases, norms); decoder adds a second attention
    d, f = 512, 2048
    enc = 6 * (4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d)
    dec = 6 * (8 * d * d + 8 * d + 2 * d * f + f + d + 6 * d)
    assert count_parameters(build_transformer(base)) == enc + dec + 37000 * d


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("d_model", 500, "model.d_model"),
        ("dropout", -0.1, "model.dropout"),
        ("h", 0, "model.h"),
        ("N", 0, "model.N"),
        ("share_embeddings", "some", "model.share_embeddings"),
    ],
)
def test_invalid_config_names_the_field(field, value, needle):
    with pytest.raises(QkvError, match=needle):
        TransformerConfig(**{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(QkvError, match="unknown model preset 'huge'"):
        TransformerConfig.from_name("huge")
    with pytest.raises(QkvError, match="did you mean 'd_model'"):
        TransformerConfig.from_name("base", d_modle=3)


def test_shared_embeddings_are_tied():
    cfg = TransformerConfig(d_model=16, h=2, N=1, d_ff=32, src_vocab_size=9, tgt_vocab_size=9, share_embeddings="all")
    m = build_transformer(cfg)
    assert m.src_embed.weight is m.tgt_embed.weight is m.generator.weight
    m2 = build_transformer(TransformerConfig(d_model=16, h=2, N=1, d_ff=32, src_vocab_size=9, tgt_vocab_size=7))
    assert m2.generator.weight is m2.tgt_embed.weight and m2.src_embed.weight is not m2.tgt_embed.weight
    with pytest.raises(QkvError, match="joint vocabulary"):
        TransformerConfig(share_embeddings="all", src_vocab_size=9, tgt_vocab_size=7)


def test_pre_ln_and_post_ln_differ_and_decode_respects_causality():
    torch.manual_seed(0)
    kw = dict(d_model=16, h=2, N=1, d_ff=32, dropout=0.0, src_vocab_size=9, tgt_vocab_size=9)
    post, pre = build_transformer(TransformerConfig(**kw)), build_transformer(TransformerConfig(norm_first=True, **kw))
    assert pre.encoder.norm is not None and post.encoder.norm is None
    src, tgt = torch.randint(4, 9, (2, 5)), torch.randint(4, 9, (2, 6))
    tgt2 = tgt.clone()
    tgt2[:, 3:] = 4
    for m in (post.eval(), pre.eval()):
        a, b = m(src, tgt), m(src, tgt2)
        assert (a[:, :3] - b[:, :3]).abs().max() < 1e-6
