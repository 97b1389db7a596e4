"""Turning text pairs into padded id tensors for teacher-forced training."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkv.data.vocab import Vocab

__all__ = ["Seq2SeqBatch", "encode_pairs", "encode_source", "load_rng_state", "pad", "rng_state"]


def pad(seqs: list[list[int]], pad_id: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """Right-pad id lists into a (B, L) long tensor on ``device`` (batches are made on the CPU and moved
    to the model's device; inference makes its inputs there directly)."""
    L = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), L), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    return out


@dataclass
class Seq2SeqBatch:
    """src (B, S) ends with <eos>; tgt_in (B, T) = <bos> y; tgt_out (B, T) = y <eos>; all right-padded."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    @property
    def num_target_tokens(self) -> int:
        """Real (non-pad) target tokens, the unit of loss and throughput."""
        return int((self.tgt_out != 0).sum())

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        """The same batch on ``device``."""
        return Seq2SeqBatch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device))


def encode_source(texts: list[str], vocab: Vocab, device: torch.device | str = "cpu") -> Tensor:
    """Source texts -> (B, S) ids with <eos>, right-padded, on ``device``."""
    return pad([vocab.encode(t) + [vocab.eos_id] for t in texts], vocab.pad_id, device)


def encode_pairs(
    pairs: list[tuple[str, str]], src_vocab: Vocab, tgt_vocab: Vocab, device: torch.device | str = "cpu"
) -> Seq2SeqBatch:
    """Text pairs -> a padded batch on ``device``."""
    tgt = [tgt_vocab.encode(t) for _, t in pairs]
    return Seq2SeqBatch(
        src=encode_source([s for s, _ in pairs], src_vocab, device),
        tgt_in=pad([[tgt_vocab.bos_id] + y for y in tgt], tgt_vocab.pad_id, device),
        tgt_out=pad([y + [tgt_vocab.eos_id] for y in tgt], tgt_vocab.pad_id, device),
    )


def rng_state(rng: random.Random) -> dict[str, Any]:
    """A Python RNG's state as JSON (a stream's position)."""
    version, internal, gauss = rng.getstate()
    return {"rng": [version, list(internal), gauss]}


def load_rng_state(rng: random.Random, state: dict[str, Any]) -> None:
    """Restore a state written by :func:`rng_state`."""
    version, internal, gauss = state["rng"]
    rng.setstate((version, tuple(internal), gauss))
