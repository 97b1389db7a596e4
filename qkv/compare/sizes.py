"""The sizes of the comparison: one dataclass, with presets ``full``, ``quick`` (≤ 10 minutes on two
CPU cores) and ``smoke`` (seconds, for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["SIZES", "CompareConfig", "with_changes"]


@dataclass(frozen=True)
class CompareConfig:
    """Every size the experiments use; see :mod:`qkv.compare.experiments` for what each one sets."""

    seed: int = 0
    # a. parallelism and e. query batch: one layer / one attention call per length
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    d_model: int = 256
    batch: int = 8
    repeats: int = 5
    heads_for_timing: int = 4
    # b. path length
    path_lengths: tuple[int, ...] = (8, 32, 128, 512)
    kernels: tuple[int, ...] = (3, 5, 7)
    path_d: int = 8
    # c. long-range dependency
    distances: tuple[int, ...] = (2, 8, 32, 64)
    long_vocab: int = 16
    long_d: int = 64
    long_layers: dict[str, int] = field(default_factory=lambda: {"transformer": 2, "rnn": 4, "cnn": 4})
    long_steps: int = 600
    train_batch: int = 64
    test_examples: int = 2000
    lr: float = 2e-3
    # d. scaling
    d_ks: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    init_rows: int = 512
    init_keys: int = 64
    curve_task: str = "reverse"
    curve_d: int = 256
    curve_h: int = 1
    curve_steps: int = 600
    curve_points: int = 10
    # f. heads
    heads: tuple[int, ...] = (1, 2, 4, 8)
    heads_d: int = 64
    heads_n: int = 16
    heads_steps: int = 1500
    heads_seeds: int = 3
    # g. translation: Multi30k when its directory is given, else a built-in task
    translation_preset: str = "multi30k"  # the recipe on Multi30k at the same steps
    # ... and at the same training minutes: the half-hour recipe, the best of each family on validation at
    # 30 minutes (batches of 1,536 against 4,096 tokens; the README's comparison)
    translation_timed_preset: str = "multi30k-30min"
    translation_steps: int = 400
    translation_minutes: float = 0.0  # > 0: the same training minutes per family instead of the same steps
    translation_beam: int = 5  # test BLEU with this beam too (1 = greedy only)
    fallback_task: str = "dates"
    fallback_steps: int = 600
    run_overrides: tuple[str, ...] = ()  # applied to every training run (d and g)


SIZES: dict[str, CompareConfig] = {
    "full": CompareConfig(),
    "quick": CompareConfig(
        lengths=(16, 64, 256, 1024),
        repeats=3,
        path_lengths=(8, 32, 128),
        kernels=(3, 5),
        distances=(2, 8, 32),
        long_steps=300,
        test_examples=1000,
        d_ks=(16, 64, 256, 1024),
        curve_d=128,
        curve_steps=200,
        curve_points=5,
        heads=(1, 4),
        heads_steps=1200,
        heads_seeds=1,
        translation_steps=40,
        fallback_steps=150,
    ),
    "smoke": CompareConfig(
        lengths=(8, 16),
        d_model=32,
        batch=2,
        repeats=1,
        path_lengths=(6,),
        kernels=(3,),
        distances=(1, 3),
        long_d=16,
        long_steps=3,
        train_batch=8,
        test_examples=32,
        d_ks=(16, 64),
        init_rows=8,
        init_keys=8,
        curve_d=32,
        curve_steps=4,
        curve_points=2,
        heads=(1, 2),
        heads_d=16,
        heads_n=8,
        heads_steps=3,
        heads_seeds=1,
        translation_steps=3,
        translation_beam=2,
        fallback_task="reverse",
        fallback_steps=3,
        run_overrides=("d_model=32", "valid_size=16", "test_size=16"),
    ),
}


def with_changes(cfg: CompareConfig, **changes: object) -> CompareConfig:
    """A copy of ``cfg`` with some sizes changed."""
    return replace(cfg, **changes)  # type: ignore[arg-type]
