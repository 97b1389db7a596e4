"""One layer of each family, and small probe models built from them, for the comparison experiments.

Each probe layer maps (B, n, d) -> (B, n, d) and is the layer its family's model is built from:
a Transformer encoder layer (:class:`qkv.layers.TransformerLayer`), a GRU layer (the RNN baseline's
recurrence) and a ConvS2S block (:class:`qkv.models.convs2s.ConvBlock` with its √½ residual).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qkv.layers import SinusoidalPositionalEncoding, TransformerLayer
from qkv.linear import Linear
from qkv.models.convs2s import ConvBlock

__all__ = ["FAMILIES", "ConvLayer", "GRULayer", "ProbeModel", "SelfAttentionLayer", "probe_layer", "seeded"]

FAMILIES = ("transformer", "rnn", "cnn")


class SelfAttentionLayer(nn.Module):
    """A Transformer encoder layer (post-LN, d_ff = 4d, no dropout) over the whole sequence."""

    def __init__(self, d: int, *, heads: int = 4, kernel: int = 3, attention: str = "scaled") -> None:
        super().__init__()
        self.layer = TransformerLayer(d, heads, 4 * d, 0.0, attention=attention)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, d) -> (B, n, d)."""
        return self.layer(x)[0]


class GRULayer(nn.Module):
    """A unidirectional GRU layer: step t reads step t-1's state, so n steps run one after another."""

    def __init__(self, d: int, *, heads: int = 4, kernel: int = 3, attention: str = "scaled") -> None:
        super().__init__()
        self.gru = nn.GRU(d, d, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, d) -> (B, n, d)."""
        return self.gru(x)[0]


class ConvLayer(nn.Module):
    """A ConvS2S encoder block: (GLU(Conv_k(x)) + x) · √½, a centred window of ``kernel`` positions."""

    def __init__(self, d: int, *, heads: int = 4, kernel: int = 3, attention: str = "scaled") -> None:
        super().__init__()
        self.block = ConvBlock(d, kernel)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, d) -> (B, n, d)."""
        return (self.block(x)[0] + x) * math.sqrt(0.5)


PROBE_LAYERS: dict[str, type[nn.Module]] = {"transformer": SelfAttentionLayer, "rnn": GRULayer, "cnn": ConvLayer}


def probe_layer(family: str, d: int, *, heads: int = 4, kernel: int = 3, attention: str = "scaled") -> nn.Module:
    """One layer of ``family`` ("transformer", "rnn" or "cnn") of width ``d``."""
    return PROBE_LAYERS[family](d, heads=heads, kernel=kernel, attention=attention)


class ProbeModel(nn.Module):
    """Token embedding + sinusoidal positions, ``layers`` layers of one family, a linear read-out.

    ``readout="last"`` classifies the whole sequence from its last position (B, n) -> (B, V_out);
    ``readout="each"`` labels every position (B, n) -> (B, n, V_out).
    """

    def __init__(
        self,
        family: str,
        vocab: int,
        n_out: int,
        d: int,
        layers: int,
        *,
        max_len: int = 1024,
        heads: int = 4,
        kernel: int = 3,
        readout: str = "last",
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)  # × √d below: unit scale, like the positions
        self.positions = SinusoidalPositionalEncoding(d, max_len)
        self.layers = nn.ModuleList(probe_layer(family, d, heads=heads, kernel=kernel) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.out = Linear(d, n_out)
        self.readout = readout

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits for the sequence (B, V_out) or for every position (B, n, V_out)."""
        x = self.positions(self.embed(tokens) * math.sqrt(self.embed.embedding_dim))  # (B, n, d)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return self.out(x[:, -1] if self.readout == "last" else x)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
