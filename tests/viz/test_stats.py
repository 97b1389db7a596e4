"""Head statistics and attention rollout: equal to the definitions written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.viz.maps import rollout
from qkv.viz.stats import STATS, head_stats, map_stats


def by_hand(w: list[list[float]], *, self_attention: bool, eos: int | None) -> dict[str, float | None]:
    """The statistics of docs: loops over rows and keys, nothing shared with the implementation."""
    T = len(w)
    ent = sum(-sum(x * math.log(x) for x in row if x > 0) for row in w) / T
    out = {"entropy": ent, "first": sum(row[0] for row in w) / T}
    out["eos"] = None if eos is None else sum(row[eos] for row in w) / T
    if self_attention:
        out["distance"] = sum(sum(x * abs(t - s) for s, x in enumerate(row)) for t, row in enumerate(w)) / T
        out["previous"] = sum(w[t][t - 1] for t in range(1, T)) / (T - 1)
        out["same"] = sum(w[t][t] for t in range(T)) / T
        out["next"] = sum(w[t][t + 1] for t in range(T - 1)) / (T - 1)
    else:
        out |= {"distance": None, "previous": None, "same": None, "next": None}
    return out


@pytest.mark.parametrize("self_attention", [True, False])
def test_map_stats_equal_their_definitions(self_attention):
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, 7 if not self_attention else 5, generator=g).softmax(-1)
    got = map_stats(w, self_attention=self_attention, eos=w.size(1) - 1)
    want = by_hand(w.tolist(), self_attention=self_attention, eos=w.size(1) - 1)
    assert set(got) == set(STATS)
    for k in STATS:
        assert (got[k] is None) == (want[k] is None)
        if want[k] is not None:
            assert got[k] == pytest.approx(want[k], abs=1e-9)


def test_extreme_heads_read_as_expected():
    eye = torch.eye(4)
    one_hot_prev = torch.zeros(4, 4)
    one_hot_prev[0, 0] = 1.0
    one_hot_prev[torch.arange(1, 4), torch.arange(0, 3)] = 1.0
    same = map_stats(eye, self_attention=True, eos=3)
    prev = map_stats(one_hot_prev, self_attention=True, eos=None)
    uniform = map_stats(torch.full((4, 4), 0.25), self_attention=True, eos=3)
    assert same["entropy"] == 0 and same["same"] == 1 and same["distance"] == 0 and same["eos"] == 0.25
    assert prev["previous"] == 1 and prev["distance"] == 0.75 and prev["eos"] is None and prev["next"] == 0
    assert uniform["entropy"] == pytest.approx(math.log(4)) and uniform["first"] == 0.25


def test_head_stats_cover_every_head_of_every_kind(tiny_run):
    run = qkv.load(tiny_run)
    maps = run.attention("abcd")
    rows = head_stats(maps)
    cfg = run.config.model
    assert len(rows) == (cfg.N + 2 * cfg.decoder_layers) * cfg.h  # enc, dec, cross; rollout has no heads
    row = next(r for r in rows if (r["kind"], r["layer"], r["head"]) == ("enc", 1, 1))
    want = by_hand(maps.maps["enc"][1][0, 1].tolist(), self_attention=True, eos=4)  # a b c d <eos>
    assert all(row[k] == pytest.approx(want[k], abs=1e-5) for k in STATS)
    cross = [r for r in rows if r["kind"] == "cross"]
    assert all(r["distance"] is None and r["eos"] is not None for r in cross)
    assert all(r["eos"] is None for r in rows if r["kind"] == "dec")  # the decoder's keys hold no <eos>


def test_rollout_is_the_product_of_half_residual_layers():
    g = torch.Generator().manual_seed(1)
    layers = [torch.rand(1, 3, 4, 4, generator=g).softmax(-1) for _ in range(3)]
    out = rollout(layers)
    r = torch.eye(4)
    for w, got in zip(layers, out, strict=True):
        a = 0.5 * w[0].mean(0) + 0.5 * torch.eye(4)
        r = (a / a.sum(-1, keepdim=True)) @ r
        torch.testing.assert_close(got[0, 0], r)
        torch.testing.assert_close(got.sum(-1), torch.ones(1, 1, 4))
    causal = [torch.eye(4).expand(1, 2, 4, 4)]  # attending only to itself: nothing mixes
    torch.testing.assert_close(rollout(causal)[0][0, 0], torch.eye(4))
