"""The CNN baseline: convolutional sequence to sequence (ConvS2S, Gehring et al., 2017).

Gated linear units over a fixed window of ``kernel`` positions, residual connections scaled by √½,
learned positions, and multi-step attention: every decoder block attends (plain dot product) from its
output to the encoder output. It is an :class:`~qkv.models.translation.EncoderDecoderModel` like the
Transformer, so the trainer, decoding and metrics work on it unchanged.

Shapes: B batch, S source length, T target length, E embedding width (``d_model``), C channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import attend
from qkv.config import check
from qkv.layers import Dropout, LayerWeights, LearnedPositionalEmbedding
from qkv.linear import Linear
from qkv.models.shared import check_length
from qkv.models.translation import EncoderDecoderModel, StackedDecoderConfig, padding_mask, translation_embeddings

__all__ = ["ConvBlock", "ConvCache", "ConvS2S", "ConvS2SConfig"]

HALF = math.sqrt(0.5)


@dataclass
class ConvS2SConfig(StackedDecoderConfig):
    """Shape of a ConvS2S model: ``d_model`` embedding width, ``channels`` of every convolution,
    ``N`` encoder blocks (and decoder blocks unless ``N_dec``), an odd ``kernel`` width; the shared
    fields as in :class:`~qkv.models.translation.TranslationConfig`."""

    d_model: int = 256
    dropout: float = 0.2
    channels: int = 256
    kernel: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        s = "model"
        check(self.channels > 0, s, "channels", self.channels, "must be a positive integer")
        check(self.kernel >= 3 and self.kernel % 2 == 1, s, "kernel", self.kernel, "must be an odd integer >= 3")

    @classmethod
    def presets(cls) -> dict[str, ConvS2SConfig]:
        """Named presets."""
        return {"small": ConvS2SConfig(), "tiny": ConvS2SConfig(d_model=128, channels=128, N=3)}


class ConvBlock(nn.Module):
    """GLU(Conv_k(x)) over a window of ``kernel`` positions: centred (encoder) or, with ``causal``,
    over the current and the kernel-1 previous positions (decoder). The residual is the caller's."""

    def __init__(self, channels: int, kernel: int, dropout: float = 0.0, *, causal: bool = False) -> None:
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.conv = nn.Conv1d(channels, 2 * channels, kernel)
        self.dropout = Dropout(dropout)
        # Gehring et al.'s initialisation keeps the variance of GLU outputs near that of the inputs.
        nn.init.normal_(self.conv.weight, std=math.sqrt(4 * (1 - dropout) / (kernel * channels)))
        nn.init.zeros_(self.conv.bias)

    def forward(
        self, x: Tensor, real: Tensor | None = None, history: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> (B, T, C). ``real`` (B, T, 1) zeroes padding first (so it never leaks into a
        window); a causal block reads the previous kernel-1 inputs from ``history`` (B, kernel-1, C;
        zeros at the start) and returns the new history, else None."""
        if real is not None:
            x = x * real
        h = self.dropout(x)
        if self.causal:
            if history is None:
                history = h.new_zeros(h.size(0), self.kernel - 1, h.size(2))  # (B, k-1, C)
            h = torch.cat([history, h], dim=1)  # (B, k-1+T, C)
            new_history = h[:, h.size(1) - (self.kernel - 1) :]
            y = self.conv(h.transpose(1, 2))  # (B, 2C, T)
        else:
            new_history = None
            y = self.conv(F.pad(h.transpose(1, 2), ((self.kernel - 1) // 2,) * 2))  # (B, 2C, T)
        return F.glu(y, dim=1).transpose(1, 2), new_history  # (B, T, C)


class ConvCache:
    """Decoder state for incremental decoding: each block's last kernel-1 inputs.

    Lifecycle: ``model.new_cache()`` -> ``model.decode(step_tokens, ..., cache=cache)`` per step ->
    ``reorder(index)`` when beams are re-ranked -> discard.
    """

    def __init__(self, num_layers: int) -> None:
        self.length = 0
        self.history: list[Tensor | None] = [None] * num_layers

    def reorder(self, index: Tensor, *, memory_index: Tensor | None = None) -> None:
        """Keep batch rows ``index`` (the history is the decoder's own; nothing here comes from the memory
        alone, so ``memory_index`` has nothing to move)."""
        self.history = [None if h is None else h.index_select(0, index) for h in self.history]


class ConvS2S(EncoderDecoderModel):
    """Convolutional encoder–decoder: embeddings + learned positions, ``N`` GLU blocks per side, multi-step
    dot-product attention in every decoder block, output projection tied to the target embedding."""

    def __init__(self, cfg: ConvS2SConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, C, k, p = cfg.d_model, cfg.channels, cfg.kernel, cfg.dropout
        self.src_embed, self.tgt_embed = translation_embeddings(cfg, E)
        self.src_positions = LearnedPositionalEmbedding(E, cfg.max_len)
        self.tgt_positions = LearnedPositionalEmbedding(E, cfg.max_len)
        self.dropout = Dropout(p)
        self.enc_in, self.enc_out = Linear(E, C), Linear(C, E)
        self.encoder = nn.ModuleList(ConvBlock(C, k, p) for _ in range(cfg.N))
        self.dec_in, self.dec_out = Linear(E, C), Linear(C, E)
        self.decoder = nn.ModuleList(ConvBlock(C, k, p, causal=True) for _ in range(cfg.decoder_layers))
        self.attn_in = nn.ModuleList(Linear(C, E) for _ in range(cfg.decoder_layers))
        self.attn_out = nn.ModuleList(Linear(E, C) for _ in range(cfg.decoder_layers))
        self.generator = Linear(E, cfg.tgt_vocab_size, bias=False)
        for emb in (self.src_embed, self.tgt_embed, self.src_positions.embedding, self.tgt_positions.embedding):
            nn.init.normal_(emb.weight, std=0.1)
        if cfg.share_embeddings != "none":
            self.generator.weight = self.tgt_embed.weight

    def encode(self, src: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor, list[LayerWeights] | None]:
        """src (B, S) -> memory (B, S, 2E) = [keys z; values z + e], padding mask (B, 1, 1, S), no weights."""
        check_length(src, self.cfg.max_len)
        real = (src != self.cfg.pad_id)[:, :, None]  # (B, S, 1)
        e = self.dropout(self.src_positions(self.src_embed(src)))  # (B, S, E)
        x = self.enc_in(e)  # (B, S, C)
        for block in self.encoder:
            y, _ = block(x, real)
            x = (y + x) * HALF
        z = self.enc_out(x)  # (B, S, E)
        return torch.cat([z, z + e], dim=-1), padding_mask(src, self.cfg.pad_id), None  # (B, S, 2E), (B, 1, 1, S)

    def decode_states(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: ConvCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> the generator's inputs (B, T, E). With a ``cache``, ``tgt`` holds only the new positions and
        each block's window reaches back into the cached inputs. Weights: each block's attention
        (B, 1, T, S), as cross-attention."""
        offset = 0 if cache is None else cache.length
        check_length(tgt, self.cfg.max_len, offset)
        keys, values = memory.chunk(2, dim=-1)  # (B, S, E) each
        lengths = src_mask.sum(-1, dtype=memory.dtype)[:, :, :, None]  # (B, 1, 1, 1) real source tokens
        g = self.dropout(self.tgt_positions(self.tgt_embed(tgt), offset))  # (B, T, E)
        x = self.dec_in(g)  # (B, T, C)
        weights = [] if need_weights else None
        for i, block in enumerate(self.decoder):
            history = None if cache is None else cache.history[i]
            h, new_history = block(x, history=history)  # (B, T, C)
            if cache is not None:
                cache.history[i] = new_history
            d = ((self.attn_in[i](h) + g) * HALF)[:, None]  # (B, 1, T, E)
            c, w = attend(d, keys[:, None], values[:, None], src_mask, variant="dot", need_weights=need_weights)
            c = c * lengths.sqrt()  # (B, 1, T, E), scaled by √S as in the paper (S real source tokens)
            h = (h + self.attn_out[i](c[:, 0])) * HALF
            x = (h + x) * HALF
            if weights is not None:
                weights.append(LayerWeights(None, w))
        if cache is not None:
            cache.length = offset + tgt.size(1)
        return self.dropout(self.dec_out(x)), weights  # (B, T, E)

    def new_cache(self, capacity: int | None = None) -> ConvCache:
        """An empty decoder cache (``capacity`` is unused: each block keeps kernel-1 positions)."""
        return ConvCache(len(self.decoder))
