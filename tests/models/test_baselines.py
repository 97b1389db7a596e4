"""The RNN (GRU + additive attention) and CNN (ConvS2S) baselines: same interface as the Transformer,
incremental decoding equal to full recomputation, masking of padding, causality, receptive field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qkv.attention import additive_attention
from qkv.decode import beam_search, greedy
from qkv.errors import QkvError
from qkv.models.convs2s import ConvBlock, ConvS2S, ConvS2SConfig
from qkv.models.rnn import RNNConfig, RNNSeq2Seq
from qkv.recipes import RunConfig, recipe


def make(family: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "rnn":
        cfg = RNNConfig(d_model=16, hidden=24, src_vocab_size=23, tgt_vocab_size=19, dropout=0.0, **kw)
        return RNNSeq2Seq(cfg).eval()
    cfg = ConvS2SConfig(d_model=16, channels=12, N=2, src_vocab_size=23, tgt_vocab_size=19, dropout=0.0, **kw)
    return ConvS2S(cfg).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 23, (4, 9), generator=g)
    src[1, 6:] = 0  # padding
    src[3, 3:] = 0
    tgt = torch.randint(3, 19, (4, 7), generator=g)
    return src, tgt


FAMILIES = ["rnn", "cnn"]


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_equals_full_recomputation(family):
    model = make(family)
    src, tgt = batch()
    full = model(src, tgt)
    memory, mask, _ = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache=cache)[0] for t in range(tgt.size(1))]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # two positions at a time continue the same state
    cache = model.new_cache()
    chunks = [model.decode(tgt[:, t : t + 2], memory, mask, cache=cache)[0] for t in range(0, 6, 2)]
    assert torch.allclose(torch.cat(chunks, dim=1), full[:, :6], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_and_uncached_search_give_identical_tokens(family):
    model = make(family)
    src, _ = batch()
    a = [h.tokens for h in greedy(model, src, max_len=12)]
    b = [h.tokens for h in greedy(model, src, max_len=12, use_cache=False)]
    assert a == b
    a = [[h.tokens for h in hs] for hs in beam_search(model, src, beam=3, max_len=12)]
    b = [[h.tokens for h in hs] for hs in beam_search(model, src, beam=3, max_len=12, use_cache=False)]
    assert a == b


@pytest.mark.parametrize("family", FAMILIES)
def test_source_padding_changes_nothing(family):
    model = make(family)
    src, tgt = batch()
    padded = torch.cat([src, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(model(padded, tgt), model(src, tgt), atol=1e-5)
    # a row alone gives the same logits as in the batch
    assert torch.allclose(model(src[3:4, :3], tgt[3:4]), model(src, tgt)[3:4], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_is_causal(family):
    model = make(family)
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 4:] = 5
    a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_attention_distributions(family):
    model = make(family)
    src, tgt = batch()
    with torch.no_grad():
        memory, mask, _ = model.encode(src)
        _, weights = model.decode(tgt, memory, mask, need_weights=True)
    for w in weights:
        assert w.self_attn is None and w.cross.shape == (4, 1, 7, 9)
        assert torch.allclose(w.cross.sum(-1), torch.ones(4, 1, 7), atol=1e-5)
        assert float(w.cross[1, :, :, 6:].abs().max()) == 0.0  # never on padding


def test_additive_attention_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v, w = (
        torch.randn(2, 3, 5, generator=g),
        torch.randn(2, 4, 5, generator=g),
        torch.randn(2, 4, 6, generator=g),
        torch.randn(5, generator=g),
    )
    mask = torch.tensor([True, True, False, True])[None, None, :]
    out, weights = additive_attention(q, k, v, w, mask)
    for b in range(2):
        for t in range(3):
            scores = torch.stack([torch.tanh(q[b, t] + k[b, s]) @ w for s in range(4)])
            scores[2] = -math.inf
            p = torch.softmax(scores, dim=0)
            assert torch.allclose(weights[b, t], p, atol=1e-6)
            assert torch.allclose(out[b, t], p @ v[b], atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_block_sees_a_window_of_kernel_positions(kernel):
    torch.manual_seed(0)
    n, r = 11, (kernel - 1) // 2
    for causal in (False, True):
        block = ConvBlock(4, kernel, causal=causal)
        x = torch.randn(1, n, 4, requires_grad=True)
        block(x)[0][0, 5].sum().backward()
        seen = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
        assert seen == (list(range(5 - 2 * r, 6)) if causal else list(range(5 - r, 6 + r)))


def test_configs_name_the_bad_field():
    with pytest.raises(QkvError, match="model.kernel"):
        ConvS2SConfig(kernel=4)
    with pytest.raises(QkvError, match="model.hidden"):
        RNNConfig(hidden=7)
    with pytest.raises(QkvError, match="vocab"):
        RNNSeq2Seq(RNNConfig())


def test_family_switch_keeps_data_and_training():
    base = recipe("multi30k")
    for family, cls in (("rnn", RNNConfig), ("cnn", ConvS2SConfig)):
        cfg = base.with_family(family)
        assert isinstance(cfg.model, cls) and cfg.family == family
        assert cfg.train == base.train and cfg.task == base.task
        assert cfg.model.d_model == base.model.d_model and cfg.model.max_len == base.model.max_len
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(QkvError, match="cannot switch"):
        recipe("shakespeare-char").with_family("rnn")


@pytest.mark.parametrize("family", FAMILIES)
def test_baselines_train_translate_and_evaluate_through_the_cli(tmp_path, capsys, family):
    from qkv.cli import main

    out = tmp_path / family
    tiny = ["d_model=16", "steps=6", "batch_size=8", "warmup=2", "eval_every=6", "task.max_len=6"]
    tiny += ["valid_size=8", "test_size=8", "dropout=0.0"]
    if family == "rnn":
        chosen = ["--family", "rnn"]
    else:  # a config file may name the family too
        (tmp_path / "cnn.json").write_text(json.dumps({"family": "cnn", "model": {"kernel": 5}}))
        chosen = ["--config", str(tmp_path / "cnn.json")]
    assert main(["train", "reverse", *chosen, "--out", str(out), "--no-progress", *tiny]) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["family"] == family
    assert family == "rnn" or info["model"]["kernel"] == 5
    capsys.readouterr()
    assert main(["translate", str(out), "a b c", "--beam", "2"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert main(["evaluate", str(out)]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["token_accuracy"] <= 1.0
    assert main(["attention", str(out), "a b", "-o", str(tmp_path / "a.png")]) == 0  # their cross-attention
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
