"""Where a model runs and in what number format: device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``,
``mps``), the precision of training and inference (``fp32``, ``bf16``, ``fp16``, ``auto``) and the
CPU features that decide them. Training and every verb (``--device``, ``--precision``) resolve their
names here, so a name means the same thing everywhere and a device that is not there is one line.

Precision in training is autocast (weights and optimizer state stay float32; fp16 adds a gradient
scaler, bf16 needs none). In inference the weights themselves are cast (half the memory and the
bandwidth of a decoding step); logits are read back in float32 before any softmax that ranks tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import re
from pathlib import Path

import torch

from qkv.errors import QkvError, shown

__all__ = [
    "CPU_FEATURES",
    "DEVICE_NAMES",
    "DTYPES",
    "PRECISIONS",
    "QUANTIZE",
    "autocast",
    "check_quantize",
    "compile_for_inference",
    "check_device_name",
    "cpu_info",
    "grad_scaler",
    "keep_freed_memory",
    "resolve_device",
    "resolve_precision",
    "synchronize",
]

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# CPU flags (as /proc/cpuinfo names them) that decide qkv's speed: vector width, bf16 and matrix units
CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(CPU model name, which of ``CPU_FEATURES`` it has); from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return model, [f for f in CPU_FEATURES if f in flags]


def check_device_name(name: str) -> bool:
    """Whether ``name`` is a device name qkv accepts (auto, cpu, cuda, cuda:N, mps)."""
    return isinstance(name, str) and _DEVICE.fullmatch(name) is not None


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, local_rank: int = 0, *, flag: str = "--device") -> torch.device:
    """The device ``name`` means here: ``auto`` is this rank's GPU, else Apple's GPU, else the CPU;
    ``cuda`` is this rank's GPU (``local_rank`` under torchrun). A device that is not there is a
    QkvError naming ``flag`` — never a silent fall back to the CPU."""
    if not check_device_name(name):
        raise QkvError(f"{flag} {shown(name)}: choose {DEVICE_NAMES}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        if cuda:
            return torch.device("cuda", local_rank)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not cuda:
            raise QkvError(
                f"{flag} {name}: torch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver); "
                "use --device cpu, or auto to take a GPU when there is one"
            )
        index = int(name[5:]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise QkvError(f"{flag} {name}: there are {torch.cuda.device_count()} CUDA devices (0 to N-1)")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise QkvError(f"{flag} mps: this torch sees no Apple GPU (MPS); use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (GPUs run asynchronously), so that a clock read
    after it measures the work; the CPU has nothing to wait for."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@functools.cache
def _cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 matrix (AMX) or dot-product (AVX-512 BF16) instructions; without them bf16
    is emulated and slower than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()[1]))


def resolve_precision(name: str, device: torch.device, *, flag: str = "--precision") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``name`` on ``device``: ``auto`` is bf16 where the hardware
    multiplies bf16 natively (a CUDA GPU that supports it; a CPU with AMX or AVX-512 BF16), else fp32."""
    if name not in PRECISIONS:
        raise QkvError(f"{flag} {shown(name)}: choose {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_multiplies_bf16() else "fp32"
    return "fp32"


# int8: dynamic int8 linear maps; int8-mixed: the same with each call's outlier input channels in float32
# (LLM.int8()'s decomposition: closer to fp32 for models with outlier features, e.g. BERT; slower per call)
QUANTIZE = ("none", "int8", "int8-mixed")


def check_quantize(
    quantize: str, device: torch.device, dtype: torch.dtype, compile: bool = False, *, flag: str = "--quantize"
) -> None:
    """int8 weights are an eager CPU inference path with float32 activations; anything else is one line."""
    if quantize not in QUANTIZE:
        raise QkvError(f"{flag} {shown(quantize)}: choose {' or '.join(QUANTIZE)}")
    if quantize == "none":
        return
    if compile:
        raise QkvError(
            f"{flag} {quantize} runs PyTorch's int8 kernels eagerly; a compiled graph would not: drop --compile"
        )
    if device.type != "cpu":
        raise QkvError(f"{flag} {quantize} runs on the CPU (PyTorch's int8 kernels); use --device cpu, or drop {flag}")
    if dtype != torch.float32:
        raise QkvError(f"{flag} {quantize} quantizes float32 activations per call: drop --precision (or use fp32)")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region of a training forward pass in ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (gradients of small losses underflow in fp16); None for fp32 and bf16."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Compile ``model`` in place for inference: its ``forward`` and each layer of its stacks (the modules
    held in an ``nn.ModuleList``, which decoding calls one step at a time), with dynamic shapes so that
    a new batch size or length does not compile again. Returns ``model``."""
    model.compile(dynamic=True)
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for layer in module:
                layer.compile(dynamic=True)
    return model


# glibc's mallopt parameters (malloc.h): the free memory at the heap's top kept before it is given back, and
# the most allocations served by mmap (each mmap'd block goes back to the kernel when freed)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have this process's malloc keep the memory tensors free for the next ones instead of giving it back
    to the kernel; True where that took effect (glibc), False elsewhere (nothing changes).

    PyTorch allocates every CPU tensor with malloc. glibc serves large blocks (the activations and
    gradients of a training step, a decoding batch's logits) with mmap and unmaps them when freed, so the
    next step's tensors come back as page faults on fresh zeroed pages (the ``multi30k-30min`` recipe on the
    2-core development CPU: 9x fewer faults, 1.13x the training speed; ``benchmarks/alloc_speed.py``).
    With mmap off and the heap never trimmed, freed blocks are reused as they are; the process keeps its
    peak memory until it exits. The qkv command sets this for its own process; a program that imports qkv
    decides for its own (call this first)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
