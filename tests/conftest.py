"""Shared fixtures: a tiny run trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = [
    "d_model=32",
    "h=2",
    "N=2",
    "d_ff=64",
    "dropout=0.0",
    "steps=120",
    "batch_size=32",
    "warmup=20",
    "eval_every=60",
    "task.max_len=8",
    "valid_size=32",
    "test_size=32",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make any Transformer translation recipe tiny and fast."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reverse-task run, partly trained (so it emits <eos> at varied lengths), shared read-only."""
    from qkv.train import recipe, train

    out = tmp_path_factory.mktemp("runs") / "reverse"
    train(recipe("reverse"), out, overrides=TINY, progress=False, log=lambda m: None)
    return out
