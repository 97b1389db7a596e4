"""Window streams over a token sequence (qkv/data/lm.py)."""

from __future__ import annotations

import pytest
import torch

from qkv.data.lm import MLMStream, WindowStream
from qkv.errors import QkvError


@pytest.mark.parametrize(("n", "block", "batch"), [(100, 8, 3), (97, 8, 4), (33, 16, 1)])
def test_sequential_windows_score_every_token_once(n: int, block: int, batch: int) -> None:
    ids = torch.arange(n)
    stream = WindowStream(ids, block, batch, seed=0, sequential=True)
    batches = [stream.next_batch() for _ in range(stream.num_batches)]
    end = (n - 1) // block * block
    assert torch.equal(torch.cat([b.idx for b in batches]).flatten(), ids[:end])
    assert torch.equal(torch.cat([b.targets for b in batches]).flatten(), ids[1 : end + 1])
    with pytest.raises(QkvError, match="past its end"):
        stream.next_batch()


def test_random_windows_stay_inside_the_text() -> None:
    ids = torch.arange(50)
    batch = WindowStream(ids, 8, 64, seed=1).next_batch()
    assert torch.equal(batch.targets, batch.idx + 1) and int(batch.targets.max()) <= 49


def test_sequential_masked_windows_are_framed() -> None:
    ids = torch.arange(10, 60)
    masking = {
        "cls": 1,
        "sep": 2,
        "mask": 3,
        "prob": 0.15,
        "regular": torch.arange(10, 60),
        "special": torch.tensor([0, 1, 2, 3]),
    }
    stream = MLMStream(ids, 10, 2, 0, masking, sequential=True)
    batches = [stream.next_batch() for _ in range(stream.num_batches)]
    assert sum(b.ids.size(0) for b in batches) == (len(ids) - 1) // 8
    assert all(bool((b.ids[:, 0] == 1).all() and (b.ids[:, -1] == 2).all()) for b in batches)
