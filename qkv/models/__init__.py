"""The model families, each one module built from :mod:`qkv.layers`, and the parts they share.

* :mod:`~qkv.models.transformer`: the encoder–decoder Transformer of the paper;
* :mod:`~qkv.models.rnn` and :mod:`~qkv.models.convs2s`: its GRU and ConvS2S baselines;
* :mod:`~qkv.models.gpt` (decoder-only) and :mod:`~qkv.models.bert` (encoder-only);
* :mod:`~qkv.models.translation`: what the three encoder–decoder families share (config fields,
  embeddings, padding mask, cache protocol, ``forward``); :mod:`~qkv.models.shared`: what every
  family shares (shape checks, length check, parameter count, the GPT/BERT config base).

Which family a run uses, with its training hooks and run class, is registered in :mod:`qkv.families`.
"""

from qkv.layers import DecoderCache
from qkv.models.bert import BERT, BERT_PRESETS, BERTConfig, BERTForMLM
from qkv.models.convs2s import ConvS2S, ConvS2SConfig
from qkv.models.gpt import GPT, GPT_PRESETS, GPTConfig
from qkv.models.rnn import RNNConfig, RNNSeq2Seq
from qkv.models.shared import count_parameters
from qkv.models.transformer import TRANSFORMER_PRESETS, Transformer, TransformerConfig, build_transformer
from qkv.models.translation import EncoderDecoderModel, TranslationConfig, padding_mask

__all__ = [
    "BERT",
    "BERT_PRESETS",
    "GPT",
    "GPT_PRESETS",
    "TRANSFORMER_PRESETS",
    "BERTConfig",
    "BERTForMLM",
    "ConvS2S",
    "ConvS2SConfig",
    "DecoderCache",
    "EncoderDecoderModel",
    "GPTConfig",
    "RNNConfig",
    "RNNSeq2Seq",
    "TranslationConfig",
    "Transformer",
    "TransformerConfig",
    "build_transformer",
    "count_parameters",
    "padding_mask",
]
