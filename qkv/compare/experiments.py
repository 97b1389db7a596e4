"""The seven experiments of ``qkv compare``; each takes the sizes and returns JSON-ready results.

a ``parallelism``  forward+backward time of one layer of each family against sequence length
b ``path_length``  fewest layers until the last output depends on the first input (a directional derivative)
c ``long_range``   accuracy on "which token stood D positions before the end?" against D
d ``scaling``      softmax entropy, saturation and gradient at init against d_k; training curves
e ``query_batch``  one query at a time against all queries as one matrix product
f ``heads``        one head against several at equal d_model, on a task with two relations
g ``translation``  the three families through ``qkv train`` under the same step and token budget

Timings, probe trainings and ``qkv train`` runs use the device the comparison is given; the exact
computations (b, and d's statistics at initialisation, in float64 / float32) run on the CPU, where
their results do not depend on the hardware.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from qkv.attention import attention_per_query, attention_reference, scaled_dot_product_attention
from qkv.checkpoint import read_metrics
from qkv.compare.probes import FAMILIES, ProbeModel, probe_layer, seeded
from qkv.compare.sizes import CompareConfig
from qkv.devices import synchronize
from qkv.families import TRANSLATION_FAMILIES
from qkv.models import count_parameters

__all__ = [
    "heads",
    "long_range",
    "parallelism",
    "path_length",
    "query_batch",
    "scaling",
    "translation",
]

_CPU = torch.device("cpu")


def median_ms(fn: Callable[..., Any], repeats: int, *args: Any, device: torch.device = _CPU) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, after one warm-up call; each call is waited
    for on ``device`` before the clock is read."""
    fn(*args)
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _forward_backward(layer: nn.Module, x: Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()


def parallelism(cfg: CompareConfig, device: torch.device = _CPU) -> dict[str, Any]:
    """a. Forward+backward time of one layer per family against n on ``device``, and its sequential steps."""
    torch.manual_seed(cfg.seed)
    layers = {f: probe_layer(f, cfg.d_model).to(device) for f in FAMILIES}
    ms: dict[str, list[float]] = {f: [] for f in FAMILIES}
    for n in cfg.lengths:
        x = torch.randn(cfg.batch, n, cfg.d_model, device=device, requires_grad=True)  # (B, n, d)
        for f, layer in layers.items():  # families alternate at each length
            ms[f].append(median_ms(_forward_backward, cfg.repeats, layer, x, device=device))
    return {
        "lengths": list(cfg.lengths),
        "d_model": cfg.d_model,
        "batch": cfg.batch,
        "ms": ms,
        # operations that must run one after another inside one layer: attention and convolution
        # compute every position at once; the GRU needs step t-1's state for step t
        "sequential_steps": {
            "transformer": [1] * len(cfg.lengths),
            "rnn": list(cfg.lengths),
            "cnn": [1] * len(cfg.lengths),
        },
        "parameters": {f: count_parameters(layer) for f, layer in layers.items()},
    }


def push_tangent(layer: nn.Module, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), J_f(x) · t): the layer's output and its directional derivative along ``t``, by reverse mode
    twice. For a cotangent u, g(u) = J_fᵀ u is linear in u, so the gradient of ⟨g(u), t⟩ with respect to u
    is J_f t — exactly what forward mode gives, without torch's forward-mode machinery."""
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # the math kernel has the double backward
        x = x.detach().requires_grad_(True)
        y = layer(x)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
        (jt,) = torch.autograd.grad(g, u, t, allow_unused=True, materialize_grads=True)
    return y.detach(), jt.detach()


def _layers_to_reach(family: str, n: int, kernel: int, d: int, seed: int) -> tuple[int | None, float]:
    """Stack fresh layers one at a time, pushing a tangent at input position 0 forward (float64);
    return the first depth at which the last position's tangent is non-zero, and its norm."""
    torch.manual_seed(seed)
    x = torch.randn(1, n, d, dtype=torch.float64)
    t = torch.zeros_like(x)
    t[0, 0] = torch.randn(d, dtype=torch.float64)
    max_depth = n if family == "cnn" else 4  # attention and recurrence reach every position in one layer
    for depth in range(1, max_depth + 1):
        layer = probe_layer(family, d, heads=1, kernel=kernel).double()
        x, t = push_tangent(layer, x, t)
        norm = float(t[0, -1].norm())
        if norm > 0:
            return depth, norm
    return None, 0.0


