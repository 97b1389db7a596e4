"""Operator time of a torch profile by family: the aggregation the profiling benchmarks share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

OPERATORS = ("aten::", "mkldnn::", "quantized::")  # ATen's, oneDNN's packed linear, fbgemm's int8


def family_times(prof: Any, family: Callable[[str], str]) -> dict[str, float]:
    """Self CPU time (µs) of the profile's operators, summed by ``family(operator name)``; Python not counted."""
    times: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith(OPERATORS):
            times[family(e.key.split("::", 1)[1])] += e.self_cpu_time_total
    return dict(times)


def shares(times: dict[str, float]) -> str:
    """'family 57%, …', largest first."""
    total = sum(times.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(times.items(), key=lambda kv: -kv[1]))


TRAINING_FAMILIES = (  # operator families of a training step, first match wins
    ("attention kernel", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("matrix products", ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm")),
    ("loss and softmax", ("softmax", "nll", "cross_entropy", "logsumexp")),
    ("dropout and random numbers", ("dropout", "bernoulli", "random_", "rand", "uniform")),
    ("layer norm", ("layer_norm",)),
    ("optimizer", ("_foreach", "addcdiv", "addcmul", "lerp", "sqrt")),
    ("copies and layout", ("copy_", "clone", "cat", "index", "contiguous", "gather", "scatter")),
)


def training_family(name: str) -> str:
    """The family of an operator (its name without the namespace: ``addmm`` -> matrix products)."""
    return next((f for f, keys in TRAINING_FAMILIES if any(k in name for k in keys)), "other element-wise")


WEIGHT_PRODUCTS = ("_linear_pointwise", "linear", "addmm", "mm", "linear_dynamic")  # x Wᵀ (+ b): qkv.linear's paths
DECODING_MATMUL = ("mm", "addmm", "bmm", "matmul", "linear", "_linear_pointwise", "scaled_dot_product", "baddbmm")
DECODING_MOVES = ("index_select", "copy_", "index", "gather")


def decoding_family(name: str) -> str:
    """The family of an operator in a decoding profile: matrix products (attention's included), row moves
    and copies, or other."""
    if any(m in name for m in DECODING_MATMUL):
        return "matrix products"
    return "row moves and copies" if name in DECODING_MOVES else "other"
