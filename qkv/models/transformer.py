"""The encoder–decoder Transformer of *Attention Is All You Need* (section 3), with its config.

Shapes: B batch, S source length, T target length, V vocabulary, d_model width (see qkv.attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from qkv.attention import ATTENTION_VARIANTS
from qkv.config import ConfigBase, check
from qkv.errors import QkvError
from qkv.layers import (
    Dropout,
    LayerCache,
    LayerStack,
    LayerWeights,
    SinusoidalPositionalEncoding,
    TransformerLayer,
)
from qkv.linear import Linear

__all__ = [
    "TRANSFORMER_PRESETS",
    "DecoderCache",
    "Transformer",
    "TransformerConfig",
    "build_transformer",
    "count_parameters",
    "padding_mask",
]

SHARE_CHOICES = ("none", "decoder", "all")


def check_translation_fields(cfg: Any, s: str = "model") -> None:
    """Check the fields every encoder–decoder config shares (Transformer, RNN, ConvS2S): ``max_len``,
    ``share_embeddings`` and the vocabulary sizes."""
    check(cfg.max_len > 0, s, "max_len", cfg.max_len, "must be a positive integer")
    check(
        cfg.share_embeddings in SHARE_CHOICES,
        s,
        "share_embeddings",
        cfg.share_embeddings,
        f"choose one of {', '.join(SHARE_CHOICES)}",
    )
    check(cfg.src_vocab_size >= 0, s, "src_vocab_size", cfg.src_vocab_size, "must be >= 0")
    check(cfg.tgt_vocab_size >= 0, s, "tgt_vocab_size", cfg.tgt_vocab_size, "must be >= 0")
    if cfg.share_embeddings == "all" and cfg.src_vocab_size and cfg.tgt_vocab_size:
        check(
            cfg.src_vocab_size == cfg.tgt_vocab_size,
            s,
            "share_embeddings",
            "all",
            "needs one joint vocabulary (src_vocab_size == tgt_vocab_size); use 'decoder'",
        )


def translation_embeddings(cfg: Any, width: int) -> tuple[nn.Embedding, nn.Embedding]:
    """Source and target embedding tables of an encoder–decoder model (one table for
    ``share_embeddings="all"``); the vocabulary sizes must have been filled in."""
    if cfg.src_vocab_size <= 0 or cfg.tgt_vocab_size <= 0:
        raise QkvError("model.src_vocab_size and model.tgt_vocab_size must be set (> 0) to build a model")
    src = nn.Embedding(cfg.src_vocab_size, width)
    return src, src if cfg.share_embeddings == "all" else nn.Embedding(cfg.tgt_vocab_size, width)


def check_length(tokens: Tensor, max_len: int, offset: int = 0) -> None:
    """A one-line error when positions ``offset`` .. ``offset + T - 1`` of tokens (B, T) exceed ``max_len``."""
    if offset + tokens.size(1) > max_len:
        raise QkvError(
            f"sequence of {offset + tokens.size(1)} tokens exceeds the model's max_len={max_len}; shorten the input"
        )


@dataclass
class TransformerConfig(ConfigBase):
    """Shape and regularisation of an encoder–decoder Transformer, in the paper's notation.

    ``N`` is the number of encoder layers and, unless ``N_dec`` is set, of decoder layers.
    ``dropout`` acts where the paper puts it (sublayer outputs, embeddings + positions);
    ``attention_dropout`` on attention weights (None = ``dropout``; 0 keeps the fused flash kernel on
    CPUs); ``ffn_dropout`` on the feed-forward hidden layer (0 in the paper).
    ``share_embeddings``: "none"; "decoder" ties the target embedding to the output projection;
    "all" also ties the source embedding (needs one joint vocabulary). ``attention``: "scaled" (the
    paper), "dot" (unscaled) or "per_query" (scaled, one query at a time). Vocabulary sizes of 0 are
    filled in from the tokenizers when a run is built.
    """

    d_model: int = 512
    h: int = 8
    N: int = 6
    N_dec: int | None = None
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float | None = None
    ffn_dropout: float = 0.0
    norm_first: bool = False
    max_len: int = 256
    share_embeddings: str = "decoder"
    attention: str = "scaled"
    src_vocab_size: int = 0
    tgt_vocab_size: int = 0
    pad_id: int = 0

    def __post_init__(self) -> None:
        s = "model"
        check(self.d_model > 0, s, "d_model", self.d_model, "must be a positive integer")
        check(self.h > 0, s, "h", self.h, "must be a positive integer")
        check(self.d_model % self.h == 0, s, "d_model", self.d_model, f"must be divisible by model.h={self.h}")
        check(self.N >= 1, s, "N", self.N, "needs at least one layer")
        check(self.N_dec is None or self.N_dec >= 1, s, "N_dec", self.N_dec, "needs at least one layer")
        check(self.d_ff > 0, s, "d_ff", self.d_ff, "must be a positive integer")
        check(0.0 <= self.dropout < 1.0, s, "dropout", self.dropout, "must be in [0, 1)")
        check(
            self.attention_dropout is None or 0.0 <= self.attention_dropout < 1.0,
            s,
            "attention_dropout",
            self.attention_dropout,
            "must be in [0, 1) or None (same as dropout)",
        )
        check(0.0 <= self.ffn_dropout < 1.0, s, "ffn_dropout", self.ffn_dropout, "must be in [0, 1)")
        check_translation_fields(self)
        check(
            self.attention in ATTENTION_VARIANTS,
            s,
            "attention",
            self.attention,
            f"choose one of {', '.join(ATTENTION_VARIANTS)}",
        )

    @property
    def decoder_layers(self) -> int:
        """Number of decoder layers."""
        return self.N if self.N_dec is None else self.N_dec

    KIND: ClassVar[str] = "model"

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


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids -> (B, 1, 1, S) boolean mask, True at real (non-pad) tokens."""
    return (tokens != pad_id)[:, None, None, :]


