"""What the three encoder–decoder families share (the Transformer and its RNN and ConvS2S baselines):
the config fields and their checks, the embedding tables, the padding mask, the decoder-cache
protocol, ``decode`` (the generator over ``decode_states``) and the teacher-forced ``forward``. Each
family keeps only what differs: its ``encode``, ``decode_states`` and cache.

Shapes: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from qkv.config import ConfigBase, check
from qkv.errors import QkvError
from qkv.layers import LayerWeights
from qkv.models.shared import check_dropout
from qkv.objectives import LossSums, linear_label_smoothed_loss

__all__ = [
    "SHARE_CHOICES",
    "DecoderState",
    "EncoderDecoderModel",
    "StackedDecoderConfig",
    "TranslationConfig",
    "padding_mask",
    "translation_embeddings",
]

SHARE_CHOICES = ("none", "decoder", "all")


@dataclass
class TranslationConfig(ConfigBase):
    """Fields every encoder–decoder config has: ``d_model`` (embedding width), ``N`` encoder layers,
    ``dropout``, ``max_len`` (longest source or target, special tokens included), ``share_embeddings``
    ("none"; "decoder" ties the target embedding to the output projection; "all" also ties the source
    embedding and needs one joint vocabulary) and the vocabulary sizes (0 = filled in from the
    tokenizers when a run is built). Subclasses add their own fields and checks."""

    d_model: int = 512
    N: int = 6
    dropout: float = 0.1
    max_len: int = 256
    share_embeddings: str = "decoder"
    src_vocab_size: int = 0
    tgt_vocab_size: int = 0
    pad_id: int = 0

    KIND: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        s = "model"
        check(self.d_model > 0, s, "d_model", self.d_model, "must be a positive integer")
        check(self.N >= 1, s, "N", self.N, "needs at least one layer")
        check_dropout(self)
        check(self.max_len > 0, s, "max_len", self.max_len, "must be a positive integer")
        check(
            self.share_embeddings in SHARE_CHOICES,
            s,
            "share_embeddings",
            self.share_embeddings,
            f"choose one of {', '.join(SHARE_CHOICES)}",
        )
        check(self.src_vocab_size >= 0, s, "src_vocab_size", self.src_vocab_size, "must be >= 0")
        check(self.tgt_vocab_size >= 0, s, "tgt_vocab_size", self.tgt_vocab_size, "must be >= 0")
        if self.share_embeddings == "all" and self.src_vocab_size and self.tgt_vocab_size:
            check(
                self.src_vocab_size == self.tgt_vocab_size,
                s,
                "share_embeddings",
                "all",
                "needs one joint vocabulary (src_vocab_size == tgt_vocab_size); use 'decoder'",
            )


@dataclass
class StackedDecoderConfig(TranslationConfig):
    """A translation config whose decoder is a stack of layers: ``N_dec`` of them (None = ``N``)."""

    N_dec: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.N_dec is None or self.N_dec >= 1, "model", "N_dec", self.N_dec, "needs at least one layer")

    @property
    def decoder_layers(self) -> int:
        """Number of decoder layers."""
        return self.N if self.N_dec is None else self.N_dec


def translation_embeddings(cfg: TranslationConfig, width: int) -> tuple[nn.Embedding, nn.Embedding]:
    """Source and target embedding tables (one table for ``share_embeddings="all"``); the vocabulary
    sizes must have been filled in."""
    if cfg.src_vocab_size <= 0 or cfg.tgt_vocab_size <= 0:
        raise QkvError("model.src_vocab_size and model.tgt_vocab_size must be set (> 0) to build a model")
    src = nn.Embedding(cfg.src_vocab_size, width)
    return src, src if cfg.share_embeddings == "all" else nn.Embedding(cfg.tgt_vocab_size, width)


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids -> (B, 1, 1, S) boolean mask, True at real (non-pad) tokens."""
    return (tokens != pad_id)[:, None, None, :]


class DecoderState(Protocol):
    """What decoding needs of a family's decoder cache: how many target positions it holds, and
    ``reorder`` to keep batch rows when beams are re-ranked. Lifecycle: ``model.new_cache(capacity)``
    -> ``model.decode(new_tokens, ..., cache=cache)`` once per step -> ``reorder`` -> discard."""

    @property
    def length(self) -> int:
        """Target positions decoded so far."""
        ...

    def reorder(self, index: Tensor, *, memory_index: Tensor | None = None) -> None:
        """Keep batch rows ``index`` (B',) of what the decoder computed from its own inputs, and rows
        ``memory_index`` of what it computed from the memory alone; None leaves that as it is (beam search
        re-ranks the beams of one source, whose memory is the same)."""
        ...


class EncoderDecoderModel(nn.Module):
    """The interface of every translation family: ``encode`` the source once, ``decode_states`` target
    positions (all at once, or the new ones on a cache) into the vectors its ``generator`` (a linear map
    to the target vocabulary) turns into logits, ``new_cache``. ``decode`` gives logits, ``forward`` is
    teacher forcing. Greedy and beam search (:mod:`qkv.decode`), training and evaluation need nothing else."""

    cfg: Any
    generator: nn.Linear
    # True where decode_states takes a memory of B rows with targets of B·K rows, each memory row serving K
    # consecutive target rows (beam search's beams of one source), which then need no K copies of it
    beams_share_memory: ClassVar[bool] = False

    def encode(self, src: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor, list[LayerWeights] | None]:
        """src (B, S) -> memory (B, S, ·), its padding mask (B, 1, 1, S), encoder weights if asked."""
        raise NotImplementedError

    def decode_states(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: Any = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> the generator's inputs (B, T, ·), and weights if asked. With a ``cache``, ``tgt``
        holds only the new positions."""
        raise NotImplementedError

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: Any = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> logits (B, T, V), and weights if asked. With a ``cache``, ``tgt`` holds only
        the new positions."""
        states, weights = self.decode_states(tgt, memory, src_mask, cache=cache, need_weights=need_weights)
        return self.generator(states), weights  # (B, T, V)

    def new_cache(self, capacity: int | None = None) -> DecoderState:
        """An empty decoder cache for up to ``capacity`` target positions (default: ``max_len``)."""
        raise NotImplementedError

    def forward(
        self, src: Tensor, tgt: Tensor, target: Tensor | None = None, label_smoothing: float = 0.0
    ) -> Tensor | LossSums:
        """Teacher forcing for source (B, S) and shifted target input (B, T): logits (B, T, V), or with
        ``target`` (B, T) the summed label-smoothed loss of predicting it and the plain NLL sum
        (:func:`~qkv.objectives.linear_label_smoothed_loss`: the generator and the loss in one pass,
        what training calls)."""
        memory, src_mask, _ = self.encode(src)
        states, _ = self.decode_states(tgt, memory, src_mask)
        if target is None:
            return self.generator(states)
        g = self.generator
        return linear_label_smoothed_loss(states, g.weight, g.bias, target, label_smoothing, self.cfg.pad_id)
