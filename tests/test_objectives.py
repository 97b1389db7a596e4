"""The fused label-smoothed loss equals torch's cross-entropy, values and gradients."""

import pytest
import torch

from qkv import objectives
from qkv.objectives import label_smoothed_loss, label_smoothed_loss_reference, linear_label_smoothed_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("ignore_index", [0, -100])
def test_the_fused_loss_and_its_gradient_equal_the_reference(monkeypatch, dtype, eps, ignore_index):
    monkeypatch.setattr(objectives, "CHUNK_VALUES", 40)  # 3 rows of 13 a chunk: several chunks, a ragged last
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 9, 13)).to(dtype).requires_grad_()
    target = torch.randint(1, 13, (3, 9))
    target[0, 5:] = ignore_index  # padding at the end of one row
    target[2] = ignore_index  # and a row with nothing to predict
    ours = label_smoothed_loss(logits, target, eps, ignore_index)
    (grad_ours,) = torch.autograd.grad(1.7 * ours, logits)
    ref = label_smoothed_loss_reference(logits, target, eps, ignore_index)
    (grad_ref,) = torch.autograd.grad(1.7 * ref, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert grad_ours.dtype == dtype and grad_ours.shape == logits.shape
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 0)
    assert not grad_ours[2].any() and not grad_ours[0, 5:].any()  # nothing flows into ignored positions


def test_nothing_to_predict_gives_zero_loss_and_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = label_smoothed_loss(logits, torch.zeros(2, 3, dtype=torch.long), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and not logits.grad.any()


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_fused_projection_and_loss_equal_the_reference(monkeypatch, eps, with_bias):
    monkeypatch.setattr(objectives, "CHUNK_VALUES", 40)  # 3 rows of 13 a chunk: several chunks, a ragged last
    torch.manual_seed(0)
    h = torch.randn(3, 9, 6, requires_grad=True)
    weight = torch.randn(13, 6, requires_grad=True)
    bias = torch.randn(13, requires_grad=True) if with_bias else None
    target = torch.randint(1, 13, (3, 9))
    target[0, 5:] = 0  # padding at the end of one row
    target[2] = 0  # and a row with nothing to predict
    params = [h, weight] + ([bias] if with_bias else [])
    ours = linear_label_smoothed_loss(h, weight, bias, target, eps, 0)
    grads = torch.autograd.grad(1.7 * ours.loss, params)
    logits = torch.nn.functional.linear(h, weight, bias)
    ref = label_smoothed_loss_reference(logits, target, eps, 0)
    ref_grads = torch.autograd.grad(1.7 * ref, params)
    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert ours.nll.item() == pytest.approx(label_smoothed_loss_reference(logits, target, 0.0, 0).item(), rel=1e-6)
    assert not ours.nll.requires_grad
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert not grads[0][2].any() and not grads[0][0, 5:].any()  # nothing flows from ignored positions


def test_the_fused_projection_multiplies_in_autocasts_dtype():
    torch.manual_seed(0)
    h = torch.randn(4, 8, 16, requires_grad=True)
    weight = (0.3 * torch.randn(50, 16)).requires_grad_()
    target = torch.randint(1, 50, (4, 8))
    with torch.autocast("cpu", torch.bfloat16):
        ours = linear_label_smoothed_loss(h, weight, None, target, 0.1, 0)
        logits = torch.nn.functional.linear(h, weight)  # bf16 logits, as the unfused path makes them
    ref = label_smoothed_loss(logits, target, 0.1, 0)
    fp32 = label_smoothed_loss(torch.nn.functional.linear(h, weight), target, 0.1, 0)
    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-6)  # the same bf16 logits
    assert abs(ours.loss.item() - fp32.item()) > 1e-6 * fp32.item()  # which are not the float32 ones
    dh, dw = torch.autograd.grad(ours.loss, [h, weight])
    rh, rw = torch.autograd.grad(ref, [h, weight])
    assert dh.dtype == dw.dtype == torch.float32
    torch.testing.assert_close(dh, rh, rtol=2e-2, atol=2e-3)  # bf16 products, rounded in another order
    torch.testing.assert_close(dw, rw, rtol=2e-2, atol=2e-3)


def test_the_fused_projection_leaves_frozen_inputs_without_a_gradient():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 6, requires_grad=True)
    weight, bias = torch.randn(13, 6), torch.randn(13)  # frozen
    target = torch.randint(1, 13, (2, 5))
    ours = linear_label_smoothed_loss(h, weight, bias, target, 0.1, 0)
    ours.loss.backward()
    ref_h = h.detach().clone().requires_grad_()
    label_smoothed_loss_reference(torch.nn.functional.linear(ref_h, weight, bias), target, 0.1, 0).backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
    assert weight.grad is None and bias.grad is None
