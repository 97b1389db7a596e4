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

from qkv.config import check
from qkv.errors import QkvError
from qkv.layers import DecoderCache, Dropout, LayerStack, LayerWeights, LearnedPositionalEmbedding, TransformerLayer
from qkv.linear import Linear
from qkv.models.shared import LanguageModelConfig, check_length

__all__ = ["GPT", "GPT_PRESETS", "GPTConfig"]


@dataclass
class GPTConfig(LanguageModelConfig):
    """Shape of a GPT (the shared fields as in :class:`~qkv.models.shared.LanguageModelConfig`).
    ``d_ff=0`` means 4·d_model; ``max_len`` is the context (block) size."""

    activation: str = "gelu_tanh"
    d_ff: int = 0
    init_std: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        s = "model"
        check(self.d_ff >= 0, s, "d_ff", self.d_ff, "must be >= 0 (0 = 4·d_model)")
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
        check_length(idx, self.cfg.max_len, offset, fix="use a shorter prompt or fewer new tokens")
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

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty KV cache for up to ``capacity`` positions (default: the context, ``max_len``)."""
        return DecoderCache(len(self.blocks.layers), capacity or self.cfg.max_len)

    @classmethod
    def from_hf(cls, directory: str) -> GPT:
        """A GPT with the weights of a Hugging Face GPT-2 directory (config.json + weights)."""
        from qkv.interop.hf import gpt_from_hf

        return gpt_from_hf(directory)
