"""The packed inference path of qkv.linear.Linear agrees with F.linear and follows its weight."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from qkv.linear import Linear, packed_linear_available, set_packing

needs_packing = pytest.mark.skipif(not packed_linear_available(), reason="this torch build has no oneDNN packed linear")


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 16), (3, 1, 16), (2, 5, 16), (7, 16)])
def test_packed_path_equals_reference(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    lin = Linear(16, 24, bias=bias).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        y = lin(x)
    assert lin._packed is not None  # the packed path ran
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


@needs_packing
def test_weight_changes_are_followed() -> None:
    torch.manual_seed(0)
    lin = Linear(8, 8)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.randn(2, 8)
    with torch.no_grad():
        lin(x)
    lin(x).square().sum().backward()  # with autograd: the reference path, differentiable
    opt.step()  # changes the weight in place
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        lin.load_state_dict({"weight": torch.zeros(8, 8), "bias": torch.ones(8)})
        assert torch.equal(lin(x), torch.ones(2, 8))


@needs_packing
def test_training_mode_drops_the_copy_and_copies_leave_it_behind() -> None:
    lin = Linear(8, 4).eval()
    with torch.no_grad():
        lin(torch.randn(1, 8))
    assert lin._packed is not None
    clone = copy.deepcopy(lin)
    assert clone._packed is None and lin._packed is not None
    assert set(lin.state_dict()) == {"weight", "bias"}
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)  # the state dict holds plain tensors only
    lin.train()
    assert lin._packed is None


@needs_packing
def test_inference_mode_and_switching_off() -> None:
    torch.manual_seed(0)
    lin = Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        y = lin(x)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), y)
    set_packing(lin, False)
    assert lin._packed is None
    with torch.no_grad():
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert lin._packed is None


def test_autograd_uses_the_reference_path() -> None:
    lin = Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    y = lin(x)
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias)) and y.requires_grad
    assert lin._packed is None


def _autograd_nodes(y: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``y``."""
    names, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            todo += [f for f, _ in fn.next_functions]
    return names


def test_training_on_all_rows_uses_the_weight_itself() -> None:
    """All rows train on the weight, not a slice of it, whose backward would copy the gradient into a zero
    tensor of the weight's size every step; a block of rows (cross-attention's W^K, W^V) slices."""
    lin = Linear(8, 12)
    x = torch.randn(2, 3, 8, requires_grad=True)
    assert not any(n.startswith("Slice") for n in _autograd_nodes(lin(x)))
    assert any(n.startswith("Slice") for n in _autograd_nodes(lin.rows(x, 4, 12)))
    lin(x).square().sum().backward()
    ref = torch.nn.Linear(8, 12)
    ref.load_state_dict(lin.state_dict())
    x2 = x.detach().requires_grad_()
    ref(x2).square().sum().backward()
    assert torch.equal(lin.weight.grad, ref.weight.grad) and torch.equal(lin.bias.grad, ref.bias.grad)


def test_the_capability_probe_leaves_the_global_rng_alone() -> None:
    packed_linear_available.cache_clear()
    state = torch.get_rng_state()
    packed_linear_available()
    assert torch.equal(state, torch.get_rng_state())


@needs_packing
def test_a_new_weight_tensor_is_packed_again() -> None:
    torch.manual_seed(0)
    lin = Linear(8, 4).eval()
    x = torch.randn(2, 8)
    for _ in range(3):  # a fresh tensor each time, possibly at a freed address with the same version
        lin.load_state_dict({"weight": torch.randn(4, 8), "bias": torch.randn(4)}, assign=True)
        with torch.no_grad():
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swish"])
def test_a_fused_activation_equals_the_activation_after_the_product(activation: str) -> None:
    """Every activation, fused into oneDNN's packed product (a post-op) or into int8's kernel (relu), or
    applied after F.linear (training): the same as ACTIVATIONS[activation] of the plain product."""
    from qkv.linear import ACTIVATIONS, POST_OPS, set_int8

    assert POST_OPS.keys() == ACTIVATIONS.keys()
    torch.manual_seed(0)
    lin = Linear(32, 48).eval()
    x = torch.randn(2, 7, 32) * 2
    ref = ACTIVATIONS[activation](F.linear(x, lin.weight, lin.bias))
    torch.testing.assert_close(lin(x, activation=activation), ref)  # autograd on: the reference path
    with torch.no_grad():
        torch.testing.assert_close(lin(x, activation=activation), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin.rows(x, 16, 48, activation), ref[..., 16:48], atol=1e-5, rtol=1e-5)
        set_int8(lin)
        fused = lin(x, activation=activation)
        assert torch.equal(fused, ACTIVATIONS[activation](lin(x)))


