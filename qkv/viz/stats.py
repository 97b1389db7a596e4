"""What each head does, in numbers: the statistics behind "several heads see different relations".

For every head of every kind of attention, averaged over its query rows (row t of a (T, S) map w):

* ``entropy``: −Σ_s w[t, s] ln w[t, s], in nats (0 = all weight on one key; ln S = spread evenly);
* ``distance``: Σ_s w[t, s] |t − s|, the mean number of positions between a token and what it reads;
* ``previous``, ``same``, ``next``: the weight on key t − 1 (rows t ≥ 1), on key t, and on key t + 1 (rows
  t < S − 1; a causal map has none there);
* ``first``: the weight on key 0 (<bos>, [CLS], or the first word);
* ``eos``: the weight on the end-of-sentence key (<eos>, [SEP]), where the keys have one.

Distance, previous, same and next compare positions of one sequence, so they are given for self-attention
(``enc``, ``dec``, ``self``) and are None for cross-attention. Rollout maps are not heads: no statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkv.viz.maps import SELF_KINDS, AttentionMaps

__all__ = ["STATS", "head_stats", "map_stats"]

STATS = ("entropy", "distance", "previous", "same", "next", "first", "eos")


def map_stats(w: Tensor, *, self_attention: bool, eos: int | None) -> dict[str, float | None]:
    """The statistics of one head's map ``w`` (T, S), each averaged over the query rows."""
    w = w.double()
    T, S = w.shape
    t = torch.arange(T, device=w.device).unsqueeze(1)  # (T, 1)
    s = torch.arange(S, device=w.device).unsqueeze(0)  # (1, S)
    entropy = -(w * w.clamp_min(1e-30).log()).sum(-1)  # (T,)
    out: dict[str, float | None] = {"entropy": float(entropy.mean())}
    if self_attention:
        out["distance"] = float((w * (t - s).abs()).sum(-1).mean())
        out["previous"] = float(w.diagonal(-1).mean()) if T > 1 else None
        out["same"] = float(w.diagonal().mean())
        out["next"] = float(w.diagonal(1).mean()) if S > 1 else None
    else:
        out |= {"distance": None, "previous": None, "same": None, "next": None}
    out["first"] = float(w[:, 0].mean())
    out["eos"] = float(w[:, eos].mean()) if eos is not None else None
    return out


def head_stats(maps: AttentionMaps) -> list[dict[str, Any]]:
    """One row per kind × layer × head: {'kind', 'layer', 'head', **statistics} (rounded to 5 places)."""
    rows = []
    for kind, layers in maps.maps.items():
        if kind == "rollout":
            continue
        for layer, w in enumerate(layers):
            for head in range(w.size(1)):
                values = map_stats(w[0, head], self_attention=kind in SELF_KINDS, eos=maps.eos_key.get(kind))
                rounded = {k: None if v is None else round(v, 5) for k, v in values.items()}
                rows.append({"kind": kind, "layer": layer, "head": head, **rounded})
    return rows
