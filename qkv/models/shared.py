"""Parts every model family shares: the attention-shape checks of a config, the length check of an
input, and the parameter count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from qkv.config import ConfigBase, check
from qkv.errors import QkvError
from qkv.layers import ACTIVATIONS

__all__ = ["LanguageModelConfig", "check_attention_shape", "check_dropout", "check_length", "count_parameters"]


def check_dropout(cfg: Any, name: str = "dropout", *, optional: bool = False, s: str = "model") -> None:
    """``cfg.<name>`` is a probability in [0, 1) (or, with ``optional``, None: the same as ``dropout``)."""
    value = getattr(cfg, name)
    if optional and value is None:
        return
    check(0.0 <= value < 1.0, s, name, value, "must be in [0, 1)" + (" or None (same as dropout)" if optional else ""))


def check_attention_shape(cfg: Any, s: str = "model") -> None:
    """The fields of every attention model: ``d_model`` and ``h`` positive with d_model = h · d_k,
    ``N`` >= 1 layers, ``dropout`` in [0, 1)."""
    check(cfg.d_model > 0, s, "d_model", cfg.d_model, "must be a positive integer")
    check(cfg.h > 0, s, "h", cfg.h, "must be a positive integer")
    check(cfg.d_model % cfg.h == 0, s, "d_model", cfg.d_model, f"must be divisible by model.h={cfg.h}")
    check(cfg.N >= 1, s, "N", cfg.N, "needs at least one layer")
    check_dropout(cfg, "dropout", s=s)


def check_length(tokens: Tensor, max_len: int, offset: int = 0, *, fix: str = "shorten the input") -> None:
    """A one-line error when positions ``offset`` .. ``offset + T - 1`` of tokens (B, T) exceed ``max_len``."""
    n = offset + tokens.size(1)
    if n > max_len:
        raise QkvError(f"{n} tokens exceed the model's max_len={max_len}; {fix}")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class LanguageModelConfig(ConfigBase):
    """Fields GPT and BERT share, with their checks: ``vocab_size`` (0 = from the tokenizer),
    ``max_len`` (the context), ``d_model``, ``h``, ``N``, ``dropout``, the feed-forward ``activation``,
    LayerNorm's ``eps`` and ``pad_id``. Subclasses add their own fields and checks."""

    vocab_size: int = 0
    max_len: int = 1024
    d_model: int = 768
    h: int = 12
    N: int = 12
    dropout: float = 0.0
    activation: str = "gelu"
    eps: float = 1e-5
    pad_id: int = 0

    def __post_init__(self) -> None:
        s = "model"
        check(self.vocab_size >= 0, s, "vocab_size", self.vocab_size, "must be >= 0 (0 = from the tokenizer)")
        check(self.max_len > 0, s, "max_len", self.max_len, "must be a positive integer")
        check_attention_shape(self)
        check(self.activation in ACTIVATIONS, s, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        check(self.eps > 0, s, "eps", self.eps, "must be > 0")
