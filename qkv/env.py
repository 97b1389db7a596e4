"""What this machine offers qkv, for bug reports and for reading a speed figure: versions, devices,
threads, and the CPU's model and vector/matrix units (``qkv env``). Two machines of the same kind can
differ severalfold in speed (AVX2 vs AVX-512 with AMX), so every measured ratio names its machine."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

from qkv import __version__
from qkv.devices import CPU_FEATURES, cpu_info
from qkv.linear import packed_linear_available

__all__ = ["CPU_FEATURES", "cpu_info", "environment", "format_environment", "summary_line"]


def _accelerators() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cuda": {
            "available": cuda,
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        },
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }


def environment() -> dict[str, Any]:
    """Versions, CPU, threads and accelerators, as JSON-ready data."""
    model, features = cpu_info()
    return {
        "qkv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu": {
            "model": model,
            "architecture": platform.machine(),
            "cores": os.cpu_count(),
            "features": features,
            "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "packed_linear": packed_linear_available(),
        },
        **_accelerators(),
    }


def format_environment(env: dict[str, Any]) -> str:
    """The environment as aligned ``key: value`` lines."""
    cpu, cuda = env["cpu"], env["cuda"]
    rows = [
        ("qkv", env["qkv"]),
        ("torch", env["torch"]),
        ("Python", f"{env['python']} ({env['executable']})"),
        ("platform", env["platform"]),
        ("CPU", f"{cpu['model']} ({cpu['architecture']}, {cpu['cores']} cores)"),
        ("CPU features", ", ".join(cpu["features"]) or "none of " + ", ".join(CPU_FEATURES)),
        ("torch threads", cpu["torch_threads"]),
        ("torch CPU kernels", cpu["torch_cpu_capability"]),
        ("packed linear", "yes (oneDNN)" if cpu["packed_linear"] else "no (F.linear)"),
        ("CUDA", f"{cuda['version']}: " + ", ".join(cuda["devices"]) if cuda["available"] else "not available"),
        ("MPS", "available" if env["mps"] else "not available"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def summary_line(env: dict[str, Any] | None = None) -> str:
    """One line naming the machine, for reports of measured results."""
    env = env or environment()
    cpu = env["cpu"]
    features = "/".join(f for f in cpu["features"] if f in ("avx2", "avx512f", "amx_bf16")) or "no AVX2"
    return (
        f"torch {env['torch']}, {cpu['torch_threads']} threads, {cpu['model']} ({cpu['architecture']}, "
        f"{cpu['cores']} CPUs, {features})"
    )
