"""The prepared GPU check: one script to run once on a CUDA machine, writing every figure to one JSON file.

1. the GPU-marked tests (tests/test_gpu.py: verbs equal to the CPU, exact resume, fp16/bf16 training);
2. the GPU's bf16 matrix-product rate (8192³, the ceiling the other figures are read against);
3. the ``multi30k`` model trained for 200 steps from a token store in fp32, bf16 and bf16 + compile:
   target tokens/s (steps 11-200) and peak memory;
4. GPT-2 small (124M) at context 1024 trained for 50 steps in bf16 (eager and compiled): tokens/s and
   model FLOPs utilisation against the GPU's datasheet peak and the measured matrix-product rate;
5. which scaled-dot-product-attention kernel ran (CUDA kernel names from the profiler);
6. decoding the Multi30k test set with a trained run: sentences/s and BLEU, greedy and beam 5, fp32 and bf16;
7. the bf16 ``multi30k`` training sections again with cuDNN's attention kernel let back in (torch's own
   choice on recent GPUs, which :mod:`qkv.attention` leaves out): the A/B behind that rule;
8. the comparison's timings on the GPU (``qkv compare`` a. one layer per family forward+backward against
   n, e. one query at a time against the query batch): the seed's parallelism claim where there are
   parallel units.

Each section is timed and guarded: one that fails records its error and the next runs. ``--quick
--device cpu`` runs every section at toy sizes on the CPU, to check the script before a GPU is lent.

    python benchmarks/gpu_check.py --store DATA --run RUN --src test.de --ref test.en --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend

import qkv
from qkv.env import summary_line
from qkv.models import GPT
from qkv.models.gpt import GPT_PRESETS
from qkv.objectives import token_loss
from qkv.recipes import TrainConfig, recipe
from qkv.train import Trainer, make_optimizer, train_step
from qkv.trainlog import TrainLog

# Dense bf16 matrix rate of the datasheets (NVIDIA H100/H200 SXM: 989 TFLOP/s), by the name CUDA reports.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def quiet(_msg: str) -> None:
    pass


def sync_time() -> float:
    """A wall-clock reading after the GPU (if any) has finished its queued work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_mb(device: torch.device) -> float | None:
    """The GPU's peak tensor memory since the last reset (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def gpu_tests() -> dict[str, Any]:
    """Run tests/test_gpu.py with pytest; its exit status and last lines."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider", "-rA"]
    res = subprocess.run([*cmd, "-W", "ignore::DeprecationWarning"], capture_output=True, text=True, timeout=300)
    return {"returncode": res.returncode, "tail": (res.stdout + res.stderr).strip().splitlines()[-8:]}


def matmul_rate(device: torch.device, n: int) -> dict[str, Any]:
    """TFLOP/s of an n³ bf16 matrix product (mean of 10 after 3 warm-ups)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    t0 = sync_time()
    for _ in range(10):
        a @ b
    seconds = (sync_time() - t0) / 10
    return {"bf16_matmul_tflops": round(2 * n**3 / seconds / 1e12, 1)}


def train_multi30k(
    store: Path, work: Path, device: torch.device, precision: str, compile: bool, steps: int
) -> dict[str, Any]:
    """The ``multi30k`` recipe from a token store for ``steps`` steps: tokens/s after the first 10, peak memory."""
    cfg = recipe("multi30k").with_data("'multi30k'", data=store)
    cfg = cfg.with_overrides([f"device={device.type}", f"precision={precision}", f"compile={str(compile).lower()}"])
    out = work / f"m30k-{precision}{'-compile' if compile else ''}"
    trainer = Trainer(cfg, out, device=device, say=quiet)
    trainer.log = TrainLog(
        out, log_every=0, tensorboard=False, main=True, progress=False, step=0, total=steps, device=device, say=quiet
    )
    t_first = time.perf_counter()
    losses = [trainer.train_one_step()[0].loss for _ in range(10)]
    first_ten = sync_time() - t_first
    reset_peak(device)
    tokens, t0 = 0, sync_time()
    for _ in range(steps - 10):
        stats, _ = trainer.train_one_step()
        tokens += stats.tokens
        losses.append(stats.loss)
    seconds = sync_time() - t0
    return {
        "tokens_per_second": round(tokens / seconds),
        "steps_per_second": round((steps - 10) / seconds, 2),
        "first_10_steps_s": round(first_ten, 1),
        "loss_step_1": round(losses[0], 3),
        f"loss_step_{steps}": round(stats.loss, 3),
        f"mean_loss_steps_{steps - 19}_{steps}": round(sum(losses[-20:]) / 20, 3),
        "peak_memory_mb": peak_mb(device),
        "parameters": trainer.parameters,
    }


def gpt2_flops_per_token(model: GPT, T: int) -> float:
    """Training FLOPs per token: 6·N (N without the position table) + 12·L·d·T for attention (PaLM's count)."""
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters()) - model.positions.embedding.weight.numel()
    return 6 * n + 12 * cfg.N * cfg.d_model * T


