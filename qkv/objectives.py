"""Training objectives, each summed over the predicted tokens (the trainer normalises by their count)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "LossSums",
    "label_smoothed_loss",
    "label_smoothed_loss_reference",
    "linear_label_smoothed_loss",
    "token_loss",
]

# Rows of logits the fused loss handles at a time: about 2^18 values, whose float32 temporaries (1 MiB)
# stay in a core's L2 cache instead of a (rows × V) float32 copy of the logits and of their log-softmax.
# Forward + backward on 1,530 × 8,000 bf16 logits, 2-core Xeon with 2 MiB of L2 a core: 29.2 ms at 2^18,
# 29.6 at 2^19, 35.5 at 2^20 (4 MiB chunks), 40.6 at 2^16 (more chunks than the work pays for).
CHUNK_VALUES = 1 << 18


def label_smoothed_loss_reference(logits: Tensor, target: Tensor, eps: float, pad_id: int = 0) -> Tensor:
    """The readable path: torch's cross-entropy on a float32 copy of the logits (what the fused one equals)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=eps,
        reduction="sum",
    )


class _FusedSmoothedCrossEntropy(torch.autograd.Function):
    """Σ over kept rows of (1-ε)(lse - x_t) + ε(lse - mean_v x_v), whose gradient is
    kept · (softmax - (1-ε)·onehot_t - ε/V): one pass over the logits each way, in float32 chunk by chunk,
    the gradient written in the logits' dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, target: Tensor, eps: float, ignore_index: int) -> Tensor:  # x (N, V), target (N,)
        keep = target != ignore_index
        t = torch.where(keep, target, torch.zeros_like(target))  # ignored rows: any valid index, weight 0
        x_t = x.gather(1, t[:, None]).squeeze(1).float()  # (N,)
        lse = torch.empty(x.size(0), dtype=torch.float32, device=x.device)
        mean = torch.empty_like(lse)
        step = max(1, CHUNK_VALUES // x.size(1))
        for i in range(0, x.size(0), step):
            chunk = x[i : i + step].float()  # (C, V)
            lse[i : i + step] = torch.logsumexp(chunk, dim=1)
            mean[i : i + step] = chunk.mean(dim=1)
        rows = (1 - eps) * (lse - x_t) + eps * (lse - mean)  # (N,)
        ctx.save_for_backward(x, t, keep, lse)
        ctx.eps = eps
        return torch.where(keep, rows, torch.zeros_like(rows)).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        x, t, keep, lse = ctx.saved_tensors
        eps, V = ctx.eps, x.size(1)
        weight = keep.float() * grad.float()  # (N,)
        out = torch.empty_like(x)
        step = max(1, CHUNK_VALUES // V)
        for i in range(0, x.size(0), step):
            p = torch.exp(x[i : i + step].float() - lse[i : i + step, None])  # (C, V): softmax
            p.sub_(eps / V)
            p.scatter_add_(1, t[i : i + step, None], p.new_full((p.size(0), 1), eps - 1))
            out[i : i + step] = p.mul_(weight[i : i + step, None])
        return out, None, None, None


def label_smoothed_loss(logits: Tensor, target: Tensor, eps: float, pad_id: int = 0) -> Tensor:
    """Sum over non-pad targets of (1-ε)·NLL + ε·mean_v(-log p_v); logits (B, T, V), target (B, T).

    Equal to :func:`label_smoothed_loss_reference` (tested) without its float32 copies of the logits."""
    return _FusedSmoothedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1), eps, pad_id)


def token_loss(logits: Tensor, target: Tensor, eps: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Summed (optionally label-smoothed) cross-entropy of every target that is not ``ignore_index``:
    the causal-LM loss (no ignored targets) and the masked-LM loss (unselected tokens are -100)."""
    return label_smoothed_loss(logits, target, eps, ignore_index)


class LossSums(NamedTuple):
    """A batch's summed label-smoothed loss (differentiable) and its plain NLL sum (detached)."""

    loss: Tensor
    nll: Tensor


