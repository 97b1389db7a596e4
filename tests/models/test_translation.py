"""What the three encoder–decoder families share: decode is the generator over decode_states, and
teacher forcing with a target gives the loss of its logits."""

from __future__ import annotations

import pytest
import torch

from qkv.models import TransformerConfig, build_transformer
from qkv.models.convs2s import ConvS2S, ConvS2SConfig
from qkv.models.rnn import RNNConfig, RNNSeq2Seq
from qkv.objectives import label_smoothed_loss


def make(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = {"src_vocab_size": 23, "tgt_vocab_size": 19, "dropout": 0.0}
    if family == "rnn":
        return RNNSeq2Seq(RNNConfig(d_model=16, hidden=24, **shape))
    if family == "cnn":
        return ConvS2S(ConvS2SConfig(d_model=16, channels=12, N=2, **shape))
    return build_transformer(TransformerConfig(d_model=16, h=2, N=2, d_ff=32, share_embeddings="none", **shape))


@pytest.mark.parametrize("family", ["transformer", "rnn", "cnn"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_forward_with_a_target_is_the_loss_of_the_logits(family, eps):
    model = make(family).train()
    g = torch.Generator().manual_seed(1)
    src, tgt_in = torch.randint(3, 23, (4, 9), generator=g), torch.randint(3, 19, (4, 7), generator=g)
    target = torch.randint(3, 19, (4, 7), generator=g)
    src[1, 6:] = 0
    target[2, 4:] = 0  # padding: not predicted
    ours = model(src, tgt_in, target=target, label_smoothing=eps)
    grads = torch.autograd.grad(ours.loss, list(model.parameters()))
    ref = label_smoothed_loss(model(src, tgt_in), target, eps, 0)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ours.nll.item() == pytest.approx(label_smoothed_loss(model(src, tgt_in), target, 0.0, 0).item(), rel=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["transformer", "rnn", "cnn"])
def test_decode_is_the_generator_over_decode_states(family):
    model = make(family).eval()
    src, tgt = torch.randint(3, 23, (2, 5)), torch.randint(3, 19, (2, 4))
    memory, mask, _ = model.encode(src)
    states, _ = model.decode_states(tgt, memory, mask)
    logits, _ = model.decode(tgt, memory, mask)
    torch.testing.assert_close(logits, model.generator(states))
    torch.testing.assert_close(model(src, tgt), logits)
