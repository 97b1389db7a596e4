"""GPT: a decoder-only Transformer (causal language model) built from the same layers as the paper's
model — pre-LN ``TransformerLayer``s without cross-attention, learned positions, GELU, tied input and
output embeddings.

Shapes: B batch, T new positions, S all positions so far (cached + new), V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from qkv.config import ConfigBase, check
from qkv.errors import QkvError
from qkv.layers import ACTIVATIONS, Dropout, LayerStack, LayerWeights, LearnedPositionalEmbedding, TransformerLayer
from qkv.linear import Linear
from qkv.models.transformer import DecoderCache

__all__ = ["GPT", "GPT_PRESETS", "GPTConfig"]


@dataclass
class GPTConfig(ConfigBase):
    """Shape of a GPT. ``d_ff=0`` means 4·d_model; ``max_len`` is the context (block) size."""

    vocab_size: int = 0
    max_len: int = 1024
    d_model: int = 768
    h: int = 12
    N: int = 12
    d_ff: int = 0
    dropout: float = 0.0
    activation: str = "gelu_tanh"
    eps: float = 1e-5
    init_std: float = 0.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        s = "model"
        check(self.vocab_size >= 0, s, "vocab_size", self.vocab_size, "must be >= 0 (0 = from the tokenizer)")
        check(self.max_len > 0, s, "max_len", self.max_len, "must be a positive integer")
        check(self.d_model > 0 and self.h > 0, s, "d_model", self.d_model, "d_model and h must be positive")
        check(self.d_model % self.h == 0, s, "d_model", self.d_model, f"must be divisible by model.h={self.h}")
        check(self.N >= 1, s, "N", self.N, "needs at least one layer")
        check(self.d_ff >= 0, s, "d_ff", self.d_ff, "must be >= 0 (0 = 4·d_model)")
        check(0.0 <= self.dropout < 1.0, s, "dropout", self.dropout, "must be in [0, 1)")
        check(self.activation in ACTIVATIONS, s, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        check(self.eps > 0, s, "eps", self.eps, "must be > 0")
        check(self.init_std >= 0, s, "init_std", self.init_std, "must be >= 0 (0 = √(2 / (5·d_model)))")

    @property
    def hidden(self) -> int:
        """The feed-forward width."""
        return self.d_ff or 4 * self.d_model

    @property
    def std(self) -> float:
        """Standard deviation of the initial weights: ``init_std``, or by default √(2 / (5·d_model))
        ("small init", Nguyen & Salazar, 2019) — 0.023 at GPT-2's width 768 (GPT-2 uses 0.02), 0.056 at 128,
        so narrow models do not start too small to learn in a short run."""
        return self.init_std or math.sqrt(2 / (5 * self.d_model))

    KIND: ClassVar[str] = "GPT"

    @classmethod
    def presets(cls) -> dict[str, GPTConfig]:
        """Named presets (``GPT_PRESETS``)."""
        return GPT_PRESETS


GPT_PRESETS = {
    "gpt2": GPTConfig(vocab_size=50257, max_len=1024, d_model=768, h=12, N=12),
    "shakespeare-char": GPTConfig(max_len=64, d_model=128, h=4, N=4, dropout=0.0),
}


class GPT(nn.Module):
    """Token + learned position embeddings, N pre-LN causal self-attention layers, final LayerNorm,
    and the output projection tied to the token embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise QkvError("model.vocab_size must be set (> 0) to build a GPT")
        self.cfg = cfg
        d = cfg.d_model
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        self.positions = LearnedPositionalEmbedding(d, cfg.max_len)
        self.dropout = Dropout(cfg.dropout)
        layers = [
            TransformerLayer(d, cfg.h, cfg.hidden, cfg.dropout, norm_first=True, activation=cfg.activation, eps=cfg.eps)
            for _ in range(cfg.N)
        ]
        self.blocks = LayerStack(layers, nn.LayerNorm(d, eps=cfg.eps))
        self.lm_head = Linear(d, cfg.vocab_size, bias=False)
        self._init_weights()
        self.lm_head.weight = self.tok_embed.weight

    def _init_weights(self) -> None:
        """GPT-2's scheme with ``cfg.std``: matrices and embeddings N(0, std²), zero biases, and the two
        projections that write into the residual stream (W^O, W_2) scaled down by 1/√(2N)."""
        std = self.cfg.std
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)
        for layer in self.blocks.layers:
            for residual_out in (layer.self_attn.out_proj, layer.ffn.w_2):
                nn.init.normal_(residual_out.weight, std=std / math.sqrt(2 * self.cfg.N))
        for module in self.modules():
            if isinstance(module, Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def decode(
        self,
        idx: Tensor,
        *,
        key_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
        last_only: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """idx (B, T) -> logits (B, T, V) (or (B, 1, V) with ``last_only``) and, if asked, weights.

        ``key_mask`` (B, S), True at real tokens, hides padding (left-padded batches) from every
        query; ``positions`` (B, T) gives their position ids; with a ``cache`` only new tokens are fed.
        """
        offset = 0 if cache is None else cache.length
        if offset + idx.size(1) > self.cfg.max_len:
            raise QkvError(
                f"{offset + idx.size(1)} tokens exceed the model's context of {self.cfg.max_len}; "
                "use a shorter prompt or fewer new tokens"
            )
        x = self.dropout(self.positions(self.tok_embed(idx), offset, positions))  # (B, T, d_model)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        x, weights = self.blocks(
            x, mask, is_causal=True, caches=None if cache is None else cache.layers, need_weights=need_weights
        )
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x), weights  # (B, T, V)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, V) for idx (B, T)."""
        return self.decode(idx)[0]

    def new_cache(self, capacity: int = 64) -> DecoderCache:
        """An empty KV cache for incremental decoding."""
        return DecoderCache(len(self.blocks.layers), capacity)

    @classmethod
    def from_hf(cls, directory: str) -> GPT:
        """A GPT with the weights of a Hugging Face GPT-2 directory (config.json + weights)."""
        from qkv.models.hf import gpt_from_hf

        return gpt_from_hf(directory)