class _FusedLinearSmoothedCrossEntropy(torch.autograd.Function):
    """The output projection and the loss as one step: logits = h Wᵀ + b, then the loss of
    :class:`_FusedSmoothedCrossEntropy` and its gradient G = kept · (softmax - (1-ε)·onehot_t - ε/V)
    computed in the same chunked pass, written over the logits (one (N, V) buffer in all). The backward
    is then two matrix products, dh = G W and dW = Gᵀ h, scaled by the incoming gradient on their small
    results instead of on G."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, eps, ignore_index):  # h (N, d), weight (V, d), target (N,)
        dtype = _compute_dtype(h, weight)
        hc, wc = h.to(dtype), weight.to(dtype)  # what autocast would multiply
        G = F.linear(hc, wc, None if bias is None else bias.to(dtype))  # (N, V): logits, then their gradient
        keep = target != ignore_index
        t = torch.where(keep, target, torch.zeros_like(target))[:, None]  # ignored rows: any valid index
        rows = torch.empty(h.size(0), 2, dtype=torch.float32, device=h.device)  # (N, 2): smoothed, plain
        V = G.size(1)
        step = max(1, CHUNK_VALUES // V)
        for i in range(0, G.size(0), step):
            chunk = G[i : i + step]
            x = chunk.float()  # (C, V); the chunk itself in float32
            x = x.sub_(x.amax(dim=1, keepdim=True))  # x - max: exp cannot overflow; lse, means and x_t shift alike
            nll = x.gather(1, t[i : i + step]).squeeze(1).neg_()  # -x_t
            smooth = x.mean(dim=1).neg_()  # -mean_v x_v
            total = x.exp_().sum(dim=1, keepdim=True)  # Σ_v exp(x_v)
            lse = total.log().squeeze(1)
            rows[i : i + step, 1] = nll.add_(lse)
            rows[i : i + step, 0] = (1 - eps) * rows[i : i + step, 1] + eps * smooth.add_(lse)
            x.div_(total).sub_(eps / V)  # softmax - ε/V
            x.scatter_add_(1, t[i : i + step], x.new_full((x.size(0), 1), eps - 1))
            if x is not chunk:
                chunk.copy_(x)
        G[~keep] = 0
        ctx.save_for_backward(G, hc, wc)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss, nll = torch.where(keep[:, None], rows, torch.zeros_like(rows)).sum(dim=0).unbind()
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        G, hc, wc = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # e.g. a frozen vocabulary: no product for it
        dh = (G @ wc).to(h_dtype).mul_(grad) if need_h else None  # (N, d)
        dw = (G.t() @ hc).to(w_dtype).mul_(grad) if need_w else None  # (V, d)
        db = G.sum(dim=0, dtype=torch.float32).to(b_dtype).mul_(grad) if need_b else None
        return dh, dw, db, None, None, None


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the projection multiplies in: autocast's where it is on for h's device, else the inputs'."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.promote_types(h.dtype, weight.dtype)


def linear_label_smoothed_loss(
    h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, eps: float, ignore_index: int = 0
) -> LossSums:
    """The label-smoothed loss of the logits h Wᵀ + b, summed over targets that are not ``ignore_index``,
    and the plain NLL sum beside it; h (B, T, d), weight (V, d), target (B, T).

    Equal to ``label_smoothed_loss(F.linear(h, weight, bias), target, eps)`` (tested), with a faster
    forward + backward (the gradient is made in the loss's own pass over the logits;
    ``benchmarks/loss_speed.py``), and under autocast
    it multiplies in autocast's dtype as ``F.linear`` would. Under ``torch.compile`` it is that readable
    composition (the compiler fuses its own)."""
    if torch.compiler.is_compiling():
        logits = F.linear(h, weight, bias)
        loss = label_smoothed_loss_reference(logits, target, eps, ignore_index)
        nll = label_smoothed_loss_reference(logits.detach(), target, 0.0, ignore_index) if eps else loss.detach()
        return LossSums(loss, nll)
    d = h.size(-1)
    loss, nll = _FusedLinearSmoothedCrossEntropy.apply(
        h.reshape(-1, d), weight, bias, target.reshape(-1), eps, ignore_index
    )
    return LossSums(loss, nll)