def path_length(cfg: CompareConfig) -> dict[str, Any]:
    """b. Fewest layers at which d out[n-1] / d in[0] is non-zero, per family, n and kernel size."""
    rows = []
    for n in cfg.path_lengths:
        probes = [("transformer", 3), ("rnn", 3)] + [("cnn", k) for k in cfg.kernels]
        for family, k in probes:
            depth, norm = _layers_to_reach(family, n, k, cfg.path_d, cfg.seed)
            expected = math.ceil((n - 1) / ((k - 1) // 2)) if family == "cnn" else 1
            rows.append(
                {
                    "family": family,
                    "n": n,
                    "kernel": k if family == "cnn" else None,
                    "layers": depth,
                    "expected": expected,
                    "gradient_norm": norm,
                    # one layer of a GRU still chains n-1 state updates between the two positions
                    "sequential_steps_on_path": (n - 1) if family == "rnn" else depth,
                }
            )
    return {"d": cfg.path_d, "rows": rows}


def _train_classifier(
    model: nn.Module,
    batch_fn: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    test: tuple[Tensor, Tensor],
    steps: int,
    lr: float,
    seed: int,
) -> tuple[float, float]:
    """Adam with 50 warm-up steps then a constant rate, on the model's device (the batches are drawn on
    the CPU, the same on every device, and moved there); returns (test accuracy, seconds)."""
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = seeded(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        x, y = (t.to(device) for t in batch_fn(g))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    synchronize(device)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        x, y = (t.to(device) for t in test)
        pred = model(x).argmax(-1)
        keep = y != -100
        acc = float(((pred == y) & keep).sum() / keep.sum())
    return acc, seconds


def long_range(cfg: CompareConfig, device: torch.device = _CPU) -> dict[str, Any]:
    """c. Read a random sequence; answer the token D positions before the last one (trained on ``device``)."""
    V, n = cfg.long_vocab, max(cfg.distances) + 8  # the answer is never among the first tokens
    acc: dict[str, list[float]] = {f: [] for f in FAMILIES}
    params: dict[str, int] = {}
    seconds: dict[str, float] = {f: 0.0 for f in FAMILIES}
    for D in cfg.distances:
        test_x = torch.randint(V, (cfg.test_examples, n), generator=seeded(10_000 + D))
        test = (test_x, test_x[:, n - 1 - D])

        def batch(g: torch.Generator, D: int = D) -> tuple[Tensor, Tensor]:
            x = torch.randint(V, (cfg.train_batch, n), generator=g)
            return x, x[:, n - 1 - D]

        for f in FAMILIES:
            torch.manual_seed(cfg.seed)
            model = ProbeModel(f, V, V, cfg.long_d, cfg.long_layers[f], max_len=n).to(device)
            params[f] = count_parameters(model)
            a, s = _train_classifier(model, batch, test, cfg.long_steps, cfg.lr, cfg.seed + D)
            acc[f].append(a)
            seconds[f] += s
    return {
        "distances": list(cfg.distances),
        "sequence_length": n,
        "vocab": V,
        "chance": 1.0 / V,
        "layers": dict(cfg.long_layers),
        "d": cfg.long_d,
        "steps": cfg.long_steps,
        "accuracy": acc,
        "parameters": params,
        "train_seconds": seconds,
        "cnn_reach": cfg.long_layers["cnn"],  # each centred kernel-3 block sees one more position back
    }


def _softmax_stats(d_k: int, scale: float, rows: int, keys: int, g: torch.Generator) -> dict[str, float]:
    """Entropy, saturation and the gradient reaching the scores, for q, k ~ N(0, 1) (the paper's model)."""
    q = torch.randn(rows, d_k, generator=g)
    k = torch.randn(rows, keys, d_k, generator=g)
    v = torch.randn(rows, keys, 16, generator=g)
    upstream = torch.randn(rows, 16, generator=g)
    scores = (torch.einsum("rd,rnd->rn", q, k) * scale).requires_grad_()  # (R, n)
    p = torch.softmax(scores, dim=-1)
    out = torch.einsum("rn,rnd->rd", p, v)  # (R, 16)
    (out * upstream).sum().backward()
    assert scores.grad is not None
    p = p.detach()
    return {
        "entropy": float(-torch.xlogy(p, p).sum(-1).mean()),
        "saturated": float((p.max(-1).values > 0.99).float().mean()),
        "grad_norm": float(scores.grad.norm(dim=-1).mean()),
    }


def scaling(cfg: CompareConfig, runs: Path, log: Callable[[str], None], device: torch.device = _CPU) -> dict[str, Any]:
    """d. Scaled vs unscaled dot product: softmax statistics at init against d_k (CPU), and training
    curves (on ``device``)."""
    at_init: dict[str, dict[str, list[float]]] = {}
    for variant in ("scaled", "dot"):
        stats = [
            _softmax_stats(dk, dk**-0.5 if variant == "scaled" else 1.0, cfg.init_rows, cfg.init_keys, seeded(dk))
            for dk in cfg.d_ks
        ]
        at_init[variant] = {key: [s[key] for s in stats] for key in ("entropy", "saturated", "grad_norm")}
    curves = {}
    for variant in ("scaled", "dot"):
        log(f"  training the {cfg.curve_task} task with attention={variant}")
        overrides = [
            f"d_model={cfg.curve_d}",
            f"h={cfg.curve_h}",
            f"attention={variant}",
            f"steps={cfg.curve_steps}",
            f"eval_every={max(1, cfg.curve_steps // cfg.curve_points)}",
            f"warmup={max(1, cfg.curve_steps // 10)}",
        ]
        curves[variant] = _train_run(
            cfg.curve_task, overrides + list(cfg.run_overrides), runs / f"scaling-{variant}", device
        )
    return {
        "d_ks": list(cfg.d_ks),
        "keys": cfg.init_keys,
        "max_entropy": math.log(cfg.init_keys),
        "at_init": at_init,
        "curve_task": cfg.curve_task,
        "curve_d_k": cfg.curve_d // cfg.curve_h,
        "curves": curves,
    }


def query_batch(cfg: CompareConfig, device: torch.device = _CPU) -> dict[str, Any]:
    """e. Attention one query at a time (a loop) against all queries in one matrix product, on ``device``."""
    loop, matrix, fused, diff = [], [], [], []
    for n in cfg.lengths:
        g = seeded(n)
        d_k = cfg.d_model // cfg.heads_for_timing
        # drawn on the CPU (the same numbers on every device), then moved: (1, H, n, D) each
        q, k, v = (torch.randn(1, cfg.heads_for_timing, n, d_k, generator=g).to(device) for _ in range(3))
        loop.append(median_ms(attention_per_query, cfg.repeats, q, k, v, device=device))
        matrix.append(median_ms(attention_reference, cfg.repeats, q, k, v, device=device))
        fused.append(median_ms(scaled_dot_product_attention, cfg.repeats, q, k, v, device=device))
        diff.append(float((attention_per_query(q, k, v)[0] - attention_reference(q, k, v)[0]).abs().max()))
    return {
        "lengths": list(cfg.lengths),
        "heads": cfg.heads_for_timing,
        "d_k": cfg.d_model // cfg.heads_for_timing,
        "ms": {"per_query": loop, "query_batch": matrix, "fused": fused},
        "ratio": [a / b for a, b in zip(loop, matrix, strict=True)],
        "max_abs_diff": max(diff),
    }


def _two_relation_batch(g: torch.Generator, batch: int, n: int) -> tuple[Tensor, Tensor]:
    """Digits x; y_i = (x_{i-1} + x_{i+2}) mod 10 where both exist, else ignored (-100)."""
    x = torch.randint(10, (batch, n), generator=g)
    y = torch.full_like(x, -100)
    y[:, 1 : n - 2] = (x[:, 0 : n - 3] + x[:, 3:n]) % 10
    return x, y


def heads(cfg: CompareConfig, device: torch.device = _CPU) -> dict[str, Any]:
    """f. One layer, equal d_model, h heads: a task where each answer needs two different positions
    (trained on ``device``)."""
    n = cfg.heads_n
    test = _two_relation_batch(seeded(99_999), cfg.test_examples, n)
    acc: dict[str, list[float]] = {}
    for h in cfg.heads:
        acc[str(h)] = []
        for s in range(cfg.heads_seeds):
            torch.manual_seed(cfg.seed + s)
            model = ProbeModel("transformer", 10, 10, cfg.heads_d, 1, max_len=n, heads=h, readout="each").to(device)
            a, _ = _train_classifier(
                model, lambda g: _two_relation_batch(g, cfg.train_batch, n), test, cfg.heads_steps, cfg.lr, cfg.seed + s
            )
            acc[str(h)].append(a)
    return {
        "task": "y_i = (x_{i-1} + x_{i+2}) mod 10",
        "sequence_length": n,
        "d_model": cfg.heads_d,
        "steps": cfg.heads_steps,
        "seeds": cfg.heads_seeds,
        "accuracy": acc,
        "mean_accuracy": {h: statistics.mean(a) for h, a in acc.items()},
        "chance": 0.1,
    }


def _train_run(
    preset: str, overrides: list[str], out: Path, device: torch.device, family: str | None = None
) -> dict[str, Any]:
    """Train one run with qkv's trainer on ``device``; returns its summary and validation curve."""
    from qkv.train import recipe, train

    cfg = recipe(preset) if family is None else recipe(preset).with_family(family)
    overrides = [*overrides, f"train.device={device}"]
    summary = train(cfg, out, overrides=overrides, progress=False, log=lambda _msg: None)
    metrics = read_metrics(out)
    keys = ("step", "elapsed_s", "train_loss", "valid_loss", "valid_bleu", "valid_exact_match")
    curve = {key: [m.get(key) for m in metrics] for key in keys}
    return {"summary": summary, "curve": curve}


def _multi30k_task(data: Path) -> list[str]:
    """The task overrides that point the ``multi30k`` preset at a Multi30k directory."""
    files = {
        "train": ("train.de", "train.en"),
        "valid": ("val.de", "val.en"),
        "test": ("test_2016_flickr.de", "test_2016_flickr.en"),
    }
    return [
        f"task.{split}_{side}={data / name}"
        for split, pair in files.items()
        for side, name in zip(("src", "tgt"), pair, strict=True)
    ]


def _budget(cfg: CompareConfig, steps: int) -> tuple[str, list[str]]:
    """What each family gets: the same steps (warmup a sixth of them), or with ``translation_minutes``
    the same training minutes (its recipe's schedule fitted to the time, ten evaluations on the clock)."""
    minutes = cfg.translation_minutes
    if minutes > 0:
        return f"{minutes:g} training minutes", [
            f"max_minutes={minutes}",
            f"eval_minutes={minutes / 10}",
            "steps=1000000",  # an upper bound the clock reaches first
            "eval_every=1000000",
        ]
    return f"{steps} steps", [f"steps={steps}", f"eval_every={steps}", f"warmup={max(1, steps // 6)}"]


def translation(
    cfg: CompareConfig, runs: Path, log: Callable[[str], None], data: Path | None, device: torch.device = _CPU
) -> dict[str, Any]:
    """g. The three families through ``qkv train`` on ``device`` with the same batches and the same steps,
    or the same training minutes (Multi30k when given); test BLEU greedy and with the beam of
    ``cfg.translation_beam``."""
    if data is not None:
        preset = cfg.translation_timed_preset if cfg.translation_minutes > 0 else cfg.translation_preset
        steps, task = cfg.translation_steps, _multi30k_task(data)
    else:
        preset, steps, task = cfg.fallback_task, cfg.fallback_steps, []
    budget, limits = _budget(cfg, steps)
    results = {}
    for family in TRANSLATION_FAMILIES:
        log(f"  training the {family} family on {preset} for {budget}")
        out = runs / f"translation-{family}"
        results[family] = _train_run(preset, [*task, *limits, *cfg.run_overrides], out, device, family)
        if cfg.translation_beam > 1:
            from qkv.api import load

            split = results[family]["summary"]["eval_split"]
            beam = load(out, device=str(device)).evaluate(split, beam=cfg.translation_beam)
            results[family]["beam"] = {k: v for k, v in beam.items() if "signature" not in k}
    minutes, beam = cfg.translation_minutes, cfg.translation_beam
    return {"task": preset, "steps": steps, "minutes": minutes, "beam": beam, "runs": results}
