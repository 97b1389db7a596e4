"""Training objectives, each summed over the predicted tokens (the trainer normalises by their count)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["label_smoothed_loss", "token_loss"]


def label_smoothed_loss(logits: Tensor, target: Tensor, eps: float, pad_id: int = 0) -> Tensor:
    """Sum over non-pad targets of (1-ε)·NLL + ε·mean_v(-log p_v); logits (B, T, V), target (B, T)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=eps,
        reduction="sum",
    )


def token_loss(logits: Tensor, target: Tensor, eps: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Summed (optionally label-smoothed) cross-entropy of every target that is not ``ignore_index``:
    the causal-LM loss (no ignored targets) and the masked-LM loss (unselected tokens are -100)."""
    return label_smoothed_loss(logits, target, eps, ignore_index)
