"""Forward + backward of the output projection and the label-smoothed loss, three ways, alternating in one
process: qkv's one pass (``linear_label_smoothed_loss``), the two-step composition it replaced (``F.linear``,
then the fused loss ``label_smoothed_loss`` on the logits), and plain PyTorch (``F.linear``, then
``F.cross_entropy`` on a float32 copy of the logits). Prints each one's median milliseconds per round.

    python benchmarks/loss_speed.py [--rows 1530 --d-model 256 --vocab 8000] [--rounds 3] [--repeats 15]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.objectives import label_smoothed_loss, label_smoothed_loss_reference, linear_label_smoothed_loss


def variants(h: Tensor, weight: Tensor, target: Tensor) -> dict[str, Callable[[], Tensor]]:
    """Each way's summed loss of ``h @ weight.T`` against ``target`` (label smoothing 0.1, pad id 0)."""
    return {
        "one pass": lambda: linear_label_smoothed_loss(h, weight, None, target, 0.1, 0).loss,
        "linear, then fused loss": lambda: label_smoothed_loss(F.linear(h, weight), target, 0.1, 0),
        "linear, then F.cross_entropy": lambda: label_smoothed_loss_reference(F.linear(h, weight), target, 0.1, 0),
    }


def median_ms(fn: Callable[[], Tensor], params: list[Tensor], precision: str, repeats: int) -> float:
    """Median wall time of ``repeats`` forward + backward passes, in ``precision``'s CPU autocast."""
    times = []
    for _ in range(repeats):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = fn()
        (loss / 1000).backward()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1530, help="target positions in a batch")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    torch.manual_seed(0)
    h = torch.randn(a.rows, a.d_model, requires_grad=True)
    weight = (a.d_model**-0.5 * torch.randn(a.vocab, a.d_model)).requires_grad_()
    target = torch.randint(1, a.vocab, (a.rows,))
    target[-a.rows // 15 :] = 0  # some padding
    print(f"{a.rows} x {a.d_model} x {a.vocab}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for precision in ("fp32", "bf16"):
        for r in range(a.rounds):
            ms = {
                name: median_ms(fn, [h, weight], precision, a.repeats)
                for name, fn in variants(h, weight, target).items()
            }
            base = ms["one pass"]
            cells = ", ".join(f"{k} {v:.1f} ms ({v / base:.2f}x)" for k, v in ms.items())
            print(f"{precision}, round {r + 1}: {cells}")


if __name__ == "__main__":
    main()
