"""Attention, the core of the Transformer (Vaswani et al., 2017, section 3.2).

Shape legend, used in every comment of this package:

    B  batch size               T  query length (target side)
    S  key/value length         H  number of heads (the paper's h)
    D  per-head width (d_k)     d_model = H * D
    V  vocabulary size

Mask convention, the same everywhere in qkv and the same as torch's SDPA: a **boolean** tensor
broadcastable to (..., T, S) where ``True`` means "this query may attend to this key". Masked scores
are filled with ``torch.finfo(dtype).min``. A query whose whole row is masked gets zero weights and
zero output (never NaN), and its gradients are finite.

Two paths compute the same thing:

* the **reference path** (:func:`attention_reference`) writes the equation out in plain tensor ops and
  can return the attention weights;
* the **fused path** calls :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a
  flash / memory-efficient kernel when it can. It cannot return weights.

The selection rule is one line in :func:`scaled_dot_product_attention`: the fused path unless the
caller asks for the weights.

On CUDA in bf16/fp16 the fused path leaves out cuDNN's attention kernel, which torch prefers on recent
GPUs: it builds a new execution plan for every new shape (qkv's batches and decoding steps change shape
all the time: measured on an H200, bf16 decoding ran 11x slower than fp32 with it), and with a mask it
has open correctness bugs (NaN gradients for some lengths, PyTorch issue 196678). Flash, memory-efficient
and math kernels remain, chosen by torch as usual.

On the CPU in bf16/fp16, when autograd records, attention up to a length runs the reference path in
float32 (:func:`trains_in_float32`): the CPU flash kernel's backward in half precision is several times
slower than the math kernel's at translation lengths (``benchmarks/attention_speed.py`` on a 2-core AMD
EPYC, Zen 4, bf16, D=64, forward + backward: B=64, H=8, T=S=24 with a padding mask 21.8 against 11.0 ms;
B=4, H=8, causal T=S=128 7.5 against 4.6 ms; a whole Multi30k training step 1.30x faster), and the math
kernel itself computes in float32 from upcast copies of Q, K and V: written out in float32, the same
computation with the same rounding skips its per-call work (safe softmax, reshaping copies), 2-3% of a
whole Multi30k training step on a 2-core Xeon with AMX. In bf16 flash wins from 256 keys on; in fp16 its
backward is 3-5x slower at every length measured (up to 512). Forward-only calls (decoding, evaluation)
and fp32 keep torch's choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from qkv.linear import Linear

__all__ = [
    "ATTENTION_VARIANTS",
    "KVCache",
    "MultiHeadAttention",
    "additive_attention",
    "attend",
    "attention_per_query",
    "attention_reference",
    "causal_mask",
    "dot_product_attention",
    "fused_backends",
    "scaled_dot_product_attention",
    "trains_in_float32",
]


def causal_mask(T: int, S: int | None = None, *, device: torch.device | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query t may see key s: s <= t + (S - T) (queries are the last T)."""
    S = T if S is None else S
    offset = S - T
    t = torch.arange(T, device=device).unsqueeze(-1)  # (T, 1)
    s = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    return s <= t + offset  # (T, S)


# The fused kernels qkv lets torch choose from on CUDA in bf16/fp16: all but cuDNN's (module docstring).
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# The longest key length at which attention written out in float32 trains faster than torch's CPU flash
# kernel, per half-precision dtype (None: at every length); measured by benchmarks/attention_speed.py
# (module docstring).
CPU_FLOAT32_TRAINING_MAX_S: dict[torch.dtype, int | None] = {torch.bfloat16: 128, torch.float16: None}


def fused_backends(q: Tensor, k: Tensor, v: Tensor) -> list[SDPBackend] | None:
    """The SDPA kernels the fused path allows for these inputs, or None for torch's own choice: on CUDA in
    bf16/fp16 all but cuDNN's (the reasons are in the module docstring)."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return FUSED_BACKENDS
    return None


def trains_in_float32(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """True where attention runs the reference path in float32 instead of a fused kernel: on the CPU, in
    bf16/fp16, while autograd records, at most ``CPU_FLOAT32_TRAINING_MAX_S[dtype]`` keys (module docstring)."""
    if q.device.type != "cpu" or q.dtype not in CPU_FLOAT32_TRAINING_MAX_S:
        return False
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return False
    max_s = CPU_FLOAT32_TRAINING_MAX_S[q.dtype]
    return max_s is None or k.size(-2) <= max_s


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, **kwargs) -> Tensor:
    """torch's fused attention over the kernels :func:`fused_backends` allows."""
    backends = fused_backends(q, k, v)
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)


