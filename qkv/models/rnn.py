"""The RNN baseline: a GRU encoder–decoder with additive attention (Bahdanau et al., 2015).

It is an :class:`~qkv.models.translation.EncoderDecoderModel` like the Transformer (``encode``,
``decode`` with a cache, ``new_cache``, ``forward``), so the trainer, decoding, metrics and
``qkv translate/evaluate`` work on it unchanged.
The decoder is sequential by nature: step t needs the state of step t-1.

Shapes: B batch, S source length, T target length, E embedding width (``d_model``), Hd hidden width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from qkv.attention import additive_attention
from qkv.config import check
from qkv.layers import Dropout, LayerWeights
from qkv.linear import Linear
from qkv.models.shared import check_length
from qkv.models.translation import EncoderDecoderModel, TranslationConfig, padding_mask, translation_embeddings

__all__ = ["RNNCache", "RNNConfig", "RNNSeq2Seq"]


@dataclass
class RNNConfig(TranslationConfig):
    """Shape of the GRU encoder–decoder: ``d_model`` embedding width, ``hidden`` the decoder state
    (the bidirectional encoder has ``hidden // 2`` units per direction), ``N`` encoder layers; the
    shared fields as in :class:`~qkv.models.translation.TranslationConfig`."""

    d_model: int = 256
    N: int = 1
    dropout: float = 0.3
    hidden: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.hidden > 0 and self.hidden % 2 == 0, "model", "hidden", self.hidden, "must be a positive even integer"
        )

    @classmethod
    def presets(cls) -> dict[str, RNNConfig]:
        """Named presets."""
        return {"small": RNNConfig(), "tiny": RNNConfig(d_model=128, hidden=256)}


class RNNCache:
    """Decoder state for incremental decoding.

    Lifecycle: ``model.new_cache()`` -> ``model.decode(step_tokens, ..., cache=cache)`` per step (the
    projected keys of the memory and the first state are computed at the first step and kept; the GRU
    state is replaced each step) -> ``reorder(index)`` when beams are re-ranked -> discard.
    """

    def __init__(self) -> None:
        self.length = 0
        self.state: Tensor | None = None  # (B, Hd)
        self.keys: Tensor | None = None  # (B, S, Hd)

    def reorder(self, index: Tensor, *, memory_index: Tensor | None = None) -> None:
        """Keep batch rows ``index`` of the state, and rows ``memory_index`` of the memory's projected keys
        (None: they stay as they are)."""
        if self.state is not None and self.keys is not None:
            self.state = self.state.index_select(0, index)
            if memory_index is not None:
                self.keys = self.keys.index_select(0, memory_index)


class RNNSeq2Seq(EncoderDecoderModel):
    """Bidirectional GRU encoder; GRU decoder that attends (additively) to the encoder states before
    each step: a_t = softmax(vᵀ tanh(W s_{t-1} + U h_j)), c_t = Σ a_tj h_j, s_t = GRU([y_{t-1}; c_t], s_{t-1}),
    logits = W_g · W_o [s_t; c_t; y_{t-1}] (W_g tied to the target embedding)."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, Hd = cfg.d_model, cfg.hidden
        self.src_embed, self.tgt_embed = translation_embeddings(cfg, E)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = nn.GRU(E, Hd // 2, num_layers=cfg.N, batch_first=True, bidirectional=True)
        self.init_state = Linear(Hd, Hd)
        self.query_proj = Linear(Hd, Hd, bias=False)  # W
        self.key_proj = Linear(Hd, Hd)  # U
        self.score = nn.Parameter(torch.empty(Hd))  # v
        self.cell = nn.GRUCell(E + Hd, Hd)
        self.pre_output = Linear(Hd + Hd + E, E)
        self.generator = Linear(E, cfg.tgt_vocab_size, bias=False)
        nn.init.normal_(self.score, std=Hd**-0.5)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, std=E**-0.5)
        if cfg.share_embeddings != "none":
            self.generator.weight = self.tgt_embed.weight

    def encode(self, src: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor, list[LayerWeights] | None]:
        """src (B, S) -> memory (B, S, Hd), its padding mask (B, 1, 1, S), no encoder weights."""
        check_length(src, self.cfg.max_len)
        src_mask = padding_mask(src, self.cfg.pad_id)  # (B, 1, 1, S)
        lengths = src_mask.sum(-1).flatten().clamp(min=1).cpu()  # (B,)
        x = self.dropout(self.src_embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, Hd)
        return memory, src_mask, None

    def _first_state(self, memory: Tensor, src_mask: Tensor) -> Tensor:
        """s_0 = tanh(W_s · mean of the encoder states over real positions), (B, Hd)."""
        real = src_mask[:, 0, 0, :, None].to(memory.dtype)  # (B, S, 1)
        mean = (memory * real).sum(1) / real.sum(1).clamp(min=1.0)  # (B, Hd)
        return torch.tanh(self.init_state(mean))

    def decode_states(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        cache: RNNCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[LayerWeights] | None]:
        """tgt (B, T) -> the generator's inputs (B, T, E), one GRU step per position. With a ``cache``,
        ``tgt`` holds only the new positions and the state continues from the cache. Weights: the additive
        attention of each step, as one layer's cross-attention (B, 1, T, S)."""
        offset = 0 if cache is None else cache.length
        check_length(tgt, self.cfg.max_len, offset)
        if cache is not None and cache.state is not None and cache.keys is not None:
            state, keys = cache.state, cache.keys
        else:
            state, keys = self._first_state(memory, src_mask), self.key_proj(memory)  # (B, Hd), (B, S, Hd)
        mask = src_mask[:, 0]  # (B, 1, S)
        emb = self.dropout(self.tgt_embed(tgt))  # (B, T, E)
        outputs, rows = [], []
        for t in range(tgt.size(1)):
            q = self.query_proj(state)[:, None]  # (B, 1, Hd)
            context, w = additive_attention(q, keys, memory, self.score, mask)  # (B, 1, Hd), (B, 1, S)
            context = context[:, 0]  # (B, Hd)
            state = self.cell(torch.cat([emb[:, t], context], dim=-1), state)  # (B, Hd)
            outputs.append(torch.cat([state, context, emb[:, t]], dim=-1))  # (B, 2Hd + E)
            rows.append(w)
        if cache is not None:
            cache.state, cache.keys, cache.length = state, keys, offset + tgt.size(1)
        hidden = self.pre_output(self.dropout(torch.stack(outputs, dim=1)))  # (B, T, E)
        weights = [LayerWeights(None, torch.cat(rows, dim=1)[:, None])] if need_weights else None  # (B, 1, T, S)
        return hidden, weights

    def new_cache(self, capacity: int | None = None) -> RNNCache:
        """An empty decoder state (``capacity`` is unused: the state has a fixed size)."""
        return RNNCache()
