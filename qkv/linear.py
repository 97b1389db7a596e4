"""The linear map y = x Wᵀ + b, with a fast path for inference on CPU.

Three paths compute the same thing (the third approximately):

* the **reference path**, :func:`torch.nn.functional.linear`, used for training, on GPUs and for
  any dtype but float32;
* the **packed path**, for forward passes without autograd on CPU in float32: oneDNN multiplies by a
  copy of W reordered once into its blocked layout. Decoding one token at a time is a stream of
  matrix-vector products, bound by how fast W is read from memory; the packed layout reads it at
  close to the machine's bandwidth, about twice as fast as the plain layout on an AVX2 CPU.

* the **int8 path**, after :func:`set_int8` (``qkv.load(..., quantize="int8")``, ``--quantize int8``): each
  row of W quantized to int8 with its own scale, the input quantized per call, fbgemm's int8 matrix
  product (``torch.ops.quantized.linear_dynamic``: PyTorch's dynamic quantization). A quarter of the
  bytes per weight, for CPU inference that is bound by reading them. On CPUs with AMX, large products
  (:func:`int8_engine`: at least :data:`ONEDNN_INT8_ROWS` rows and :data:`ONEDNN_INT8_MACS`
  multiply-adds) run oneDNN's int8 kernel on a second packed copy instead, with the same quantization:
  up to 7× fbgemm's speed there, 1.1–1.9× on most of those products (``benchmarks/int8_engines.py``);
  oneDNN prepares a kernel, about 1 ms, for each new row count (kept in its cache). On CPUs where that product would
  saturate at full-range weights (AVX2 without VNNI), the weights take 7 bits (:func:`int8_weight_max`).
  The input's one scale per call is what costs precision, and a few input channels of trained models
  (BERT's, after a LayerNorm or a GELU) are 10–20× larger than the rest: with ``outliers``
  (``--quantize int8-mixed``) such channels go through float32 with their columns of W, the others
  through int8 (the mixed-precision decomposition of LLM.int8(), Dettmers et al. 2022;
  :func:`int8_linear`). It finds them anew in every call, which costs a few small operators per call:
  worth it for wide batched inputs (encoding), not for decoding a small model token by token.

The packed path uses two oneDNN operators that PyTorch registers for its own compiler
(``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``; private, so
:func:`packed_linear_available` checks once that they exist and agree with ``F.linear``, and the
reference path runs if not). The selection rule is one condition in :meth:`Linear.rows`, which
``forward`` calls for all rows and fused projections call for a block of rows.

The packed copy is made on first use, made again when the weight changes — it is another tensor,
its version counter moved (optimizer steps, ``load_state_dict``, in-place ops) or its storage moved —
and dropped when the module is put back into training mode or moved (``.to``). Under ``torch.compile``
the reference path runs (the compiler picks its own kernels). Writes through ``weight.data`` bypass
the version counter (as they bypass autograd): after one, call ``model.train()`` or write under
``torch.no_grad()`` instead. The copy costs as much memory as the weight while it is kept;
``set_packing(model, False)`` (or ``Linear.packing = False`` on one module or on the class) turns the
packed path off.
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "ONEDNN_INT8_MACS",
    "ONEDNN_INT8_ROWS",
    "OUTLIER_RATIO",
    "Linear",
    "int8_engine",
    "int8_linear",
    "int8_weight_max",
    "onednn_int8_available",
    "packed_linear_available",
    "set_int8",
    "set_packing",
]

# oneDNN lays the packed weight out for an expected number of input rows. Measured on a 2-core AVX2
# CPU over GPT-2 small's matrices: a hint of 16 rows is 5–10% faster than no hint at 1 and 8 rows
# (decoding) and the same at 32–512 rows (prompts, evaluation batches).
PACK_ROWS = 16


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "swish": F.silu,  # x · sigmoid(x) (Marian's opus-mt models)
}
"""The activations a :class:`Linear` can apply to its output (``activation=``: the feed-forward's hidden
layer)."""

# Each activation as oneDNN's packed linear fuses it into the product: (post-op, its algorithm); int8's
# kernels fuse relu alone (``linear_relu_dynamic``). Tested to agree with ACTIVATIONS.
POST_OPS = {"relu": ("relu", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "swish": ("swish", "")}


@functools.cache
def packed_linear_available() -> bool:
    """True when this torch build has oneDNN's prepacked linear and it agrees with F.linear."""
    try:
        ops = torch.ops.mkldnn
        g = torch.Generator().manual_seed(0)  # a probe must not move the global RNG (dropout, resuming)
        w, b, x = (torch.randn(*shape, generator=g) for shape in ((8, 4), (8,), (3, 4)))
        y = ops._linear_pointwise(x, ops._reorder_linear_weight(w, PACK_ROWS), b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose CPU float32 inference runs on a
    oneDNN-prepacked copy of the weight; see the module docstring for when and why."""

    packing: bool = True
    int8: bool = False  # set_int8: inference on int8 weights (CPU, float32 activations)
    int8_outliers: bool = False  # set_int8(outliers=True): outlier input channels in float32 (int8_linear)

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device: torch.device | None = None
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device)
        # None, or per block of output rows (start, stop): (the weight packed, its (version, data_ptr) then,
        # the packed copy)
        self._packed: dict[tuple[int, int], tuple[weakref.ref[Tensor], tuple[int, int], Tensor]] | None = None

    def _packed_weight(self, start: int, stop: int, kind: str = "fp32") -> Any:
        """The packed copy of rows start..stop-1 of the current weight — ``kind`` fp32: oneDNN's float32
        layout; fbgemm or onednn: that int8 kernel's, weights quantized per row — packed again if the weight
        is another tensor, was changed in place (its version counter moved) or moved to other storage."""
        w = self.weight
        state = (w._version, w.data_ptr())
        if self._packed is None:
            self._packed = {}
        key = (start, stop) if kind == "fp32" else (start, stop, kind)
        kept = self._packed.get(key)  # type: ignore[call-overload]
        if kept is None or kept[0]() is not w or kept[1] != state:
            self._packed.pop(key, None)  # type: ignore[call-overload]  # free the stale copy first
            rows = w.detach()[start:stop].contiguous()
            if kind == "fp32":
                packed = torch.ops.mkldnn._reorder_linear_weight(rows, PACK_ROWS)
            else:
                bias = None if self.bias is None else self.bias.detach()[start:stop].contiguous()
                packed = _int8_pack(rows, bias, engine=None if kind == "fbgemm" else kind)
            self._packed[key] = (weakref.ref(w), state, packed)  # type: ignore[index]
        return self._packed[key][2]  # type: ignore[index]

    def _int8_rows(self, x: Tensor, start: int, stop: int, weight: Tensor, activation: str | None) -> Tensor:
        """x (N, in_features) -> (N, stop - start) on int8 weights, by the kernel :func:`int8_engine` picks,
        then ``activation`` (relu fused into the kernel)."""
        packed = self._packed_weight(start, stop, int8_engine(x.size(0), stop - start, x.size(1)))
        if self.int8_outliers:
            y = int8_linear(x, packed, weight)
        elif activation == "relu":
            return torch.ops.quantized.linear_relu_dynamic(x, packed, False)
        else:
            y = torch.ops.quantized.linear_dynamic(x, packed, False)
        return y if activation is None else ACTIVATIONS[activation](y)

    def rows(self, x: Tensor, start: int, stop: int, activation: str | None = None) -> Tensor:
        """x (..., in_features) -> (..., stop - start): only output rows start..stop-1 of the map (e.g. the
        W^K, W^V block of a fused attention projection), then ``activation`` (a name in
        :data:`ACTIVATIONS`; fused into the product on the packed and int8 paths where the kernel can)."""
        weight, bias = self.weight, self.bias
        if (start, stop) != (0, self.out_features):  # a block: slices (all rows train on the parameters
            weight = weight[start:stop]  # themselves; a slice's backward writes a weight-sized zero tensor)
            bias = None if bias is None else bias[start:stop]
        fast = not torch.is_grad_enabled() and x.device.type == "cpu" and not torch.compiler.is_compiling()
        if fast and self.int8 and x.dtype == torch.float32:
            y = self._int8_rows(x.reshape(-1, x.size(-1)), start, stop, weight, activation)  # (N, stop - start)
            return y.view(*x.shape[:-1], stop - start)
        if fast and self.packing and x.dtype == self.weight.dtype == torch.float32 and packed_linear_available():
            post_op, algorithm = POST_OPS[activation] if activation else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(start, stop), bias, post_op, [], algorithm)
        y = F.linear(x, weight, bias)
        return y if activation is None else ACTIVATIONS[activation](y)

    def forward(self, x: Tensor, activation: str | None = None) -> Tensor:
        """x (..., in_features) -> (..., out_features), then ``activation`` (see :meth:`rows`)."""
        return self.rows(x, 0, self.out_features, activation)

    def _apply(self, fn: Any, recurse: bool = True) -> Linear:
        """Moves and casts (``.to``, ``.cuda``, ``.half``) drop the packed copies: they belong to the old
        weight, and no CPU copy stays behind when the model goes to a GPU."""
        self._packed = None
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> Linear:
        """Set training mode; entering it drops the packed copies."""
        if mode:
            self._packed = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weights behind (they are remade on first use)."""
        state = dict(super().__getstate__())
        state["_packed"] = None
        return state


@functools.cache
def int8_weight_max() -> int:
    """The largest int8 weight magnitude fbgemm multiplies exactly here: 127, or 63 where its kernel adds
    pairs of u8·s8 products in int16 (AVX2 CPUs without VNNI), which a full-range pair overflows
    (255·127·2 > 32,767: the sum saturates). Measured once on the worst case, all 255 times all 127."""
    ones = torch.ones(1, 64, device="cpu")  # u8 255 after the per-call quantization; s8 127 for the weight
    y = torch.ops.quantized.linear_dynamic(ones, _int8_pack(ones, None, 127), False)
    return 127 if abs(y.item() - 64.0) < 0.5 else 63


_ENGINE_LOCK = threading.Lock()  # the quantized engine is process-wide; only packing reads it


def _int8_pack(w: Tensor, bias: Tensor | None, qmax: int | None = None, *, engine: str | None = None) -> Any:
    """The packed int8 weight of ``engine``'s kernel (None: the default engine's, fbgemm on x86): each row
    quantized symmetrically, to ±qmax (default int8_weight_max()), with its own scale (activations keep all
    8 bits: their one scale per call is what costs precision). A packed weight keeps its kernel whatever
    the engine is later: ``linear_dynamic`` dispatches on it."""
    scales = (w.abs().amax(dim=1) / (qmax or int8_weight_max())).clamp(min=1e-12).double()
    zero = torch.zeros(w.size(0), dtype=torch.long, device=w.device)
    with warnings.catch_warnings():  # quantized tensors are PyTorch's (deprecated) way into these kernels
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w.float(), scales, zero, 0, torch.qint8)
    if engine is None:
        return torch.ops.quantized.linear_prepack(qw, bias)
    with _ENGINE_LOCK:
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            return torch.ops.quantized.linear_prepack(qw, bias)
        finally:
            torch.backends.quantized.engine = before


