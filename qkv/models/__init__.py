"""Model builders: the encoder–decoder Transformer (and, later, GPT, BERT and baselines)."""

from qkv.models.transformer import (
    TRANSFORMER_PRESETS,
    DecoderCache,
    Transformer,
    TransformerConfig,
    build_transformer,
    count_parameters,
    padding_mask,
)

__all__ = [
    "TRANSFORMER_PRESETS",
    "DecoderCache",
    "Transformer",
    "TransformerConfig",
    "build_transformer",
    "count_parameters",
    "padding_mask",
]
