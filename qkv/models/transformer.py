"""The encoder–decoder Transformer of *Attention Is All You Need* (section 3), with its config.

Shapes: B batch, S source length, T target length, V vocabulary, d_model width (see qkv.attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from qkv.attention import ATTENTION_VARIANTS
from qkv.config import check
from qkv.layers import (
    ACTIVATIONS,
    DecoderCache,
    Dropout,
    LayerStack,
    LayerWeights,
    SinusoidalPositionalEncoding,
    TransformerLayer,
)
from qkv.linear import Linear
from qkv.models.shared import check_attention_shape, check_dropout, check_length, count_parameters
from qkv.models.translation import EncoderDecoderModel, StackedDecoderConfig, padding_mask, translation_embeddings

__all__ = [
    "TRANSFORMER_PRESETS",
    "DecoderCache",
    "Transformer",
    "TransformerConfig",
    "build_transformer",
    "count_parameters",
    "padding_mask",
]


@dataclass
class TransformerConfig(StackedDecoderConfig):
    """Shape and regularisation of an encoder–decoder Transformer, in the paper's notation.

    ``N`` is the number of encoder layers and, unless ``N_dec`` is set, of decoder layers (the fields
    every translation family shares are documented in :class:`~qkv.models.translation.TranslationConfig`).
    ``dropout`` acts where the paper puts it (sublayer outputs, embeddings + positions);
    ``attention_dropout`` on attention weights (None = ``dropout``; 0 keeps the fused flash kernel on
    CPUs); ``ffn_dropout`` on the feed-forward hidden layer (0 in the paper).
    ``attention``: "scaled" (the paper), "dot" (unscaled) or "per_query" (scaled, one query at a time).
    ``activation`` is the feed-forward's (relu in the paper); ``logits_bias`` adds a bias to the output
    logits; ``position_layout`` lays the sinusoid table out interleaved (the paper) or in halves (Marian):
    options that imported models (Marian's opus-mt) need, not separate classes.
    """

    h: int = 8
    d_ff: int = 2048
    attention_dropout: float | None = None
    ffn_dropout: float = 0.0
    norm_first: bool = False
    attention: str = "scaled"
    activation: str = "relu"
    logits_bias: bool = False
    position_layout: str = "interleaved"

    def __post_init__(self) -> None:
        super().__post_init__()
        s = "model"
        check_attention_shape(self)
        check(self.d_ff > 0, s, "d_ff", self.d_ff, "must be a positive integer")
        check_dropout(self, "attention_dropout", optional=True)
        check_dropout(self, "ffn_dropout")
        check(
            self.attention in ATTENTION_VARIANTS,
            s,
            "attention",
            self.attention,
            f"choose one of {', '.join(ATTENTION_VARIANTS)}",
        )
        check(self.activation in ACTIVATIONS, s, "activation", self.activation, f"choose {', '.join(ACTIVATIONS)}")
        layouts = SinusoidalPositionalEncoding.LAYOUTS
        check(
            self.position_layout in layouts,
            s,
            "position_layout",
            self.position_layout,
            f"choose {' or '.join(layouts)}",
        )

    @classmethod
    def presets(cls) -> dict[str, TransformerConfig]:
        """Named presets (``TRANSFORMER_PRESETS``)."""
        return TRANSFORMER_PRESETS


TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    "base": TransformerConfig(d_model=512, h=8, N=6, d_ff=2048, dropout=0.1),
    "big": TransformerConfig(d_model=1024, h=16, N=6, d_ff=4096, dropout=0.3),
    "small": TransformerConfig(d_model=256, h=4, N=3, d_ff=1024, dropout=0.1),
    "tiny": TransformerConfig(d_model=128, h=4, N=2, d_ff=512, dropout=0.1),
}


def _stack(cfg: TransformerConfig, num_layers: int, cross_attention: bool) -> LayerStack:
    """N identical layers; pre-LN stacks end with a LayerNorm."""
    layers = [
        TransformerLayer(
            cfg.d_model,
            cfg.h,
            cfg.d_ff,
            cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            ffn_dropout=cfg.ffn_dropout,
            norm_first=cfg.norm_first,
            cross_attention=cross_attention,
            attention=cfg.attention,
            activation=cfg.activation,
        )
        for _ in range(num_layers)
    ]
    return LayerStack(layers, nn.LayerNorm(cfg.d_model) if cfg.norm_first else None)


class Transformer(EncoderDecoderModel):
    """Encoder–decoder Transformer: embeddings · √d_model + sinusoidal positions, N encoder layers,
    N decoder layers (masked self-attention, cross-attention to the encoder's ``memory``), and a
    linear projection to target-vocabulary logits."""

    beams_share_memory = True  # cross-attention lets one memory row serve a source's beams (MultiHeadAttention)

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed, self.tgt_embed = translation_embeddings(cfg, d)
        self.positions = SinusoidalPositionalEncoding(d, cfg.max_len, cfg.position_layout)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = _stack(cfg, cfg.N, cross_attention=False)
        self.decoder = _stack(cfg, cfg.decoder_layers, cross_attention=True)
        self.generator = Linear(d, cfg.tgt_vocab_size, bias=cfg.logits_bias)
        self._init_weights()
        if cfg.share_embeddings != "none":
            self.generator.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model**-0.5)

    def _embed(self, tokens: Tensor, table: nn.Embedding, offset: int = 0) -> Tensor:
        x = table(tokens) * math.sqrt(self.cfg.d_model)  # (B, L) -> (B, L, d_model)
        return self.dropout(self.positions(x, offset))

    def encode(self, src: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor, list[LayerWeights] | None]:
        """src (B, S) -> memory (B, S, d_model), its padding mask (B, 1, 1, S), encoder weights if asked."""
        check_length(src, self.cfg.max_len)
        src_mask = padding_mask(src, self.cfg.pad_id)  # (B, 1, 1, S)
        memory, weights = self.encoder(self._embed(src, self.src_embed), src_mask, need_weights=need_weights)
        return memory, src_mask, weights

    def decode_states(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> the generator's inputs (B, T, d_model). With a ``cache``, ``tgt`` holds only the new positions.

        Target padding needs no mask: pads come after the real tokens, which the causal mask already
        hides from them.
        """
        offset = 0 if cache is None else cache.length
        check_length(tgt, self.cfg.max_len, offset)
        x = self._embed(tgt, self.tgt_embed, offset)  # (B, T, d_model)
        x, weights = self.decoder(
            x,
            is_causal=True,
            memory=memory,
            memory_mask=src_mask,
            caches=None if cache is None else cache.layers,
            need_weights=need_weights,
        )
        return x, weights

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty decoder cache for up to ``capacity`` target positions (default: ``max_len``)."""
        return DecoderCache(len(self.decoder.layers), capacity or self.cfg.max_len)


def build_transformer(cfg: TransformerConfig) -> Transformer:
    """Build an encoder–decoder Transformer from its config."""
    return Transformer(cfg)
