"""Shared fixtures: a tiny run trained once per test session; a CUDA device simulated on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (marian_dirs.py) import as plain modules

TINY = [
    "d_model=32",
    "h=2",
    "N=2",
    "d_ff=64",
    "dropout=0.0",
    "steps=120",
    "batch_size=32",
    "warmup=20",
    "eval_every=60",
    "task.max_len=8",
    "valid_size=32",
    "test_size=32",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make any Transformer translation recipe tiny and fast."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reverse-task run, partly trained (so it emits <eos> at varied lengths), shared read-only."""
    from qkv.train import recipe, train

    out = tmp_path_factory.mktemp("runs") / "reverse"
    train(recipe("reverse"), out, overrides=TINY, progress=False, log=lambda m: None)
    return out


LM_TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20).strip()
LM = ["d_model=32", "h=2", "N=2", "max_len=16", "steps=4", "eval_every=4", "batch_size=4", "warmup=2"]


@pytest.fixture(scope="session")
def family_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run of every family (translation ones on the reverse task, GPT and BERT on a short text)."""
    from qkv.families import TRANSLATION_FAMILIES
    from qkv.train import recipe, train

    root = tmp_path_factory.mktemp("families")
    text = root / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    tiny = ["d_model=16", "steps=4", "batch_size=8", "warmup=2", "eval_every=4", "task.max_len=6", "dropout=0.0"]
    tiny += ["valid_size=8", "test_size=8"]
    out = {}
    for name in TRANSLATION_FAMILIES:
        out[name] = root / name
        train(recipe("reverse").with_family(name), out[name], overrides=tiny, progress=False, log=lambda m: None)
    for name, preset in (("gpt", "shakespeare-char"), ("bert", "bert-mini")):
        out[name] = root / name
        extra = ["d_ff=64", "eval_batches=2"] if name == "bert" else []
        overrides = [*LM, *extra, f"task.path={text}"]
        train(recipe(preset), out[name], overrides=overrides, progress=False, log=lambda m: None)
    return out


# ----- a CUDA device simulated on the CPU, to catch tensors made on the wrong device without a GPU -----
#
# Tensors "on" the fake GPU are CPU tensors of the class FakeCuda, whose ``device`` says cuda:0. Any torch
# function given FakeCuda tensors and plain CPU tensors of one or more dimensions raises the error CUDA
# raises ("Expected all tensors to be on the same device"); 0-dim CPU tensors pass, as on CUDA. Factory
# functions called with device="cuda", ``.to("cuda")`` and ``.cuda()`` make FakeCuda tensors; ``.cpu()`` and
# ``.to("cpu")`` make plain ones; ``.numpy()`` on a FakeCuda tensor fails as on CUDA. The arithmetic itself
# runs on the CPU, so results can be compared with a CPU run.

FAKE_CUDA = torch.device("cuda", 0)
# functions that take tensors of both devices on CUDA too: indexing and copies
_DEVICE_FREE = {"__getitem__", "__setitem__", "copy_", "__get__", "__set__", "_has_compatible_shallow_copy_type"}
# packed sequences keep their lengths / batch sizes (an int64 argument or output at this position) on the CPU
_CPU_LENGTHS = {"_pack_padded_sequence": 1, "_pad_packed_sequence": 1, "gru": 1, "lstm": 1, "rnn_tanh": 1}


class FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on cuda:0 and refuses to meet plain CPU tensors."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE_CUDA

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    def numpy(self, *args, **kwargs):  # type: ignore[override]
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        lengths = _CPU_LENGTHS.get(name)
        if name not in _DEVICE_FREE:
            checked = [t for i, t in enumerate(args) if not (i == lengths and _is_lengths(t))]
            flat = torch.utils._pytree.tree_flatten((checked, kwargs))[0]
            if any(isinstance(t, torch.Tensor) and not isinstance(t, FakeCuda) and t.dim() > 0 for t in flat):
                raise RuntimeError(f"Expected all tensors to be on the same device, but found cuda:0 and cpu ({name})")
        out = super().__torch_function__(func, types, args, kwargs)
        if lengths is not None and isinstance(out, tuple) and len(out) > lengths and _is_lengths(out[lengths]):
            out = (*out[:lengths], out[lengths].as_subclass(torch.Tensor), *out[lengths + 1 :])
        return out


def _is_lengths(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype == torch.int64


def _on(t, cuda: bool):
    if not isinstance(t, torch.Tensor):
        return t
    return t.as_subclass(FakeCuda) if cuda else t.as_subclass(torch.Tensor)


class _FakeCudaMode(torch.overrides.TorchFunctionMode):
    """Routes moves and factories aimed at cuda to FakeCuda tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            x, rest = args[0], list(args[1:])
            if func is torch.Tensor.to:
                if rest and isinstance(rest[0], torch.Tensor):  # .to(other): its device and dtype
                    rest = [rest[0].device, rest[0].dtype, *rest[1:]]
                device, dtype, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
            else:
                device, dtype = (FAKE_CUDA if func is torch.Tensor.cuda else torch.device("cpu")), None
            plain = x.as_subclass(torch.Tensor)
            out = plain.to(dtype) if dtype is not None else plain
            cuda = isinstance(x, FakeCuda) if device is None else torch.device(device).type == "cuda"
            return _on(out, cuda)
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda" and func is not torch._C._nn._parse_to:
            kwargs["device"] = "cpu"
            return torch.utils._pytree.tree_map(lambda t: _on(t, True), func(*args, **kwargs))
        return func(*args, **kwargs)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """A simulated CUDA device (see above): torch.cuda says one is there while the test runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # parameters become FakeCuda on .to()
    try:
        with _FakeCudaMode():
            yield FAKE_CUDA
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