# Where oneDNN's int8 product beats fbgemm's on a 2-core AMX Xeon (benchmarks/int8_engines.py, ratios of
# the two side by side): from about 2^25 multiply-adds per call (1.09–1.44× at 128–320 rows of the Multi30k
# model's 1024×256 map, 1.4–7× of its 8000×256 output projection, 1.1–3.8× on GPT-2's maps; 0.9× on the
# Multi30k model's 256×1024 at 128–320 rows, which one simple rule accepts), and not below 32 rows, where
# fbgemm is up to 3× faster whatever the size (batch-1 decoding).
ONEDNN_INT8_ROWS = 32
ONEDNN_INT8_MACS = 1 << 25


@functools.cache
def onednn_int8_available() -> bool:
    """True on a CPU with AMX tiles whose torch build has oneDNN's quantized engine, and its int8 product
    agrees with fbgemm's (the same quantization: to float32 rounding)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent means: not known, not used
    try:
        if amx is None or not amx() or "onednn" not in torch.backends.quantized.supported_engines:
            return False
        g = torch.Generator().manual_seed(0)  # a probe must not move the global RNG
        w, b, x = (torch.randn(*shape, generator=g) for shape in ((16, 64), (16,), (40, 64)))
        ys = [torch.ops.quantized.linear_dynamic(x, _int8_pack(w, b, engine=e), False) for e in (None, "onednn")]
        return bool(torch.allclose(ys[0], ys[1], atol=1e-4))
    except (AttributeError, RuntimeError):
        return False


def int8_engine(rows: int, out_features: int, in_features: int) -> str:
    """The int8 kernel for a product of ``rows`` inputs with an (out_features, in_features) weight: "onednn"
    for large products where :func:`onednn_int8_available`, "fbgemm" otherwise."""
    large = rows >= ONEDNN_INT8_ROWS and rows * out_features * in_features >= ONEDNN_INT8_MACS
    return "onednn" if large and onednn_int8_available() else "fbgemm"


OUTLIER_RATIO = 6.0
"""An input channel whose largest magnitude in a call passes this many times the mean of the channels'
largest magnitudes is an outlier, which :func:`int8_linear` multiplies in float32 (6.0 is LLM.int8()'s
threshold too, there on absolute values)."""


def int8_linear(x: Tensor, packed: Any, weight: Tensor) -> Tensor:
    """x (N, in) -> (N, out): x Wᵀ + b on fbgemm's ``packed`` int8 weight (bias included), except the
    outlier channels of x (:data:`OUTLIER_RATIO`), which are multiplied by their columns of ``weight``
    (out, in) in float32 and zeroed in the int8 product."""
    channel_max = x.abs().amax(dim=0)  # (in,)
    outliers = (channel_max > OUTLIER_RATIO * channel_max.mean()).nonzero().squeeze(1)  # (k,)
    if outliers.numel() == 0:
        return torch.ops.quantized.linear_dynamic(x, packed, False)
    y = torch.ops.quantized.linear_dynamic(x.index_fill(1, outliers, 0.0), packed, False)  # (N, out)
    return y.addmm_(x[:, outliers], weight[:, outliers].t())  # + (N, k) @ (k, out)


def set_int8(model: nn.Module, enabled: bool = True, *, outliers: bool = False) -> None:
    """Run every :class:`Linear` of ``model`` on int8 weights (quantized per output row on first use;
    activations quantized per call: PyTorch's dynamic int8 linear) for CPU inference; with ``outliers``,
    each call's outlier input channels in float32 (:func:`int8_linear`)."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.int8 = enabled
            module.int8_outliers = enabled and outliers
            module._packed = None


def set_packing(model: nn.Module, enabled: bool) -> None:
    """Turn the packed inference path on or off for every :class:`Linear` in ``model``."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.packing = enabled
            if not enabled:
                module._packed = None
