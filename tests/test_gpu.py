"""On a real CUDA GPU (skipped without one; `benchmarks/gpu_check.py` runs them there): every verb gives
the CPU's results, training resumes exactly (the GPU's random generator is checkpointed), and fp16 and
bf16 training learn. The simulated GPU of tests/conftest.py covers device mistakes on CPU-only machines."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv.linear import Linear
from qkv.recipes import recipe
from qkv.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these)"),
]

TINY = ["d_model=32", "h=2", "N=2", "d_ff=64", "batch_size=16", "warmup=10", "task.max_len=8", "valid_size=16"]
TINY += ["test_size=16", "eval_every=1000", "save_minutes=0", "eps=1e-3"]


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "cpu"
    train(recipe("reverse"), out, overrides=[*TINY, "steps=150", "device=cpu"], progress=False, log=quiet)
    return out


def test_translation_on_the_gpu_equals_the_cpu(cpu_run):
    texts = ["a b c d", "d c b a", "b b a", "c"]
    cpu, gpu = qkv.load(cpu_run, device="cpu"), qkv.load(cpu_run, device="cuda")
    assert gpu.device.type == "cuda"
    assert all(m._packed is None for m in gpu.model.modules() if isinstance(m, Linear))
    for beam in (1, 4):
        assert gpu.translate(texts, beam=beam) == cpu.translate(texts, beam=beam)
    assert gpu.attention("a b c").output == cpu.attention("a b c").output
    bf16 = qkv.load(cpu_run, device="cuda", precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    same = sum(a == b for a, b in zip(bf16.translate(texts * 4), cpu.translate(texts * 4), strict=True))
    assert same >= 12  # bf16 weights may flip a close call, not most outputs


def test_training_on_the_gpu_resumes_exactly(tmp_path):
    """With dropout (drawn from the GPU's generator), 4 steps + 4 resumed equal 8 in one go."""
    steps = [*TINY, "dropout=0.1", "device=cuda", "steps=8", "save_every=4"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(recipe("reverse"), whole, overrides=steps, progress=False, log=quiet)
    train(recipe("reverse"), split, overrides=steps, until_step=4, progress=False, log=quiet)
    train(None, split, resume=True, progress=False, log=quiet)
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_mixed_precision_training_on_the_gpu_learns_as_fp32_does(tmp_path):
    accuracy = {}
    for precision in ("fp32", "bf16", "fp16"):
        overrides = [*TINY, "device=cuda", f"precision={precision}", "steps=400", "warmup=100"]
        summary = train(recipe("reverse"), tmp_path / precision, overrides=overrides, progress=False, log=quiet)
        assert summary["precision"] == precision and summary["device"].startswith("cuda")
        accuracy[precision] = summary[f"{summary['eval_split']}_token_accuracy"]
    assert accuracy["fp32"] > 0.25  # well above chance (on the CPU: 0.40 after these steps)
    assert accuracy["bf16"] > accuracy["fp32"] - 0.1 and accuracy["fp16"] > accuracy["fp32"] - 0.1, accuracy