@needs_packing
def test_a_block_of_rows_equals_the_same_rows_of_the_reference() -> None:
    torch.manual_seed(1)
    lin = Linear(16, 48).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        block = lin.rows(x, 16, 48)
    assert (16, 48) in lin._packed  # the packed path ran, for that block
    torch.testing.assert_close(block, F.linear(x, lin.weight[16:48], lin.bias[16:48]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block, lin(x)[..., 16:48], atol=1e-5, rtol=1e-5)


@needs_packing
def test_moving_the_module_drops_the_packed_copy(fake_cuda) -> None:
    """No packed CPU copy outlives a move: not to another dtype, not to a GPU (where the packed path
    never runs: F.linear does)."""
    lin = Linear(8, 4).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        lin(x)
        assert lin._packed  # made on first use on the CPU
        lin.to(torch.float64)
        assert lin._packed is None
        lin.to(torch.float32)(x)
        assert lin._packed
        lin.to("cuda")
        assert lin._packed is None and lin.weight.device.type == "cuda"
        assert torch.allclose(lin(x.to("cuda")).cpu(), F.linear(x, lin.weight.cpu(), lin.bias.cpu()))
        assert lin._packed is None  # the GPU path made none


def test_int8_path_is_close_follows_the_weight_and_stays_off_gpus_and_autograd(fake_cuda) -> None:
    """set_int8: rows quantized per row (error ≤ ~1% of the output's scale), blocks of rows equal those rows
    of the whole map, a changed weight is quantized again; with autograd or on a GPU, F.linear runs."""
    from qkv.linear import set_int8

    torch.manual_seed(0)
    lin = Linear(64, 96).eval()
    set_int8(lin)
    x = torch.randn(5, 3, 64)
    with torch.no_grad():
        ref = F.linear(x, lin.weight, lin.bias)
        y = lin(x)
        assert y.shape == ref.shape and not torch.equal(y, ref)
        assert (y - ref).abs().max() < 0.02 * ref.abs().max()
        assert torch.allclose(lin.rows(x, 32, 96), y[..., 32:96], atol=1e-5)  # a block of the rows
        lin.weight.mul_(2.0)
        assert (lin(x) - 2 * ref + lin.bias).abs().max() < 0.04 * ref.abs().max()  # quantized again
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))  # autograd: the reference path
    lin.to("cuda")
    with torch.no_grad():
        assert torch.equal(lin(x.to("cuda")).cpu(), F.linear(x, lin.weight.cpu(), lin.bias.cpu()))


def test_int8_weight_max_keeps_the_worst_case_product_exact() -> None:
    """Full-scale weights times full-scale activations (every u8 255, every s8 at the chosen maximum) come
    out exact: the int16 pair sums of an AVX2 kernel without VNNI would saturate at 127, not at 63."""
    from qkv.linear import int8_weight_max, set_int8

    lin = Linear(64, 2, bias=False).eval()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    set_int8(lin)
    with torch.no_grad():
        y = lin(torch.ones(3, 64))
    assert int8_weight_max() in (63, 127)
    torch.testing.assert_close(y, torch.full((3, 2), 64.0), rtol=0, atol=0.5)


def test_int8_engine_rule_gives_onednn_only_large_products_where_it_is_available(monkeypatch) -> None:
    """fbgemm everywhere oneDNN's int8 kernel is not available; where it is, oneDNN from ONEDNN_INT8_ROWS
    rows and ONEDNN_INT8_MACS multiply-adds, and never below that many rows, however large the weight."""
    import qkv.linear as L

    monkeypatch.setattr(L, "onednn_int8_available", lambda: False)
    assert L.int8_engine(4096, 50257, 768) == "fbgemm"
    monkeypatch.setattr(L, "onednn_int8_available", lambda: True)
    rows, macs = L.ONEDNN_INT8_ROWS, L.ONEDNN_INT8_MACS
    assert L.int8_engine(rows, macs // rows, 1) == "onednn"
    assert L.int8_engine(rows, macs // rows - 1, 1) == "fbgemm"  # one multiply-add per row short
    assert L.int8_engine(rows - 1, 50257, 768) == "fbgemm"  # decoding a few rows: fbgemm
    assert L.int8_engine(320, 8000, 256) == "onednn"  # a Multi30k decoding step's output projection


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="no oneDNN int8 engine")
def test_onednn_int8_path_agrees_with_fbgemm_and_leaves_the_engine_as_it_was(monkeypatch) -> None:
    """The oneDNN kernel's product (forced here, whatever the CPU) is fbgemm's to float32 rounding (the
    same quantization); it keeps its own packed copy beside fbgemm's; packing it does not change the
    process's quantized engine."""
    import qkv.linear as L

    torch.manual_seed(0)
    lin = Linear(64, 96).eval()
    L.set_int8(lin)
    x = torch.randn(5, 3, 64)
    engine = torch.backends.quantized.engine
    with torch.no_grad():
        fbgemm = lin(x)
        monkeypatch.setattr(L, "int8_engine", lambda rows, out_features, in_features: "onednn")
        onednn = lin(x)
        block = lin.rows(x, 32, 96)
    assert torch.backends.quantized.engine == engine
    assert {key[2] for key in lin._packed if len(key) == 3} == {"fbgemm", "onednn"}
    torch.testing.assert_close(onednn, fbgemm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block, onednn[..., 32:96], atol=1e-5, rtol=1e-5)


def test_onednn_int8_probe_is_a_bool_and_leaves_the_global_rng_alone() -> None:
    from qkv.linear import onednn_int8_available

    state = torch.random.get_rng_state()
    assert isinstance(onednn_int8_available.__wrapped__(), bool)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_int8_outlier_channels_go_through_float32() -> None:
    """An input channel far above the others (as after BERT's LayerNorms) would set the per-call int8 scale
    for all of them; int8_linear multiplies it in float32 instead: without one, it is the plain dynamic int8
    product exactly; with one, its error is a fraction of the plain product's."""
    from qkv.linear import OUTLIER_RATIO, _int8_pack, int8_linear

    torch.manual_seed(0)
    w, b = torch.randn(48, 64) / 8, torch.randn(48)
    packed = _int8_pack(w, b)
    x = torch.randn(20, 64)
    plain = torch.ops.quantized.linear_dynamic(x, packed, False)
    assert torch.equal(int8_linear(x, packed, w), plain)  # no outlier: the same kernel, nothing else
    x[:, 5] *= 4 * OUTLIER_RATIO  # one channel 24x the others
    ref = F.linear(x, w, b)
    plain_error = (torch.ops.quantized.linear_dynamic(x, packed, False) - ref).abs().max()
    error = (int8_linear(x, packed, w) - ref).abs().max()
    assert error < plain_error / 5, (error, plain_error)
    assert error < 0.02 * ref.abs().max()