def _default_scale(q: Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.size(-1)) if scale is None else scale


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(scale · Q Kᵀ) V, written out; returns (output, weights).

    q (..., T, D), k (..., S, D), v (..., S, D_v) -> output (..., T, D_v), weights (..., T, S).
    ``scale=None`` is 1/√d_k. Fully masked query rows give zero weights and zero output.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * _default_scale(q, scale)  # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (..., T, S)
    if mask is not None:
        # A fully masked row softmaxes to uniform over finfo.min scores; zero it instead.
        weights = weights * mask.any(dim=-1, keepdim=True)
    attn = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return torch.matmul(attn, v), weights  # (..., T, D_v), (..., T, S)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention, softmax(Q Kᵀ / √d_k) V; returns (output, weights or None).

    q (..., T, d_k), k (..., S, d_k), v (..., S, d_v). ``mask`` is boolean, True = may attend,
    broadcastable to (..., T, S). ``scale=None`` means 1/√d_k; ``scale=1.0`` is plain dot-product
    attention. ``is_causal=True`` adds the causal mask (queries are the last T of the S positions).
    Weights are computed only when ``need_weights`` is set (reference path); otherwise torch's
    fused kernel runs, except where :func:`trains_in_float32` (CPU half-precision training at short
    lengths): the reference path in float32.
    """
    written_out = need_weights or trains_in_float32(q, k, v)
    if is_causal and q.size(-2) == 1:
        is_causal = False  # a single query is the last position: it sees every key
    if is_causal:
        cm = causal_mask(q.size(-2), k.size(-2), device=q.device)
        if written_out or mask is not None or q.size(-2) != k.size(-2):
            mask = cm if mask is None else mask & cm
            is_causal = False
    if need_weights:
        return attention_reference(q, k, v, mask, scale=scale, dropout_p=dropout_p)
    if written_out:  # float32 copies, as torch's math kernel makes them; the output in the inputs' dtype
        # contiguous copies: the heads' transposed views would be copied again by each matmul
        q32, k32, v32 = (t.to(torch.float32, memory_format=torch.contiguous_format) for t in (q, k, v))
        out, _ = attention_reference(q32, k32, v32, mask, scale=scale, dropout_p=dropout_p)
        return out.to(q.dtype), None
    # Fused path. Rows with no visible key would give NaN in some kernels: let them see every key,
    # then zero their output, which also keeps their gradients at exactly zero.
    empty_rows = None
    if mask is not None:
        empty_rows = ~mask.any(dim=-1, keepdim=True)  # (..., T, 1)
        if torch.compiler.is_compiling() or empty_rows.any():  # (a compiled graph does not branch on data)
            mask = mask | empty_rows
        else:
            empty_rows = None  # the usual case: skip a pass over the output
    out = _fused_attention(q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal, scale=_default_scale(q, scale))
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out, None


def dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Unscaled dot-product attention, softmax(Q Kᵀ) V: the variant the paper warns saturates."""
    return scaled_dot_product_attention(q, k, v, mask, scale=1.0, need_weights=need_weights)


def attention_per_query(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention computed one query at a time (a loop over T), the form before the "query batch".

    Same inputs and outputs as :func:`scaled_dot_product_attention`; kept to show, and measure, what
    computing all queries as one matrix product buys.
    """
    T = q.size(-2)
    full_mask = None
    if mask is not None:
        full_mask = mask.expand(*mask.shape[:-2], T, k.size(-2)) if mask.size(-2) == 1 else mask
    outputs, rows = [], []
    for t in range(T):
        row_mask = None if full_mask is None else full_mask[..., t : t + 1, :]  # (..., 1, S)
        out_t, w_t = attention_reference(q[..., t : t + 1, :], k, v, row_mask, scale=scale)
        outputs.append(out_t)  # (..., 1, D_v)
        rows.append(w_t)  # (..., 1, S)
    output = torch.cat(outputs, dim=-2)  # (..., T, D_v)
    return output, torch.cat(rows, dim=-2) if need_weights else None


ATTENTION_VARIANTS = ("scaled", "dot", "per_query")


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    variant: str = "scaled",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention of one of the seed's variants; returns (output, weights or None).

    * ``"scaled"``: softmax(Q Kᵀ / √d_k) V, all queries as one matrix product (the Transformer's);
    * ``"dot"``: softmax(Q Kᵀ) V, unscaled (saturates as d_k grows);
    * ``"per_query"``: the scaled form computed one query at a time (no dropout).
    """
    if variant == "per_query":
        if is_causal:
            cm = causal_mask(q.size(-2), k.size(-2), device=q.device)
            mask = cm if mask is None else mask & cm
        return attention_per_query(q, k, v, mask, need_weights=need_weights)
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}: choose one of {', '.join(ATTENTION_VARIANTS)}")
    scale = 1.0 if variant == "dot" else None
    return scaled_dot_product_attention(
        q, k, v, mask, scale=scale, dropout_p=dropout_p, need_weights=need_weights, is_causal=is_causal
    )


