"""The feed-forward's W_1 with its activation fused into the product, against the activation applied after.

For each activation at a model's feed-forward shape (GPT-2 small's gelu_tanh 768 → 3072, MiniLM's gelu
384 → 1536, the Multi30k model's relu 256 → 1024, a Marian-like swish 512 → 2048), at several row counts:
``Linear(x, activation=…)`` (oneDNN's post-op on the packed float32 path, ``linear_relu_dynamic`` on int8)
against ``ACTIVATIONS[…](Linear(x))``, alternating calls in one process; prints the median time of the fused
call and separate / fused (> 1: fusing is faster).

    python benchmarks/fused_activation.py [--quantize int8] [--reps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qkv.env import summary_line
from qkv.linear import ACTIVATIONS, Linear, set_int8

SHAPES = (("gelu_tanh", 768, 3072), ("gelu", 384, 1536), ("relu", 256, 1024), ("swish", 512, 2048))
ROWS = (1, 8, 64, 512)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantize", default="none", choices=("none", "int8"))
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args()
    print(f"{summary_line()}; weights {'int8' if a.quantize == 'int8' else 'fp32'}")
    g = torch.Generator().manual_seed(0)
    for activation, d_model, d_ff in SHAPES:
        lin = Linear(d_model, d_ff).eval()
        set_int8(lin, a.quantize == "int8")
        cells = []
        for rows in ROWS:
            x = torch.randn(rows, d_model, generator=g)
            times: dict[str, list[float]] = {"fused": [], "separate": []}
            with torch.no_grad():
                for i in range(a.reps + 5):
                    for name in times:
                        t0 = time.perf_counter()
                        if name == "fused":
                            lin(x, activation=activation)
                        else:
                            ACTIVATIONS[activation](lin(x))
                        if i >= 5:  # the first calls pack the weight and prepare the kernels
                            times[name].append(time.perf_counter() - t0)
            fused, separate = (statistics.median(times[name]) for name in ("fused", "separate"))
            cells.append(f"{rows} rows {fused * 1e6:.0f} us ({separate / fused:.2f}x)")
        print(f"{activation} {d_model} -> {d_ff}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
