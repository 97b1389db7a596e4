"""Attention: parity with torch, the variants agree, masking and causality invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from qkv.attention import (
    ATTENTION_VARIANTS,
    CPU_FLOAT32_TRAINING_MAX_S,
    KVCache,
    MultiHeadAttention,
    additive_attention,
    attend,
    attention_per_query,
    attention_reference,
    causal_mask,
    dot_product_attention,
    fused_backends,
    scaled_dot_product_attention,
    trains_in_float32,
)

torch.set_default_dtype(torch.float32)


def qkv_tensors(B=2, H=3, T=5, S=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, T, D, generator=g),
        torch.randn(B, H, S, D, generator=g),
        torch.randn(B, H, S, D, generator=g),
    )


def random_mask(B, T, S, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, T, S, generator=g) > p


def test_matches_torch_sdpa_with_and_without_mask():
    q, k, v = qkv_tensors()
    mask = random_mask(2, 5, 7)
    mask[..., 0] = True  # no fully masked rows (torch gives NaN there)
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        fused, w = scaled_dot_product_attention(q, k, v, m)
        math_out, weights = scaled_dot_product_attention(q, k, v, m, need_weights=True)
        assert w is None
        torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(math_out, ref, atol=1e-5, rtol=1e-5)
        assert weights.shape == (2, 3, 5, 7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_fused_path_leaves_out_cudnn_on_a_gpu_in_half_precision(dtype, fake_cuda, monkeypatch):
    # cuDNN's kernel rebuilds its plan per shape and has mask bugs (qkv/attention.py): bf16/fp16 on CUDA
    # run without it; fp32 (which it does not take) and the CPU leave torch's settings alone.
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((args[0].is_cuda, torch.backends.cuda.cudnn_sdp_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = (t.to(dtype) for t in qkv_tensors())
    before = torch.backends.cuda.cudnn_sdp_enabled()
    cpu_out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    gpu_out, _ = scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(), is_causal=True)
    assert seen == [(False, before), (True, before and dtype == torch.float32)]
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # restored after the call
    torch.testing.assert_close(gpu_out.cpu(), cpu_out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cpu_half_precision_training_runs_in_float32_up_to_its_length(dtype):
    # The CPU flash kernel's half-precision backward is the slow one (qkv/attention.py): the rule writes
    # attention out in float32 only when autograd records, in bf16/fp16, up to CPU_FLOAT32_TRAINING_MAX_S keys.
    max_s = CPU_FLOAT32_TRAINING_MAX_S.get(dtype)
    for S in (7, 128, 129, 1024):
        q, k, v = (t.to(dtype) for t in qkv_tensors(B=1, H=1, T=3, S=S, D=4))
        assert not trains_in_float32(q, k, v)  # forward only: torch's choice
        k.requires_grad_(True)
        here = dtype != torch.float32 and (max_s is None or S <= max_s)
        assert trains_in_float32(q, k, v) == here, S
        assert fused_backends(q, k, v) is None  # on the CPU torch's kernels are never restricted
        with torch.no_grad():
            assert not trains_in_float32(q, k, v)
    assert CPU_FLOAT32_TRAINING_MAX_S[torch.bfloat16] == 128 and CPU_FLOAT32_TRAINING_MAX_S[torch.float16] is None


def test_training_in_float32_calls_no_kernel_and_equals_the_math_kernel(monkeypatch):
    # Under the rule attention is the reference path on float32 copies: what torch's math kernel computes
    # (it upcasts bf16 inputs the same way), so both agree to float32 rounding before the outputs' bf16;
    # flash (torch's own choice) agrees to bf16 rounding. Fully masked rows give zeros, not NaN.
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = (t.to(torch.bfloat16).requires_grad_(True) for t in qkv_tensors(B=4, H=2, T=9, S=9, D=16))
    mask = random_mask(4, 9, 9)
    mask[..., 0] = True
    grad = torch.randn(4, 2, 9, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for is_causal, m in ((True, None), (False, mask)):
        out, _ = scaled_dot_product_attention(q, k, v, m, is_causal=is_causal, scale=0.25)
        grads = torch.autograd.grad(out, (q, k, v), grad)
        assert not calls
        for backend, tol in ((SDPBackend.MATH, 1e-2), (SDPBackend.FLASH_ATTENTION, 5e-2)):
            with sdpa_kernel([backend]):
                theirs = real(q, k, v, attn_mask=m, is_causal=is_causal, scale=0.25)
                their_grads = torch.autograd.grad(theirs, (q, k, v), grad)
            torch.testing.assert_close(out, theirs, atol=tol, rtol=tol)
            for mine, their in zip(grads, their_grads, strict=True):
                torch.testing.assert_close(mine, their, atol=tol, rtol=tol)
    empty = mask.clone()
    empty[0, ..., 2, :] = False  # a query that sees no key
    out, _ = scaled_dot_product_attention(q, k, v, empty)
    assert out.dtype == torch.bfloat16 and bool((out[0, :, 2] == 0).all()) and bool(torch.isfinite(out).all())


def test_scale_none_is_inverse_sqrt_dk_and_scale_one_is_dot_product():
    q, k, v = qkv_tensors(D=16)
    out_default, w_default = scaled_dot_product_attention(q, k, v, need_weights=True)
    out_explicit, _ = scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(16), need_weights=True)
    torch.testing.assert_close(out_default, out_explicit)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
    torch.testing.assert_close(w_default, expected)
    out_dot, w_dot = dot_product_attention(q, k, v, need_weights=True)
    torch.testing.assert_close(w_dot, torch.softmax(q @ k.transpose(-2, -1), dim=-1))
    torch.testing.assert_close(out_dot, w_dot @ v)


@pytest.mark.parametrize("masked", [False, True])
def test_per_query_equals_query_batch(masked):
    q, k, v = qkv_tensors(T=9, S=6, seed=3)
    mask = random_mask(2, 9, 6, seed=4) if masked else None
    out_m, w_m = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    out_q, w_q = attention_per_query(q, k, v, mask, need_weights=True)
    assert (out_q - out_m).abs().max() < 1e-5
    assert (w_q - w_m).abs().max() < 1e-5
    assert attention_per_query(q, k, v, mask)[1] is None


def test_fully_masked_rows_give_zero_output_zero_weights_and_finite_grads():
    q, k, v = (t.requires_grad_() for t in qkv_tensors(T=4, S=5))
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[:, :, 1] = False  # query 1 sees nothing
    for need in (False, True):
        out, w = scaled_dot_product_attention(q, k, v, mask, need_weights=need)
        assert torch.isfinite(out).all()
        assert out[:, :, 1].abs().max() == 0
        if need:
            assert w[:, :, 1].abs().max() == 0
        out.sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
            t.grad = None
    out, w = attention_per_query(q, k, v, mask, need_weights=True)
    assert out[:, :, 1].abs().max() == 0 and w[:, :, 1].abs().max() == 0


def test_causal_mask_is_bottom_right_aligned():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]
    assert causal_mask(2, 3).tolist() == [[True, True, False], [True, True, True]]


def test_is_causal_flag_matches_explicit_mask_on_both_paths():
    q, k, v = qkv_tensors(T=6, S=6)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for need in (False, True):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=need)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        out2, _ = scaled_dot_product_attention(q, k, v, causal_mask(6), need_weights=need)
        torch.testing.assert_close(out2, ref, atol=1e-5, rtol=1e-5)


def copy_to_torch_mha(mha: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(mha.d_model, mha.h, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.in_proj.weight)
        ref.in_proj_bias.copy_(mha.in_proj.bias)
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("cross", [False, True])
def test_multihead_matches_torch_multiheadattention(cross):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    ref = copy_to_torch_mha(mha)
    x = torch.randn(3, 6, 32)
    mem = torch.randn(3, 9, 32) if cross else x
    S = mem.size(1)
    key_ok = torch.ones(3, S, dtype=torch.bool)
    key_ok[0, -3:] = False  # padding in the first sequence
    ref_out, ref_w = ref(x, mem, mem, key_padding_mask=~key_ok, average_attn_weights=False)
    out, w = mha(x, mem if cross else None, key_ok[:, None, None, :], need_weights=True)
    assert (out - ref_out).abs().max() < 1e-5
    assert (w - ref_w).abs().max() < 1e-5
    fused, none = mha(x, mem if cross else None, key_ok[:, None, None, :])
    assert none is None and (fused - ref_out).abs().max() < 1e-5


def test_multihead_causal_matches_torch():
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 2).eval()
    ref = copy_to_torch_mha(mha)
    x = torch.randn(2, 7, 16)
    ref_out, _ = ref(x, x, x, attn_mask=~causal_mask(7))
    out, _ = mha(x, is_causal=True)
    assert (out - ref_out).abs().max() < 1e-5


def test_kv_cache_incremental_equals_full_causal():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 10, 16)
    full, _ = mha(x, is_causal=True)
    cache = KVCache(capacity=2)  # forces growth
    steps = [mha(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(10)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
    assert cache.length == 10


def test_kv_cache_prefill_then_steps_and_reorder():
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(3, 8, 16)
    full, _ = mha(x, is_causal=True)
    cache = KVCache()
    first, _ = mha(x[:, :5], is_causal=True, cache=cache)
    rest = [mha(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(5, 8)]
    assert (torch.cat([first, *rest], 1) - full).abs().max() < 1e-5
    cache.reorder(torch.tensor([2, 0]))
    assert cache.k.shape[0] == 2


def test_cross_attention_cache_computes_memory_kv_once():
    torch.manual_seed(4)
    mha = MultiHeadAttention(16, 4).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    cache = KVCache(static=True)
    a, _ = mha(x, mem, cache=cache)
    b, _ = mha(x, torch.zeros_like(mem), cache=cache)  # memory ignored once cached
    torch.testing.assert_close(a, b)


def test_multihead_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)


# --- property tests -------------------------------------------------------------------------------

dims = st.integers(min_value=1, max_value=6)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 8), h=st.sampled_from([1, 2, 4]), seed=st.integers(0, 10_000))
def test_self_attention_is_permutation_equivariant(B, T, h, seed):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, h).eval()
    x = torch.randn(B, T, 8)
    perm = torch.randperm(T)
    out, _ = mha(x)
    out_perm, _ = mha(x[:, perm])
    assert (out[:, perm] - out_perm).abs().max() < 1e-5


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 6), S=st.integers(2, 8), seed=st.integers(0, 10_000), need=st.booleans())
def test_values_of_masked_keys_never_change_the_output(T, S, seed, need):
    q, k, v = qkv_tensors(B=2, H=2, T=T, S=S, D=4, seed=seed)
    mask = random_mask(2, T, S, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    k2 = torch.where(mask.any(-2, keepdim=True).transpose(-2, -1), k, torch.randn(k.shape, generator=g))
    v2 = torch.where(mask.any(-2, keepdim=True).transpose(-2, -1), v, 100 * torch.randn(v.shape, generator=g))
    # keys masked for *every* query are replaced; the output must not move
    out1, _ = scaled_dot_product_attention(q, k, v, mask, need_weights=need)
    out2, _ = scaled_dot_product_attention(q, k2, v2, mask, need_weights=need)
    assert (out1 - out2).abs().max() < 1e-5
    # and per query row: changing a key masked for one row leaves that row's output alone
    keep = torch.randn(v.shape, generator=g)
    v3 = v.clone()
    row_mask = mask[0, 0, 0]  # what query 0 of batch 0 may see
    v3[0, :, ~row_mask] = keep[0, :, ~row_mask]
    out3, _ = scaled_dot_product_attention(q, k, v3, mask, need_weights=need)
    assert (out1[0, :, 0] - out3[0, :, 0]).abs().max() < 1e-5


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 6), S=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_weight_rows_sum_to_one_or_zero(T, S, seed):
    q, k, v = qkv_tensors(B=2, H=2, T=T, S=S, D=4, seed=seed)
    mask = random_mask(2, T, S, seed=seed, p=0.6)
    _, w = attention_reference(q, k, v, mask)
    sums = w.sum(-1)
    expected = mask.any(-1).expand_as(sums).float()
    assert (sums - expected).abs().max() < 1e-5
    assert (w[~mask.expand_as(w)] == 0).all()


@settings(max_examples=20, deadline=None)
@given(T=st.integers(2, 8), t=st.integers(0, 7), seed=st.integers(0, 10_000), need=st.booleans())
def test_causal_outputs_ignore_future_tokens(T, t, seed, need):
    t = t % T
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, T, 8)
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
    a, _ = mha(x, is_causal=True, need_weights=need)
    b, _ = mha(x2, is_causal=True, need_weights=need)
    assert (a[:, : t + 1] - b[:, : t + 1]).abs().max() < 1e-5


@pytest.mark.parametrize("is_causal", [False, True])
def test_variants_are_one_option_of_multihead_attention(is_causal):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    mha = MultiHeadAttention(16, 4).eval()
    outs = {}
    for variant in ATTENTION_VARIANTS:
        mha.variant = variant
        outs[variant] = mha(x, mask=pad, is_causal=is_causal, need_weights=True)
    # one query at a time computes exactly the scaled form
    assert torch.allclose(outs["per_query"][0], outs["scaled"][0], atol=1e-5)
    assert torch.allclose(outs["per_query"][1], outs["scaled"][1], atol=1e-6)
    # unscaled = scaled with the scores multiplied by sqrt(d_k): sharper rows
    q, k, _ = F.linear(x, mha.in_proj.weight, mha.in_proj.bias).split(16, dim=-1)
    q, k = (t.view(2, 6, 4, 4).transpose(1, 2) for t in (q, k))
    scores = q @ k.transpose(-2, -1)  # (B, H, T, S), unscaled
    mask = pad & causal_mask(6) if is_causal else pad
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.allclose(outs["dot"][1], expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attention variant"):
        MultiHeadAttention(16, 4, variant="additive")
    with pytest.raises(ValueError, match="unknown attention variant"):
        attend(q, k, k, variant="cosine")


def test_additive_attention_zeroes_fully_masked_rows():
    """The mask rule of this module holds for additive attention too: a query that may see no key gets
    zero weights and zero output; the others are untouched by the masked keys."""
    torch.manual_seed(5)
    q, k, v, w = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 6), torch.randn(8)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of sentence 0 sees nothing
    mask[1, :, 2:] = False
    out, weights = additive_attention(q, k, v, w, mask)
    assert weights[0, 1].abs().sum() == 0 and out[0, 1].abs().sum() == 0
    torch.testing.assert_close(weights.sum(-1)[mask.any(-1)], torch.ones(5))
    ref, _ = additive_attention(q[1:], k[1:, :2], v[1:, :2], w)
    torch.testing.assert_close(out[1:], ref)


def test_fused_projection_splits_and_merges_exactly():
    mha = MultiHeadAttention(16, 4)
    q, k, v = MultiHeadAttention.split_in_proj(mha.in_proj.weight)
    assert q.shape == k.shape == v.shape == (16, 16)
    assert torch.equal(MultiHeadAttention.merge_in_proj(q, k, v), mha.in_proj.weight)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(mha.in_proj(x)[..., 16:32], F.linear(x, k, mha.in_proj.bias[16:32]))


def test_kv_cache_is_allocated_once_at_its_capacity():
    torch.manual_seed(6)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    cache = KVCache(capacity=9)
    pointers = set()
    for t in range(9):
        mha(x[:, t : t + 1], is_causal=True, cache=cache)
        pointers.add(cache._k.data_ptr())
    assert len(pointers) == 1 and cache._k.size(1) == 9 and cache.length == 9


def test_kv_cache_reorder_keeps_the_rows_asked_in_two_buffers_that_alternate():
    torch.manual_seed(7)
    cache = KVCache(capacity=6)
    k, v = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)  # (B, H, T, D)
    cache.append(k, v)
    want_k, want_v = k, v
    pointers = []
    for index in ([3, 3, 0, 1], [1, 0, 2, 3], [2, 0]):  # re-ranked twice, then two rows leave
        index = torch.tensor(index)
        cache.reorder(index)
        want_k, want_v = want_k[index], want_v[index]
        assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)
        pointers.append(cache._k.data_ptr())
        step_k, step_v = torch.randn(len(index), 2, 1, 5), torch.randn(len(index), 2, 1, 5)
        cache.append(step_k, step_v)  # the next step still appends in place
        want_k, want_v = torch.cat([want_k, step_k], 2), torch.cat([want_v, step_v], 2)
        assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)
    assert pointers[0] == pointers[2] != pointers[1]  # no buffer allocated after the first reorder


@pytest.mark.parametrize("need", [False, True])
def test_memory_rows_shared_by_groups_of_query_rows_equal_a_copy_for_each(need):
    # beam search: the K beams of a source attend to one memory row instead of K copies of it
    torch.manual_seed(8)
    mha = MultiHeadAttention(16, 4).eval()
    B, K, T, S = 3, 4, 2, 5
    query, memory = torch.randn(B * K, T, 16), torch.randn(B, S, 16)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[1, ..., 3:] = False
    copies, copies_mask = memory.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)
    want, want_w = mha(query, copies, copies_mask, need_weights=need)
    cache = KVCache(static=True)
    got, got_w = mha(query, memory, mask, need_weights=need, cache=cache)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if need:
        torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=0)
    assert cache.k.shape == (B, 4, S, 4)  # K/V of the memory's B rows only
    again, _ = mha(query, memory, mask, cache=cache)  # the next step reads them from the cache
    torch.testing.assert_close(again, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cannot share"):
        mha(query[:5], memory)
    with pytest.raises(ValueError, match="mask per memory row"):
        mha(query, memory, copies_mask)
