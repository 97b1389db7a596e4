"""Training speed of torch's CPU attention kernels, flash against math, and qkv's rule
(``qkv.attention.trains_in_float32``: half-precision training at short lengths runs the reference path in
float32), side by side in one process.

1. The kernel alone: forward + backward of ``F.scaled_dot_product_attention`` with only the flash kernel
   allowed, with only the math kernel allowed, and through qkv's attention (which applies the rule), in
   bf16, fp16 and fp32, at translation lengths (a key-padding mask) and at language-model lengths
   (causal); the three alternate round by round, and each figure is a median in milliseconds.
2. ``--data STORE``: whole training steps of the trainer on a preset (default ``multi30k-30min``, bf16
   where the CPU multiplies it natively), two trainers from the same seed on the same batches, step by
   step alternating: qkv's rule against torch's own choice (the rule switched off). Prints target
   tokens/s of each, the ratio, and both losses (which must agree to rounding).

    python benchmarks/attention_speed.py [--rounds 20] [--data STORE --steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from qkv import attention

# (B, H, T=S, D, causal): translation batches (a padding mask) and language-model contexts (causal).
RULE, TORCH = "qkv rule", "torch's choice"  # the two sides of the whole-step comparison
SHAPES = [
    (64, 8, 24, False),
    (96, 4, 16, False),
    (4, 8, 64, True),
    (4, 8, 128, True),
    (4, 8, 256, True),
    (4, 8, 512, True),
]


def kernel_ms(B: int, H: int, T: int, causal: bool, dtype: torch.dtype, rounds: int) -> dict[str, float]:
    """Median forward + backward milliseconds of flash, math and qkv's fused path on one shape."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, 64, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    grad = torch.randn(B, H, T, 64, generator=g).to(dtype)
    mask = None
    if not causal:
        mask = torch.ones(B, 1, 1, T, dtype=torch.bool)  # (B, 1, 1, S): keys that are not padding
        mask[: B // 2, ..., T // 2 :] = False  # half the batch padded to half the length

    def torch_kernel(backend: SDPBackend) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

        return run

    sides = {
        "flash": torch_kernel(SDPBackend.FLASH_ATTENTION),
        "math": torch_kernel(SDPBackend.MATH),
        "qkv": lambda: attention.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)[0],
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds + 2):
        for name, run in sides.items():
            t0 = time.perf_counter()
            torch.autograd.grad(run(), (q, k, v), grad)
            if r >= 2:  # two warm-up rounds
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_kernels(rounds: int) -> None:
    """The kernel table: one line per dtype and shape."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for B, H, T, causal in SHAPES:
            ms = kernel_ms(B, H, T, causal, dtype, rounds)
            kind = "causal" if causal else "padding mask"
            print(
                f"{str(dtype).removeprefix('torch.'):8} B {B:3} H {H} T=S {T:3} {kind:12} fwd+bwd ms: "
                f"flash {ms['flash']:7.2f}  math {ms['math']:7.2f}  qkv {ms['qkv']:7.2f}  "
                f"(flash/qkv {ms['flash'] / ms['qkv']:.2f}x)",
                flush=True,
            )


def whole_steps(data: str, preset: str, steps: int, warmup: int = 5) -> None:
    """Trainer steps with qkv's rule against the rule switched off, alternating on the same batches."""
    from qkv.devices import keep_freed_memory
    from qkv.train import Trainer, recipe
    from qkv.trainlog import TrainLog

    keep_freed_memory()  # as the qkv command does for its own process
    rule = attention.trains_in_float32
    torch_choice = lambda q, k, v: False  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe(preset).with_data(data=data).with_overrides([f"steps={warmup + steps}"])
        trainers = {}
        for name in (RULE, TORCH):
            out = Path(tmp) / ("rule" if name == RULE else "torch")
            trainers[name] = t = Trainer(cfg, out, say=lambda _msg: None)
            t.log = TrainLog(
                out, log_every=0, tensorboard=False, main=False, progress=False, step=0, total=warmup + steps,
                device=t.device, say=lambda _msg: None, budget_s=0,
            )  # fmt: skip
        seconds, tokens, losses = dict.fromkeys(trainers, 0.0), 0, dict.fromkeys(trainers, 0.0)
        try:
            for i in range(warmup + steps):
                for name, trainer in trainers.items():
                    attention.trains_in_float32 = rule if name == RULE else torch_choice
                    t0 = time.perf_counter()
                    stats, _ = trainer.train_one_step()
                    if i >= warmup:
                        seconds[name] += time.perf_counter() - t0
                    losses[name] = stats.loss
                tokens += stats.tokens if i >= warmup else 0
        finally:
            attention.trains_in_float32 = rule
    rates = {name: tokens / s for name, s in seconds.items()}
    precision = next(iter(trainers.values())).precision
    print(
        f"whole steps, {preset} ({precision}), {steps} steps each after {warmup}: "
        + ", ".join(f"{name} {rate:,.0f} tok/s (loss {losses[name]:.4f})" for name, rate in rates.items())
        + f"; ratio {rates[RULE] / rates[TORCH]:.2f}x"
    )


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="timed rounds per kernel measurement")
    p.add_argument("--data", help="a token store: also time whole training steps")
    p.add_argument("--preset", default="multi30k-30min")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--no-kernels", action="store_true", help="skip the kernel table")
    a = p.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if not a.no_kernels:
        print_kernels(a.rounds)
    if a.data:
        whole_steps(a.data, a.preset, a.steps)


if __name__ == "__main__":
    main()
