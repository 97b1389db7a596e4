"""BERT: an encoder-only Transformer built from the same layers as the paper's encoder — post-LN
``TransformerLayer``s with GELU — plus token, position and segment embeddings and a masked-language-
model head tied to the token embedding.

Shapes: B batch, T tokens, V vocabulary, d_model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from qkv.config import check
from qkv.errors import QkvError
from qkv.layers import Dropout, LayerStack, LayerWeights, LearnedPositionalEmbedding, TransformerLayer
from qkv.linear import Linear
from qkv.models.shared import LanguageModelConfig, check_dropout, check_length

__all__ = ["BERT", "BERTConfig", "BERT_PRESETS", "mean_pool"]


@dataclass
class BERTConfig(LanguageModelConfig):
    """Shape of a BERT (the shared fields as in :class:`~qkv.models.shared.LanguageModelConfig`).
    ``pooler`` keeps the [CLS] pooler of checkpoints that have one."""

    max_len: int = 512
    dropout: float = 0.1
    eps: float = 1e-12
    type_vocab_size: int = 2
    d_ff: int = 3072
    attention_dropout: float | None = None
    pooler: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        s = "model"
        check(self.type_vocab_size >= 1, s, "type_vocab_size", self.type_vocab_size, "must be >= 1")
        check(self.d_ff > 0, s, "d_ff", self.d_ff, "must be a positive integer")
        check_dropout(self, "attention_dropout", optional=True)

    KIND: ClassVar[str] = "BERT"

    @classmethod
    def presets(cls) -> dict[str, BERTConfig]:
        """Named presets (``BERT_PRESETS``)."""
        return BERT_PRESETS


BERT_PRESETS = {
    "bert-base": BERTConfig(vocab_size=30522, d_model=768, h=12, N=12, d_ff=3072),
    "bert-mini": BERTConfig(max_len=128, d_model=256, h=4, N=4, d_ff=1024, dropout=0.1),
}


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of hidden (B, T, d) over real tokens, attention_mask (B, T) True/1 at real tokens -> (B, d)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class BERT(nn.Module):
    """Embeddings (token + position + segment, LayerNorm, dropout), N post-LN encoder layers, and a
    masked-LM head (dense, GELU, LayerNorm, projection tied to the token embedding)."""

    def __init__(self, cfg: BERTConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise QkvError("model.vocab_size must be set (> 0) to build a BERT")
        self.cfg = cfg
        d = cfg.d_model
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        self.positions = LearnedPositionalEmbedding(d, cfg.max_len)
        self.segment_embed = nn.Embedding(cfg.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=cfg.eps)
        self.dropout = Dropout(cfg.dropout)
        layers = [
            TransformerLayer(
                d,
                cfg.h,
                cfg.d_ff,
                cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                norm_first=False,
                activation=cfg.activation,
                eps=cfg.eps,
            )
            for _ in range(cfg.N)
        ]
        self.encoder = LayerStack(layers, None)
        self.mlm_dense = Linear(d, d)
        self.mlm_norm = nn.LayerNorm(d, eps=cfg.eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.mlm_head = skip_init(Linear, d, cfg.vocab_size)  # tied: the token embedding and mlm_bias
        self.mlm_head.weight, self.mlm_head.bias = self.tok_embed.weight, self.mlm_bias
        self.pooler = Linear(d, d) if cfg.pooler else None
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's initialisation: N(0, 0.02) for matrices and embeddings, zero biases."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def encode(
        self,
        ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """ids (B, T) -> hidden states (B, T, d_model), and each layer's weights when asked.
        ``attention_mask`` (B, T) is True (or 1) at real tokens."""
        check_length(ids, self.cfg.max_len)
        segments = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = self.positions(self.tok_embed(ids)) + self.segment_embed(segments)
        x = self.dropout(self.embed_norm(x))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        return self.encoder(x, mask, need_weights=need_weights)

    def forward(
        self, ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Hidden states (B, T, d_model)."""
        return self.encode(ids, attention_mask, token_type_ids)[0]

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Masked-LM logits (B, T, V) from hidden states."""
        h = self.mlm_norm(F.gelu(self.mlm_dense(hidden)))
        return self.mlm_head(h)

    @classmethod
    def from_hf(cls, directory: str) -> BERT:
        """A BERT with the weights of a Hugging Face BERT directory (config.json + weights)."""
        from qkv.interop.hf import bert_from_hf

        return bert_from_hf(directory)


class BERTForMLM(nn.Module):
    """BERT returning masked-LM logits: the module trained by ``qkv train`` (and wrapped by DDP)."""

    def __init__(self, bert: BERT) -> None:
        super().__init__()
        self.bert = bert
        self.cfg = bert.cfg

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, T, V)."""
        return self.bert.mlm_logits(self.bert(ids, attention_mask))
