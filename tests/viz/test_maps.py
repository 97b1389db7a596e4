"""Attention maps as data: shapes, labels, and equality with the incremental decoder's own weights."""

from __future__ import annotations

import json

import pytest
import torch

import qkv
from qkv.errors import QkvError
from qkv.viz import save_attention


@pytest.fixture
def run(tiny_run):
    return qkv.load(tiny_run)


def test_every_map_with_tokens_on_both_axes(run):
    maps = run.attention("abcd")
    cfg = run.config.model
    assert maps.kinds == ["enc", "dec", "cross", "rollout"]
    assert maps.output == run.translate("abcd")[0]
    S, T = 5, maps.meta["steps"]  # 4 letters + <eos>; T produced tokens
    assert maps.queries["enc"] == ["a", "b", "c", "d", "<eos>"] == maps.keys["cross"]
    assert maps.keys["dec"][0] == "<bos>" and len(maps.queries["dec"]) == T
    for kind, (t, s) in {"enc": (S, S), "dec": (T, T), "cross": (T, S)}.items():
        assert len(maps.maps[kind]) == (cfg.N if kind == "enc" else cfg.decoder_layers)
        for w in maps.maps[kind]:
            assert w.shape == (1, cfg.h, t, s)
            torch.testing.assert_close(w.sum(-1), torch.ones(1, cfg.h, t))
    assert torch.all(maps.maps["dec"][0].triu(1) == 0)
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for m in run.model.modules() for v in vars(m).values())


@pytest.mark.parametrize("early", [False, True])
def test_maps_of_a_beam_translation_are_of_what_translate_gives(run, early, monkeypatch):
    # the map decodes as the run translates: its length penalty and stopping rule included
    import qkv.viz.maps as maps_module
    from qkv.config import replace

    monkeypatch.setattr(run.config, "decode", replace(run.config.decode, "decode", early_stopping=early, alpha=0.0))
    asked: list[dict] = []
    search = maps_module.beam_search

    def spy(*args, **kwargs):
        asked.append(kwargs)
        return search(*args, **kwargs)

    monkeypatch.setattr(maps_module, "beam_search", spy)
    for text in ("abcd", "hello", "xyzzy"):
        assert run.attention(text, beam=3).output == run.translate(text, beam=3)[0]
    assert [(a["early_stopping"], a["alpha"]) for a in asked] == [(early, 0.0)] * 3


@torch.no_grad()
def test_maps_equal_the_weights_of_each_incremental_decoding_step(run):
    maps = run.attention("hello")
    model = run.model
    src = run.encode_source(["hello"])
    memory, mask, _ = model.encode(src)
    produced = run.tgt_tokenizer.encode(maps.output) + [2]
    tgt_in = torch.tensor([[1] + produced[:-1]])
    cache = model.new_cache()
    for t in range(tgt_in.size(1)):
        _, w = model.decode(tgt_in[:, t : t + 1], memory, mask, cache=cache, need_weights=True)
        for layer in range(len(w)):
            torch.testing.assert_close(w[layer].cross[0, :, 0], maps.maps["cross"][layer][0, :, t])
            torch.testing.assert_close(w[layer].self_attn[0, :, 0], maps.maps["dec"][layer][0, :, t, : t + 1])


def test_save_png_svg_json(run, tmp_path):
    maps = run.attention("abc")
    png = save_attention(maps, tmp_path / "a.png", kind="cross", head="all")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_attention(maps, tmp_path / "a.svg", kind="enc", layer=1, head="mean")
    assert b"<svg" in svg.read_bytes()[:500]
    data = json.loads(save_attention(maps, tmp_path / "a.json").read_text())  # nothing chosen: every map
    assert set(data["kinds"]) == set(maps.kinds)
    assert len(data["kinds"]["cross"]["weights"]) == run.config.model.decoder_layers
    assert data["kinds"]["enc"]["queries"] == ["a", "b", "c", "<eos>"]


