"""The family registry: one entry per model family, from which every list of families is derived
(the config types a run may hold, the CLI's choices, which run class :func:`qkv.load` returns, which
training hooks the trainer calls).

A family is one model module (:mod:`qkv.models`) plus one :class:`Family` entry in ``FAMILIES`` below,
naming its config class, model class, data config class, training hooks and run class. The hooks and
run classes are shared by kind: :mod:`qkv.families.translation` for the encoder–decoder families,
:mod:`qkv.families.lm` for GPT and BERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from qkv.data import TaskConfig
from qkv.data.lm import TextConfig
from qkv.errors import QkvError, shown
from qkv.families.base import Run, TrainingHooks
from qkv.families.lm import BERTHooks, BERTRun, GPTHooks, GPTRun
from qkv.families.translation import TranslationHooks, TranslationRun
from qkv.models import (
    BERT,
    GPT,
    BERTConfig,
    ConvS2S,
    ConvS2SConfig,
    EncoderDecoderModel,
    GPTConfig,
    RNNConfig,
    RNNSeq2Seq,
    Transformer,
    TransformerConfig,
)

__all__ = ["FAMILIES", "TRANSLATION_FAMILIES", "Family", "family_named", "family_of"]


@dataclass(frozen=True)
class Family:
    """One model family: its name (the CLI's ``--family`` and config.json's ``"family"``), its config
    class and model class (``model(config)`` builds it), the data config class of its ``task`` section,
    its training hooks and run class, a one-line description, and older names that still load."""

    name: str
    config: type
    model: type[nn.Module]
    task: type
    hooks: type[TrainingHooks]
    run: type[Run]
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def translation(self) -> bool:
        """Whether it is an encoder–decoder family (translation data, decoding, BLEU)."""
        return issubclass(self.model, EncoderDecoderModel)

    def presets(self) -> dict[str, Any]:
        """Named model presets of this family."""
        return self.config.presets()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "transformer",
            TransformerConfig,
            Transformer,
            TaskConfig,
            TranslationHooks,
            TranslationRun,
            "the paper's encoder–decoder Transformer",
            aliases=("seq2seq",),
        ),
        Family(
            "rnn",
            RNNConfig,
            RNNSeq2Seq,
            TaskConfig,
            TranslationHooks,
            TranslationRun,
            "baseline: bidirectional GRU encoder, GRU decoder with additive attention",
        ),
        Family("cnn", ConvS2SConfig, ConvS2S, TaskConfig, TranslationHooks, TranslationRun, "baseline: ConvS2S"),
        Family("gpt", GPTConfig, GPT, TextConfig, GPTHooks, GPTRun, "decoder-only causal language model"),
        Family("bert", BERTConfig, BERT, TextConfig, BERTHooks, BERTRun, "encoder-only masked language model"),
    )
}
# The encoder–decoder families: same data, decoding and metrics.
TRANSLATION_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.translation)


def family_named(name: str) -> Family:
    """The family called ``name`` (or one of its older names)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.aliases:
            return family
    raise QkvError(f"unknown model family {shown(name)}: choose one of {', '.join(FAMILIES)}")


def family_of(model_config: Any) -> Family:
    """The family whose config class ``model_config`` is."""
    for family in FAMILIES.values():
        if type(model_config) is family.config:
            return family
    raise QkvError(f"unknown model config type {type(model_config).__name__}")