class DecoderCache:
    """The decoder's KV caches for incremental decoding, one :class:`LayerCache` per layer.

    Lifecycle: ``model.new_cache()`` -> ``model.decode(step_tokens, ..., cache=cache)`` once per step
    (self-attention K/V appended, cross-attention K/V of the memory computed at the first step only)
    -> ``reorder(index)`` when beams are re-ranked -> discard.
    """

    def __init__(self, num_layers: int, capacity: int = 64) -> None:
        self.layers = [LayerCache.empty(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Number of target positions decoded so far."""
        return self.layers[0].self_attn.length

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B',) of every layer's caches."""
        for layer in self.layers:
            layer.reorder(index)


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
        )
        for _ in range(num_layers)
    ]
    return LayerStack(layers, nn.LayerNorm(cfg.d_model) if cfg.norm_first else None)


class Transformer(nn.Module):
    """Encoder–decoder Transformer: embeddings · √d_model + sinusoidal positions, N encoder layers,
    N decoder layers (masked self-attention, cross-attention to the encoder's ``memory``), and a
    linear projection to target-vocabulary logits."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed, self.tgt_embed = translation_embeddings(cfg, d)
        self.positions = SinusoidalPositionalEncoding(d, cfg.max_len)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = _stack(cfg, cfg.N, cross_attention=False)
        self.decoder = _stack(cfg, cfg.decoder_layers, cross_attention=True)
        self.generator = Linear(d, cfg.tgt_vocab_size, bias=False)
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

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> logits (B, T, V). With a ``cache``, ``tgt`` holds only the new positions.

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
        return self.generator(x), weights  # (B, T, V)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) and shifted target input (B, T)."""
        memory, src_mask, _ = self.encode(src)
        logits, _ = self.decode(tgt, memory, src_mask)
        return logits

    def new_cache(self, capacity: int = 64) -> DecoderCache:
        """An empty decoder cache for incremental decoding."""
        return DecoderCache(len(self.decoder.layers), capacity)


def build_transformer(cfg: TransformerConfig) -> Transformer:
    """Build an encoder–decoder Transformer from its config."""
    return Transformer(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
