"""Device names, precision and compile: what each name means, one-line errors for a device that is not
there, fp16 training with its gradient scaler (resumed exactly), compiled training and decoding equal to
eager, and the simulated GPU of tests/conftest.py catching a tensor made on the CPU."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv.cli import main
from qkv.devices import resolve_device, resolve_precision
from qkv.errors import QkvError
from qkv.recipes import read_run_config, recipe
from qkv.train import train

TINY = ["d_model=16", "h=2", "N=1", "d_ff=32", "dropout=0.0", "batch_size=8", "warmup=2", "task.max_len=6"]
TINY += ["valid_size=8", "test_size=8", "eval_every=100", "save_minutes=0"]


def quiet(_msg: str) -> None:
    pass


@pytest.mark.parametrize("name", ["cpu", "auto"])
def test_cpu_names_resolve_to_the_cpu_here(name):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto is cuda")
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", "--device 'gpu': choose auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "choose auto, cpu, cuda, cuda:N or mps"),
        ("cuda", "sees no CUDA device"),
        ("cuda:1", "sees no CUDA device"),
        ("mps", "no Apple GPU"),
    ],
)
def test_a_device_that_is_not_there_is_one_line(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(QkvError, match=message.replace("(", r"\(")):
        resolve_device(name)


def test_cuda_names_pick_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # this torchrun rank's GPU
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(QkvError, match="there are 2 CUDA devices"):
        resolve_device("cuda:2")


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from qkv import devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "_cpu_multiplies_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(devices, "_cpu_multiplies_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    with pytest.raises(QkvError, match="--precision 'half': choose fp32, bf16, fp16, auto"):
        resolve_precision("half", cpu)


def test_the_simulated_gpu_catches_a_tensor_made_on_the_cpu(fake_cuda):
    x = torch.ones(2, 3, device="cuda")
    assert x.device == fake_cuda and x.to("cpu").device.type == "cpu"
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.zeros(2, 3)
    assert (x + torch.zeros(2, 3, device=x.device)).device == fake_cuda  # made where x is: fine
    assert (x * torch.tensor(2.0)).device == fake_cuda  # a 0-dim CPU scalar is allowed, as on CUDA
    with pytest.raises(TypeError, match="numpy"):
        x.numpy()
    model = torch.nn.Linear(3, 2).to("cuda")
    with pytest.raises(RuntimeError, match="same device"):
        model(torch.ones(1, 3))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dev") / "run"
    train(recipe("reverse"), out, overrides=[*TINY, "steps=30"], progress=False, log=quiet)
    return out


def test_verbs_take_device_and_precision_flags(tiny_run, capsys):
    assert main(["translate", str(tiny_run), "a b c", "--device", "cpu", "--precision", "bf16", "--json"]) == 0
    bf16 = json.loads(capsys.readouterr().out)["translation"]
    assert main(["translate", str(tiny_run), "a b c", "--device", "cpu", "--json"]) == 0
    assert bf16 == json.loads(capsys.readouterr().out)["translation"] == qkv.load(tiny_run).translate(["a b c"])[0]
    losses = []
    for precision in ("fp16", "fp32"):
        assert main(["evaluate", str(tiny_run), "--device", "cpu", "--precision", precision]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert losses[0] != losses[1] and abs(losses[0] - losses[1]) < 0.01  # fp16 weights: close, not the same


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "qkv: error: --device cuda: torch"),
        (["--device", "tpu"], "qkv: error: --device 'tpu': choose auto, cpu, cuda, cuda:N or mps"),
        (["--precision", "int4"], "qkv: error: argument --precision: invalid choice"),
    ],
)
def test_a_bad_device_flag_is_one_line(tiny_run, capsys, argv, message):
    if torch.cuda.is_available() and argv[1] == "cuda":
        pytest.skip("this machine has a GPU")
    assert _status(["translate", str(tiny_run), "a b", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def _status(argv: list[str]) -> int:
    """The exit status of ``qkv ARGV`` (argparse's errors exit, qkv's return)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def test_train_flags_set_the_train_section(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "reverse", *TINY, "steps=2", "--precision", "bf16", "--device", "cpu", "--print-config"]
    assert main([*argv, "--out", str(out)]) == 0
    cfg = json.loads(capsys.readouterr().out)["train"]
    assert (cfg["precision"], cfg["device"], cfg["compile"]) == ("bf16", "cpu", False)
    assert main(["train", "reverse", *TINY, "steps=2", "--device", "cuda:0", "--out", str(out)]) == 2
    assert not out.exists()  # refused before anything was written


