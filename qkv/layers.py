"""Transformer building blocks: positional encodings, the position-wise feed-forward network, and one
layer class that is an encoder layer or, with cross-attention, a decoder layer (paper section 3.1).

Shapes follow the legend in :mod:`qkv.attention` (B, T, S, H, D, d_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import KVCache, MultiHeadAttention
from qkv.linear import ACTIVATIONS, Linear

__all__ = [
    "ACTIVATIONS",
    "DecoderCache",
    "Dropout",
    "FeedForward",
    "LayerCache",
    "LayerStack",
    "LayerWeights",
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "TransformerLayer",
    "dropout",
]


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    On CPUs the mask comes from 16-bit slices of 64-bit random words (four draws per RNG call, so
    ``p`` is exact to 1/65536), about 2x faster than ``F.dropout``, whose per-element random floats
    cost a quarter of a small Transformer's CPU training step. Elsewhere, and under ``torch.compile``
    (which fuses its own), it is ``F.dropout``. Both draw from torch's global generator, so seeding and
    resuming stay exact.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    r = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    keep = r >= int(-32768 + round(p * 65536))
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))  # the mask made in x's dtype: no float32 copy to cast


class Dropout(nn.Module):
    """:func:`dropout` as a module (a drop-in for ``nn.Dropout``)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Apply dropout in training mode."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SinusoidalPositionalEncoding(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    ``layout="halves"`` stores the same table with the sines in the first half of the vector and the
    cosines in the second (Marian's and fairseq's layout), instead of interleaved (the paper's)."""

    LAYOUTS = ("interleaved", "halves")

    def __init__(self, d_model: int, max_len: int = 1024, layout: str = "interleaved") -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        sin, cos = torch.sin(pos * inv_freq), torch.cos(pos * inv_freq[: d_model // 2])
        pe = torch.zeros(max_len, d_model)
        if layout == "halves":
            pe[:, : sin.size(1)], pe[:, sin.size(1) :] = sin, cos
        else:
            pe[:, 0::2], pe[:, 1::2] = sin, cos
        self.register_buffer("pe", pe, persistent=False)  # (max_len, d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Add the encodings of positions offset .. offset+T-1 to x (B, T, d_model)."""
        return x + self.pe[offset : offset + x.size(1)].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position (GPT, BERT)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """Add the embeddings of positions offset .. offset+T-1 (or of explicit ``positions`` (B, T),
        e.g. for left-padded batches) to x (B, T, d_model)."""
        if positions is None:
            positions = torch.arange(offset, offset + x.size(1), device=x.device)
        return x + self.embedding(positions)


class FeedForward(nn.Module):
    """FFN(x) = W_2 · act(W_1 x + b_1) + b_2, applied at every position (paper eq. 2). ``dropout`` here
    acts on the hidden activations (not in the paper; fairseq's ``activation_dropout``)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        self.w_1 = Linear(d_model, d_ff)
        self.w_2 = Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.activation = activation  # applied by w_1, fused into its product where the kernel can

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model)."""
        return self.w_2(self.dropout(self.w_1(x, activation=self.activation)))


@dataclass
class LayerCache:
    """KV caches of one layer: its self-attention (grows each step) and cross-attention (set once)."""

    self_attn: KVCache
    cross_attn: KVCache

    @classmethod
    def empty(cls, capacity: int | None = None) -> LayerCache:
        """A fresh cache for one layer, its self-attention preallocated to ``capacity`` positions."""
        return cls(KVCache(capacity), KVCache(static=True))

    def reorder(self, index: Tensor, *, memory_index: Tensor | None = None) -> None:
        """Keep rows ``index`` of the self-attention cache and rows ``memory_index`` of the cross-attention
        cache (computed from the memory alone; None: it stays as it is)."""
        self.self_attn.reorder(index)
        if memory_index is not None:
            self.cross_attn.reorder(memory_index)


class DecoderCache:
    """The KV caches of a stack of layers for incremental decoding, one :class:`LayerCache` per layer
    (the Transformer's decoder, a GPT).

    Lifecycle: ``model.new_cache(capacity)`` -> ``model.decode(step_tokens, ..., cache=cache)`` once per
    step (self-attention K/V appended into buffers preallocated to ``capacity`` positions, cross-attention
    K/V of the memory computed at the first step only) -> ``reorder(index)`` when beams are re-ranked
    -> discard.
    """

    def __init__(self, num_layers: int, capacity: int | None = None) -> None:
        self.layers = [LayerCache.empty(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Number of target positions decoded so far."""
        return self.layers[0].self_attn.length

    def reorder(self, index: Tensor, *, memory_index: Tensor | None = None) -> None:
        """Keep batch rows ``index`` (B',) of every layer's self-attention cache, and rows ``memory_index`` of
        its cross-attention cache (None: it stays; :meth:`DecoderState.reorder`)."""
        for layer in self.layers:
            layer.reorder(index, memory_index=memory_index)


@dataclass
class LayerWeights:
    """Attention weights of one layer, (B, H, T, S) each; ``cross`` is None in encoder layers."""

    self_attn: Tensor | None
    cross: Tensor | None = None


class TransformerLayer(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention to ``memory``, feed-forward.

    Without cross-attention it is the paper's encoder layer (or a GPT/BERT block); with it, a decoder
    layer. Each sublayer is wrapped in a residual connection with LayerNorm, after the residual as in
    the paper (``norm_first=False``, post-LN) or before the sublayer (``norm_first=True``, pre-LN).
    ``attention`` picks the variant (:data:`qkv.attention.ATTENTION_VARIANTS`).
    """

    def __init__(
        self,
        d_model: int,
        h: int,
        d_ff: int,
        dropout: float = 0.1,
        *,
        attention_dropout: float | None = None,
        ffn_dropout: float = 0.0,
        norm_first: bool = False,
        cross_attention: bool = False,
        activation: str = "relu",
        eps: float = 1e-5,
        attention: str = "scaled",
    ) -> None:
        super().__init__()
        p_attn = dropout if attention_dropout is None else attention_dropout
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, h, dropout=p_attn, variant=attention)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.cross_attn = MultiHeadAttention(d_model, h, dropout=p_attn, variant=attention) if cross_attention else None
        self.norm2 = nn.LayerNorm(d_model, eps=eps) if cross_attention else None
        self.ffn = FeedForward(d_model, d_ff, ffn_dropout, activation)
        self.norm3 = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer) -> tuple[Tensor, Tensor | None]:
        """x + Dropout(sublayer(LN(x))) for pre-LN, LN(x + Dropout(sublayer(x))) for post-LN."""
        if self.norm_first:
            y, w = sublayer(norm(x))
            return x + self.dropout(y), w
        y, w = sublayer(x)
        return norm(x + self.dropout(y)), w

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: LayerCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, LayerWeights | None]:
        """x (B, T, d_model) -> (B, T, d_model), and this layer's weights when ``need_weights``.

        ``mask`` (True = may attend, broadcastable to (B, H, T, T)) and ``is_causal`` apply to
        self-attention; ``memory_mask`` (broadcastable to (B, H, T, S)) to cross-attention.
        """
        self_cache = None if cache is None else cache.self_attn
        x, w_self = self._residual(
            x,
            self.norm1,
            lambda y: self.self_attn(y, None, mask, is_causal=is_causal, cache=self_cache, need_weights=need_weights),
        )
        w_cross = None
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("a decoder layer needs the encoder output `memory`")
            cross_cache = None if cache is None else cache.cross_attn
            x, w_cross = self._residual(
                x,
                self.norm2,
                lambda y: self.cross_attn(y, memory, memory_mask, cache=cross_cache, need_weights=need_weights),
            )
        x, _ = self._residual(x, self.norm3, lambda y: (self.ffn(y), None))
        return x, (LayerWeights(w_self, w_cross) if need_weights else None)


class LayerStack(nn.Module):
    """N layers applied in turn, with a final LayerNorm for pre-LN stacks (whose output is unnormalized)."""

    def __init__(self, layers: list[TransformerLayer], final_norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = final_norm

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        caches: list[LayerCache] | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """Run every layer; returns the output and, when asked, each layer's attention weights."""
        all_weights = [] if need_weights else None
        for i, layer in enumerate(self.layers):
            x, w = layer(
                x,
                mask,
                is_causal=is_causal,
                memory=memory,
                memory_mask=memory_mask,
                cache=None if caches is None else caches[i],
                need_weights=need_weights,
            )
            if all_weights is not None:
                all_weights.append(w)
        if self.norm is not None:
            x = self.norm(x)
        return x, all_weights
