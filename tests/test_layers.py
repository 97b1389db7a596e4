"""Layers: positional encodings, feed-forward, one layer class for encoder and decoder."""

from __future__ import annotations

import math

import torch

from qkv.layers import DecoderCache, FeedForward, SinusoidalPositionalEncoding, TransformerLayer


def test_sinusoidal_encoding_is_the_papers_formula():
    pe = SinusoidalPositionalEncoding(8, max_len=50)
    x = torch.zeros(1, 50, 8)
    out = pe(x)[0]
    for pos in (0, 1, 17, 49):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert abs(out[pos, 2 * i] - math.sin(angle)) < 1e-5
            assert abs(out[pos, 2 * i + 1] - math.cos(angle)) < 1e-5
    torch.testing.assert_close(pe(torch.zeros(1, 3, 8), offset=5)[0], out[5:8])


def test_feed_forward_is_position_wise():
    torch.manual_seed(0)
    ffn = FeedForward(8, 32)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ffn(x)[:, 2], ffn(x[:, 2:3])[:, 0])


def test_encoder_and_decoder_layers_differ_by_cross_attention_only():
    enc = TransformerLayer(16, 2, 32, cross_attention=False)
    dec = TransformerLayer(16, 2, 32, cross_attention=True)
    assert enc.cross_attn is None and dec.cross_attn is not None
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters())
    assert n_dec - n_enc == 4 * 16 * 16 + 4 * 16 + 2 * 16  # one more attention and LayerNorm


def test_layer_returns_weights_as_data_only_when_asked():
    torch.manual_seed(0)
    layer = TransformerLayer(16, 2, 32, dropout=0.0, cross_attention=True).eval()
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    out, w = layer(x, memory=mem, is_causal=True)
    assert w is None
    out2, w = layer(x, memory=mem, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, out2, atol=1e-5, rtol=1e-5)
    assert w.self_attn.shape == (2, 2, 4, 4) and w.cross.shape == (2, 2, 4, 6)
    assert torch.all(w.self_attn.triu(1) == 0)  # causal
    assert not any(isinstance(v, torch.Tensor) and v.shape == w.cross.shape for v in vars(layer).values())


def test_decoder_cache_moves_what_came_from_the_memory_only_when_asked():
    # beam search re-ranks the beams of one source (its memory rows stay), and drops finished sources (they go)
    cache = DecoderCache(num_layers=2, capacity=4)
    mem_k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 5, 4).contiguous()  # (B, H, S, D)
    own_k = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 2, 1, 4).contiguous()  # (B*2, H, 1, D)
    for layer in cache.layers:
        layer.cross_attn.store(mem_k, mem_k + 10)
        layer.self_attn.append(own_k, own_k + 10)
    cache.reorder(torch.tensor([1, 1, 2, 3, 5, 4]))  # re-ranked: the memory's K/V stay where they are
    for layer in cache.layers:
        assert layer.cross_attn.k.data_ptr() == mem_k.data_ptr()
        assert layer.self_attn.k[:, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 5.0, 4.0]
    cache.reorder(torch.tensor([0, 1, 4, 5]), memory_index=torch.tensor([0, 2]))  # source 1 is done
    for layer in cache.layers:
        assert layer.cross_attn.k[:, 0, 0, 0].tolist() == [0.0, 2.0] and layer.cross_attn.v[1, 0, 0, 0] == 12.0
        assert layer.self_attn.k[:, 0, 0, 0].tolist() == [1.0, 1.0, 5.0, 4.0]