def train_gpt2(
    device: torch.device, B: int, T: int, compile: bool, peak_tflops: float, measured_tflops: float | None
) -> dict[str, Any]:
    """GPT-2 small at context T, batch B, AdamW, bf16 autocast, 50 steps: tokens/s over steps 11-50, MFU."""
    torch.manual_seed(0)
    model = GPT(GPT_PRESETS["gpt2"]).to(device)
    cfg = TrainConfig(lr=6e-4, schedule="constant", warmup=0, weight_decay=0.1, precision="bf16", betas=(0.9, 0.95))
    optimizer = make_optimizer(model, cfg)
    trained = torch.compile(model) if compile else model
    idx = torch.randint(0, model.cfg.vocab_size, (B, T + 1), device=device)
    batch = [idx]

    def loss_fn(m: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        return token_loss(m(b[:, :-1]), b[:, 1:])

    def step(i: int) -> float:
        return train_step(trained, optimizer, batch, cfg, i, loss_fn=loss_fn, total_tokens=B * T).loss

    t_first = time.perf_counter()
    for i in range(1, 11):
        step(i)
    first_ten = sync_time() - t_first
    reset_peak(device)
    t0 = sync_time()
    for i in range(11, 51):
        loss = step(i)
    seconds = sync_time() - t0
    tps = 40 * B * T / seconds
    flops = gpt2_flops_per_token(model, T) * tps
    out = {
        "tokens_per_second": round(tps),
        "ms_per_step": round(1000 * seconds / 40, 1),
        "first_10_steps_s": round(first_ten, 1),
        "loss_step_50": round(loss, 3),
        "model_tflops": round(flops / 1e12, 1),
        "mfu_vs_datasheet_peak": round(flops / (peak_tflops * 1e12), 3),
        "peak_memory_mb": peak_mb(device),
    }
    if measured_tflops:
        out["mfu_vs_measured_matmul"] = round(flops / (measured_tflops * 1e12), 3)
    return out


def sdpa_kernels(run: Path, device: torch.device) -> dict[str, Any]:
    """CUDA kernels of attention seen by the profiler in a GPT-2 forward (causal, no mask) and in the
    Multi30k Transformer's forward (padding masks), bf16."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(fn: Callable[[], Any]) -> list[str]:
        fn()
        activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            fn()
            sync_time()
        names = {e.key for e in prof.key_averages()}
        words = ("flash", "fmha", "efficient", "attention", "cudnn", "sdpa")
        return sorted(n[:120] for n in names if any(w in n.lower() for w in words))

    gpt = GPT(GPT_PRESETS["gpt2"]).to(device=device, dtype=torch.bfloat16).eval()
    idx = torch.randint(0, 50257, (2, 1024), device=device)
    m30k = qkv.load(run, device=device.type, precision="bf16")
    src = m30k.encode_source(["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee mit einem Ball."] * 16)
    tgt = src[:, :8]
    with torch.no_grad():
        return {
            "gpt2_causal": kernels(lambda: gpt(idx)),
            "transformer_masked": kernels(lambda: m30k.model(src, tgt)),
            "flash_enabled": torch.backends.cuda.flash_sdp_enabled(),
        }


def with_cudnn_attention(fn: Callable[[], Any]) -> Any:
    """``fn()`` with cuDNN's attention kernel back among the fused backends qkv lets torch choose from."""
    import qkv.attention as attention

    kept = attention.FUSED_BACKENDS
    attention.FUSED_BACKENDS = [SDPBackend.CUDNN_ATTENTION, *kept]
    try:
        return fn()
    finally:
        attention.FUSED_BACKENDS = kept


def decode(run: Path, src: Path, ref: Path, device: torch.device) -> dict[str, Any]:
    """Sentences/s and BLEU of the test set, greedy and beam 5, fp32 and bf16 weights (after a warm-up)."""
    out: dict[str, Any] = {}
    n = sum(1 for _ in src.open(encoding="utf-8"))
    for precision in ("fp32", "bf16"):
        loaded = qkv.load(run, device=device.type, precision=precision)
        loaded.translate(["Ein Mann fährt Fahrrad."] * 64, beam=5)
        for beam in (1, 5):
            t0 = sync_time()
            res = loaded.evaluate_files(src, ref, beam=beam)
            seconds = sync_time() - t0
            speed = round(n / seconds, 1)
            out[f"{precision}_beam{beam}"] = {"sentences_per_second": speed, "bleu": round(res["bleu"], 2)}
    return out


def compare_timings(device: torch.device, quick: bool) -> dict[str, Any]:
    """Experiments a (parallelism) and e (query batch) of ``qkv compare`` on ``device``."""
    from qkv.compare import SIZES
    from qkv.compare.experiments import parallelism, query_batch

    cfg = SIZES["smoke" if quick else "full"]
    return {"parallelism": parallelism(cfg, device), "query_batch": query_batch(cfg, device)}


def main() -> None:
    """Run every section, saving the JSON after each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="a token store of Multi30k (qkv prepare)")
    p.add_argument("--run", type=Path, required=True, help="a trained multi30k run")
    p.add_argument("--src", type=Path, required=True, help="test_2016_flickr.de")
    p.add_argument("--ref", type=Path, required=True, help="test_2016_flickr.en")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temporary one)")
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu with --quick to check the script")
    p.add_argument("--quick", action="store_true", help="toy sizes")
    p.add_argument("--only", nargs="+", metavar="SECTION", help="run these sections only (names as in the JSON)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    steps, n, (B, T) = (20, 512, (1, 64)) if a.quick else (200, 8192, (16, 1024))
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    results: dict[str, Any] = {"gpu": name, "torch": torch.__version__, "environment": summary_line()}
    results["datasheet_bf16_tflops"] = peak
    a.work = a.work or Path(tempfile.mkdtemp(prefix="qkv-gpu-check-"))
    a.work.mkdir(parents=True, exist_ok=True)

    def measured() -> float | None:
        return results["matmul"].get("bf16_matmul_tflops")

    sections: list[tuple[str, Callable[[], Any]]] = [
        ("tests", gpu_tests),
        ("matmul", lambda: matmul_rate(device, n)),
        ("compare_timings", lambda: compare_timings(device, a.quick)),
        ("multi30k_fp32", lambda: train_multi30k(a.store, a.work, device, "fp32", False, steps)),
        ("multi30k_bf16", lambda: train_multi30k(a.store, a.work, device, "bf16", False, steps)),
        ("sdpa", lambda: sdpa_kernels(a.run, device)),
        ("decode", lambda: decode(a.run, a.src, a.ref, device)),
        ("gpt2_bf16", lambda: train_gpt2(device, B, T, False, peak or math.nan, measured())),
        ("gpt2_bf16_compile", lambda: train_gpt2(device, B, T, True, peak or math.nan, measured())),
        ("multi30k_bf16_compile", lambda: train_multi30k(a.store, a.work, device, "bf16", True, steps)),
        *(
            (
                f"multi30k_bf16{'_compile' if c else ''}_with_cudnn",
                lambda c=c: with_cudnn_attention(lambda: train_multi30k(a.store, a.work, device, "bf16", c, steps)),
            )
            for c in (False, True)
        ),
    ]
    unknown = sorted(set(a.only or ()) - {key for key, _ in sections})
    if unknown:
        p.error(f"--only {' '.join(unknown)}: no such section; choose from {' '.join(key for key, _ in sections)}")
    for key, fn in sections:
        if a.only and key not in a.only:
            continue
        t0 = time.perf_counter()
        try:
            results[key] = fn()
        except Exception as e:  # record and go on: one broken section must not cost the others
            results[key] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        results[key + "_seconds"] = round(time.perf_counter() - t0, 1)
        print(key, json.dumps(results[key]), flush=True)
        a.out.write_text(json.dumps(results, indent=1))
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