def test_json_holds_the_kind_layer_and_head_chosen(run, tmp_path):
    maps = run.attention("abc")
    one = json.loads(save_attention(maps, tmp_path / "a.json", kind="enc", layer=1, head="0").read_text())
    enc = one["kinds"]["enc"]
    assert set(one["kinds"]) == {"enc"} and enc["layers"] == [1] and enc["heads"] == [0]
    torch.testing.assert_close(torch.tensor(enc["weights"][0][0]), maps.maps["enc"][1][0, 0], atol=1e-5, rtol=0)
    layer_only = json.loads(save_attention(maps, tmp_path / "l.json", layer=0).read_text())["kinds"]
    assert list(layer_only) == [maps.default_kind] and layer_only[maps.default_kind]["layers"] == [0]
    mean = json.loads(save_attention(maps, tmp_path / "m.json", kind="cross", head="mean").read_text())
    cross = mean["kinds"]["cross"]
    assert cross["heads"] == ["mean"] and cross["layers"] == list(range(run.config.model.decoder_layers))
    expected = maps.maps["cross"][0][0].mean(0)
    torch.testing.assert_close(torch.tensor(cross["weights"][0][0]), expected, atol=1e-5, rtol=0)


def test_clear_errors(run, tmp_path):
    maps = run.attention("abc")
    with pytest.raises(QkvError, match="no 'self' attention"):
        save_attention(maps, tmp_path / "a.png", kind="self")
    with pytest.raises(QkvError, match="layer 9 does not exist"):
        save_attention(maps, tmp_path / "a.png", kind="enc", layer=9)
    with pytest.raises(QkvError, match="head 7 does not exist"):
        save_attention(maps, tmp_path / "a.png", kind="enc", head="7")
    with pytest.raises(QkvError, match="unknown format"):
        save_attention(maps, tmp_path / "a.gif", kind="enc")
    with pytest.raises(QkvError, match="use --format png, svg, json or html"):
        save_attention(maps, tmp_path / "a.gif", kind="enc")


def test_long_inputs_are_drawn_with_every_nth_token_labelled(run, tmp_path):
    import matplotlib.pyplot as plt

    from qkv.viz import plot

    long = run.attention("abc" * 21)  # 63 letters + <eos>: over the 60 labelled a side
    shown = []
    real = plt.Axes.set_xticks

    def spy(self, ticks, labels=None, **kwargs):
        shown.append((list(ticks), list(labels)))
        return real(self, ticks, labels, **kwargs)

    plt.Axes.set_xticks = spy
    try:
        png = save_attention(long, tmp_path / "long.png", kind="enc", head="mean")
    finally:
        plt.Axes.set_xticks = real
    assert png.read_bytes()[:4] == b"\x89PNG"
    ticks, labels = shown[0]
    assert len(ticks) <= plot.LONG_LABELS and ticks[:2] == [0, 2] and labels[1] == "2 c"


def test_the_baselines_have_cross_attention_only(family_runs):
    for family in ("rnn", "cnn"):
        run = qkv.load(family_runs[family])
        maps = run.attention("abc")
        assert maps.kinds == ["cross"] and maps.keys["cross"] == ["a", "b", "c", "<eos>"]
        for w in maps.maps["cross"]:
            assert w.shape[:2] == (1, 1) and w.shape[-1] == 4
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


def test_language_models_show_their_special_tokens_and_rollout(family_runs):
    bert = qkv.load(family_runs["bert"]).attention("To be")
    assert bert.queries["self"][0] == "[CLS]" and bert.keys["self"][-1] == "[SEP]"
    assert bert.eos_key["self"] == len(bert.keys["self"]) - 1 and bert.kinds == ["self", "rollout"]
    with pytest.raises(QkvError, match=r"20 tokens \(\[CLS\] and \[SEP\] included\) exceed this model's 16"):
        qkv.load(family_runs["bert"]).attention("To be or not to be")
    gpt = qkv.load(family_runs["gpt"]).attention("To be")
    assert gpt.eos_key["self"] is None and torch.all(gpt.maps["rollout"][-1][0, 0].triu(1) == 0)  # causal stays causal
