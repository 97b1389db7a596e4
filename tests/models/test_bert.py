"""BERT: padding never changes real tokens, mean pooling, MLM masking proportions."""

from __future__ import annotations

import torch

from qkv.data.lm import mask_tokens
from qkv.models.bert import BERT, BERTConfig, mean_pool


def tiny_bert() -> BERT:
    torch.manual_seed(0)
    return BERT(BERTConfig(vocab_size=50, max_len=32, d_model=32, h=4, N=2, d_ff=64)).eval()


def test_padding_does_not_change_real_tokens():
    model = tiny_bert()
    ids = torch.randint(5, 50, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).bool()
    alone = model(ids)
    batched = model(padded, mask)
    torch.testing.assert_close(alone, batched[:, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_pool(alone, torch.ones(1, 7)), mean_pool(batched, mask), atol=1e-5, rtol=1e-5)
    assert model.mlm_logits(alone).shape == (1, 7, 50)


def test_mean_pool_is_the_masked_mean():
    h = torch.arange(12.0).view(1, 4, 3)
    m = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(mean_pool(h, m), torch.tensor([[1.5, 2.5, 3.5]]))


def test_mlm_masking_is_15_percent_then_80_10_10():
    ids = torch.randint(10, 1000, (200, 100))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS], [SEP]
    special = torch.tensor([0, 1, 2, 3, 4])
    regular = torch.arange(10, 1000)
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, prob=0.15, mask_id=4, regular=regular, special=special, generator=g)
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, -1].any()
    assert abs(selected.float().mean().item() * 100 / 98 - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    masked = (inputs == 4) & selected
    kept = (inputs == ids) & selected
    n = selected.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(kept.sum().item() / n - 0.1) < 0.02  # (a random swap to the same token is rare)
    assert torch.equal(inputs[~selected], ids[~selected])
