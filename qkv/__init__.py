"""qkv: the Transformer of *Attention Is All You Need*, from its parts — train it, decode with it,
look inside it, compare it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from qkv.families.base import Run


def load(
    run: Any, *, device: str = "auto", precision: str = "fp32", compile: bool = False, quantize: str = "none"
) -> Run:
    """Load a run directory: the model, its tokenizers and config, with methods mirroring the CLI
    (see :func:`qkv.api.load` for ``device``, ``precision``, ``compile`` and ``quantize``)."""
    from qkv.api import load as _load

    return _load(run, device=device, precision=precision, compile=compile, quantize=quantize)