def additive_attention(q: Tensor, k: Tensor, v: Tensor, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Additive (Bahdanau) attention, softmax_s(wᵀ tanh(q_t + k_s)) v; returns (output, weights).

    q (B, T, A) and k (B, S, A) are the already projected query and keys, v (B, S, D_v), w (A,).
    ``mask`` is boolean, True = may attend, broadcastable to (B, T, S); a fully masked row gets zero
    weights and zero output (the module's mask rule). Output (B, T, D_v), weights (B, T, S).
    """
    scores = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ w  # (B, T, 1, A) + (B, 1, S, A) -> (B, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, T, S)
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)  # fully masked rows: zero, not uniform
    return weights @ v, weights  # (B, T, D_v), (B, T, S)


class KVCache:
    """Keys and values of one attention module kept across decoding steps.

    Lifecycle: create with the ``capacity`` decoding will reach (known when it starts: the prompt plus
    the new tokens, or the longest target) -> ``append`` new K/V each step (self-attention) or ``store``
    them once (cross-attention, ``static=True``) -> ``reorder`` rows when beams are re-ranked -> discard.
    The buffers are allocated once, at the first ``append`` (when batch, heads, width, dtype and device
    are known), to ``capacity`` positions; without a capacity, or past it, they are reallocated to the
    length needed (a fallback that qkv's decoders never take).

    Layout: position-major rows, (B, capacity, H, D), so that one row's filled positions are one block
    of memory; ``k`` and ``v`` are (B, H, length, D) views of it. Beam search re-ranks the rows at every
    step: ``reorder`` copies the kept rows' filled blocks once, into a spare pair of buffers (allocated
    at the first reorder, as large as the buffers: a reordered cache holds twice the memory) that then take
    the buffers' place.
    """

    def __init__(self, capacity: int | None = None, *, static: bool = False) -> None:
        self.capacity = capacity
        self.static = static
        self.length = 0
        self._k: Tensor | None = None  # (B, capacity, H, D); static: (B, S, H, D)
        self._v: Tensor | None = None
        self._spare: tuple[Tensor, Tensor] | None = None  # buffers a reorder writes into, as large or larger

    @property
    def filled(self) -> bool:
        """True once a static cache holds its keys and values."""
        return self._k is not None

    @property
    def k(self) -> Tensor:
        """Cached keys, (B, H, length, D)."""
        assert self._k is not None, "empty KVCache"
        return self._k[:, : self.length].transpose(1, 2)  # (B, length, H, D) -> (B, H, length, D)

    @property
    def v(self) -> Tensor:
        """Cached values, (B, H, length, D)."""
        assert self._v is not None, "empty KVCache"
        return self._v[:, : self.length].transpose(1, 2)

    def store(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keep K/V (B, H, S, D) computed once (cross-attention memory); returns them."""
        self._k, self._v, self.length = k.transpose(1, 2), v.transpose(1, 2), k.size(-2)  # (B, S, H, D) views
        return k, v

    def _allocate(self, k: Tensor, v: Tensor, length: int) -> None:
        """Buffers of ``length`` positions for K/V like k, v (B, H, ·, D), holding what is cached so far."""
        self.capacity = length
        B, H, _, D = k.shape
        new_k = k.new_empty(B, length, H, D)  # (B, capacity, H, D)
        new_v = v.new_empty(B, length, H, D)
        if self._k is not None and self._v is not None:
            new_k[:, : self.length] = self._k[:, : self.length]
            new_v[:, : self.length] = self._v[:, : self.length]
        self._k, self._v, self._spare = new_k, new_v, None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add K/V of new positions (B, H, T_new, D); returns all cached K/V so far."""
        new_len = self.length + k.size(-2)
        if self._k is None or new_len > self._k.size(1):
            self._allocate(k, v, max(self.capacity or 0, new_len))
        assert self._k is not None and self._v is not None
        self._k[:, self.length : new_len] = k.transpose(1, 2)  # (B, T_new, H, D)
        self._v[:, self.length : new_len] = v.transpose(1, 2)
        self.length = new_len
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search re-ranking, or finished rows leaving). A growing cache
        copies only the filled positions of the kept rows, into its spare buffers, which become its buffers."""
        if self._k is None or self._v is None:
            return
        if self.static or self._k.requires_grad:  # out= below records no autograd history
            self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)
            return
        rows, n = index.numel(), self.length
        spare = self._spare
        if spare is None or spare[0].size(0) < rows:
            spare = (self._k.new_empty(rows, *self._k.shape[1:]), self._v.new_empty(rows, *self._v.shape[1:]))
        new_k, new_v = spare[0][:rows], spare[1][:rows]  # (B', capacity, H, D)
        torch.index_select(self._k[:, :n], 0, index, out=new_k[:, :n])
        torch.index_select(self._v[:, :n], 0, index, out=new_v[:, :n])
        self._spare = (self._k, self._v)
        self._k, self._v = new_k, new_v


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    One (3·d_model, d_model) input projection holds W^Q, W^K, W^V for all heads (the layout of
    ``torch.nn.MultiheadAttention``): self-attention applies it as one fused matmul; cross-attention
    applies its Q rows to the queries and its K/V rows to the memory.
    """

    def __init__(
        self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True, variant: str = "scaled"
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if variant not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention variant {variant!r}: choose one of {', '.join(ATTENTION_VARIANTS)}")
        self.d_model, self.h, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout = dropout
        self.variant = variant
        self.in_proj = Linear(d_model, 3 * d_model, bias=bias)  # [W^Q; W^K; W^V]
        self.out_proj = Linear(d_model, d_model, bias=bias)  # W^O

    @staticmethod
    def split_in_proj(fused: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The fused input projection's weight (3·d_model, d_model) or bias (3·d_model,) -> its
        W^Q, W^K, W^V parts (checkpoints that store them apart: BERT, Marian)."""
        q, k, v = fused.chunk(3, dim=0)
        return q, k, v

    @staticmethod
    def merge_in_proj(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Inverse of :meth:`split_in_proj`: stack W^Q, W^K, W^V (or their biases) into the fused layout."""
        return torch.cat([q, k, v], dim=0)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.h, self.d_k).transpose(1, 2)  # (B, L, d_model) -> (B, H, L, D)

    def _project(self, query: Tensor, memory: Tensor | None, cache: KVCache | None) -> tuple[Tensor, Tensor, Tensor]:
        d = self.d_model
        if memory is None:  # self-attention: one fused matmul
            q, k, v = self.in_proj(query).split(d, dim=-1)  # 3 x (B, T, d_model)
            k, v = self._split_heads(k), self._split_heads(v)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H, S, D) with S = cached + T
            return self._split_heads(q), k, v
        q = self.in_proj.rows(query, 0, d)  # W^Q rows: (B, T, d_model)
        if cache is not None and cache.filled:
            return self._split_heads(q), cache.k, cache.v
        k, v = self.in_proj.rows(memory, d, 3 * d).split(d, dim=-1)  # W^K, W^V rows: 2 x (B, S, d_model)
        k, v = self._split_heads(k), self._split_heads(v)
        if cache is not None:
            cache.store(k, v)
        return self._split_heads(q), k, v

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, T, d_model) to itself, or to ``memory`` (B, S, d_model).

        ``mask`` is boolean, True = may attend, broadcastable to (B, H, T, S); ``is_causal`` adds the
        causal mask. With a ``cache``, K/V of earlier steps are reused (self-attention) or the memory's
        K/V are computed once (cross-attention). Returns (output (B, T, d_model), weights (B, H, T, S)
        or None).

        A ``memory`` of B/g rows serves g consecutive query rows each (beam search's beams of one source):
        their queries attend as one block of g·T, and ``mask`` is then per memory row, (B/g, 1, 1, S).
        """
        B, T, _ = query.shape
        g = 1 if memory is None else self._groups(B, memory, mask)
        query = query.reshape(B // g, g * T, self.d_model)  # (B, T, d_model) -> (B/g, g*T, d_model)
        q, k, v = self._project(query, memory, cache)  # (B/g, H, g*T, D), (B/g, H, S, D), (B/g, H, S, D)
        out, weights = attend(
            q,
            k,
            v,
            mask,
            variant=self.variant,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            is_causal=is_causal,
        )  # (B/g, H, g*T, D)
        out = out.transpose(1, 2).reshape(B, T, self.d_model)  # (B/g, H, g*T, D) -> (B, T, d_model)
        if weights is not None and g > 1:  # (B/g, H, g*T, S) -> (B, H, T, S)
            weights = weights.view(B // g, self.h, g, T, -1).transpose(1, 2).reshape(B, self.h, T, -1)
        return self.out_proj(out), weights

    @staticmethod
    def _groups(B: int, memory: Tensor, mask: Tensor | None) -> int:
        """How many consecutive query rows of B each memory row serves."""
        rows = memory.size(0)
        if B % rows:
            raise ValueError(f"{B} query rows cannot share {rows} memory rows: give one per query row or per group")
        if rows != B and mask is not None and (mask.size(-2) != 1 or mask.size(0) not in (1, rows)):
            shape = tuple(mask.shape)
            raise ValueError(f"memory rows shared by query rows take a mask per memory row (B/g, 1, 1, S), not {shape}")
        return B // rows
