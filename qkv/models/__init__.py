"""Model builders: the encoder–decoder Transformer (here), GPT, BERT, and the RNN and ConvS2S baselines (submodules)."""

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
