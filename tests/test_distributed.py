"""torchrun: two CPU processes with gloo equal one process on the same global batch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

TINY = ["d_model=32", "h=2", "N=1", "d_ff=64", "dropout=0.0", "steps=6", "eval_every=6", "batch_size=8", "warmup=2"]
TINY += ["valid_size=8", "test_size=8", "task.max_len=8"]
# Adam with the paper's eps=1e-9 turns float rounding noise in gradients that are ~0 (all-reduce sums in
# another order than local accumulation) into full ±lr steps; eps=1e-3 keeps the comparison about the
# gradients themselves. With eps=1e-9 the runs agree to ~1e-3 after 6 steps, with eps=1e-3 to ~6e-8.
TINY += ["eps=1e-3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_as_one_process(run, single):
    """``run`` (2 processes) holds the weights one process trains into ``single`` with the same global
    batch (two micro-batches accumulated), to < 1e-6."""
    res = subprocess.run(
        [sys.executable, "-m", "qkv", "train", "reverse", *TINY, "accum=2", "--out", str(single), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    a, b = load_file(run / "model.safetensors"), load_file(single / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    assert json.loads((run / "summary.json").read_text())["processes"] == 2


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    cmd += ["-m", "qkv", "train", "reverse", *TINY, "--out", str(ddp), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes" in res.stderr
    assert_same_as_one_process(ddp, single)
    # resume under torchrun
    cmd2 = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    cmd2 += ["-m", "qkv", "train", "--resume", str(ddp), "steps=8", "--no-progress"]
    res = subprocess.run(cmd2, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((ddp / "summary.json").read_text())["step"] == 8
    assert torch.isfinite(load_file(ddp / "model.safetensors")["tgt_embed.weight"]).all()


def test_two_nodes_meeting_at_a_c10d_rendezvous_match_one_process(tmp_path):
    """Multi-node torchrun, as two "nodes" on this machine: two launches of ``torchrun --nnodes=2
    --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` train the same weights as one process with the same
    global batch (two micro-batches accumulated)."""
    nodes, single = tmp_path / "nodes", tmp_path / "single"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    launch += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=qkv-two-nodes"]
    cmd = [*launch, "-m", "qkv", "train", "reverse", *TINY, "--out", str(nodes), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    assert any("2 processes" in err for _, err in outputs)
    assert_same_as_one_process(nodes, single)
