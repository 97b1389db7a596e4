"""The fused label-smoothed loss equals torch's cross-entropy, values and gradients."""

import pytest
import torch

from qkv import objectives
from qkv.objectives import label_smoothed_loss, label_smoothed_loss_reference


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