def test_fp16_training_scales_the_loss_and_resumes_exactly(tmp_path):
    """fp16 autocast with a gradient scaler trains (finite weights, the scaler's state in the checkpoint),
    and 6 steps + 6 resumed equal 12 in one go (the scale and its growth tracker are restored)."""
    fp16 = [*TINY, "precision=fp16", "save_every=6"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    summary = train(recipe("reverse"), whole, overrides=[*fp16, "steps=12"], progress=False, log=quiet)
    assert summary["precision"] == "fp16"
    state = json.loads((whole / "trainer_state.json").read_text())
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    train(recipe("reverse"), split, overrides=[*fp16, "steps=12"], until_step=6, progress=False, log=quiet)
    train(None, split, resume=True, progress=False, log=quiet)
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_written_with_bf16_true_reads_as_precision(tiny_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = json.loads((old / "config.json").read_text())
    train_section = {k: v for k, v in cfg["train"].items() if k != "precision"} | {"bf16": True}
    (old / "config.json").write_text(json.dumps({**cfg, "train": train_section}))
    assert read_run_config(old).train.precision == "bf16"


def test_compiled_training_and_decoding_equal_eager(tmp_path, tiny_run):
    """compile=true trains the same model as eager (to float rounding), and a run loaded with
    compile=True translates exactly as the eager one."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    few = [*TINY, "steps=3", "eps=1e-3"]  # Adam's eps=1e-9 would blow rounding noise in ~0 gradients up to lr
    train(recipe("reverse"), eager, overrides=few, progress=False, log=quiet)
    train(recipe("reverse"), compiled, overrides=[*few, "compile=true"], progress=False, log=quiet)
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    texts = ["a b c", "c c a b", "b"]
    assert qkv.load(tiny_run, compile=True).translate(texts, beam=2) == qkv.load(tiny_run).translate(texts, beam=2)


@pytest.mark.parametrize("quantize", ["int8", "int8-mixed"])
def test_int8_weights_run_on_the_cpu_only(tiny_run, capsys, fake_cuda, quantize):
    """--quantize int8 / int8-mixed translates on the CPU (most outputs as fp32's; int8-mixed with outlier
    channels in float32 on every linear map); on a GPU, or with bf16 weights, it is one line."""
    texts = ["a b c", "c b a b", "b a", "c c b"]
    int8 = qkv.load(tiny_run, device="cpu", quantize=quantize)
    linears = [m for m in int8.model.modules() if hasattr(m, "int8")]
    assert all(m.int8 and m.int8_outliers == (quantize == "int8-mixed") for m in linears)
    fp32 = qkv.load(tiny_run, device="cpu").translate(texts)
    same = sum(x == y for x, y in zip(int8.translate(texts), fp32, strict=True))
    assert same >= 3
    with pytest.raises(QkvError, match=f"--quantize {quantize} runs on the CPU"):
        qkv.load(tiny_run, device="cuda", quantize=quantize)
    assert (
        _status(["translate", str(tiny_run), "a b", "--quantize", quantize, "--precision", "bf16", "--device", "cpu"])
        == 2
    )
    assert "drop --precision" in capsys.readouterr().err
    with pytest.raises(QkvError, match="drop --compile"):
        qkv.load(tiny_run, device="cpu", quantize=quantize, compile=True)
    assert _status(["translate", str(tiny_run), "a b", "--quantize", quantize, "--device", "cpu"]) == 0


def test_int8_with_compile_and_init_on_resume_are_refused(tiny_run, tmp_path, capsys):
    """Two combinations where one value would do nothing: int8 weights under torch.compile (the compiled
    graph uses its own kernels), and train.init on a resumed run (it continues from its own weights)."""
    with pytest.raises(QkvError, match="drop --compile"):
        qkv.load(tiny_run, device="cpu", quantize="int8", compile=True)
    out = tmp_path / "r"
    train(recipe("reverse"), out, overrides=[*TINY, "steps=4"], until_step=2, progress=False, log=quiet)
    assert _status(["train", "--resume", str(out), f"train.init={tiny_run}"]) == 2
    assert "train.init starts a new run" in capsys.readouterr().err


# A child process frees and allocates a 64 MiB tensor (above glibc's largest mmap threshold) ten times and
# prints the minor page faults that cost: each fresh mapping faults every page in again.
_CHURN = """
import resource, sys
import torch
{setup}
def churn():
    for _ in range(10):
        torch.empty(16 * 2**20).fill_(1.0)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn_faults(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHURN.format(setup=setup)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc only")
def test_freed_tensor_memory_is_reused_not_faulted_in_again():
    plain = _churn_faults("")
    kept = _churn_faults("from qkv.devices import keep_freed_memory\nassert keep_freed_memory()")
    command = _churn_faults("sys.argv = ['qkv', 'env']\nfrom qkv.cli import main\nmain()")  # the qkv command
    assert plain >= 10  # at least a fault per fresh 64 MiB block (16,384 with 4 KiB pages)
    assert kept * 10 < plain
    assert command * 10 < plain
