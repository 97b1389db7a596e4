"""The run directory: no pickle, atomic checkpoints, recovery after a kill mid-save."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import qkv
from qkv import checkpoint
from qkv.checkpoint import CHECKPOINT_FILES, load_trainer_state, recover, save_checkpoint
from qkv.train import TrainConfig, make_optimizer


def test_run_directory_holds_everything_and_no_pickle(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    expected = {"config.json", "src_tokenizer.json", "tgt_tokenizer.json", "metrics.jsonl", "summary.json"}
    assert expected | set(CHECKPOINT_FILES) <= names
    for p in tiny_run.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{p.name} looks like a pickle / torch.save file"


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_kill_while_writing_leaves_the_old_checkpoint(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    before = {n: (run / n).read_bytes() for n in CHECKPOINT_FILES}
    loaded = qkv.load(run)
    opt = make_optimizer(loaded.model, TrainConfig())
    calls = []

    def dying_write(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # die after the first temporary file is written
            raise KeyboardInterrupt
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])  # and even that one is torn

    monkeypatch.setattr(checkpoint, "_write_durable", dying_write)
    with torch.no_grad():
        loaded.model.generator.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, loaded.model, opt, {"step": 999})
    monkeypatch.undo()
    assert qkv.load(run).translate(["abc"])  # still loadable as it was
    recover(run)
    assert {n: (run / n).read_bytes() for n in CHECKPOINT_FILES} == before
    assert not list(run.glob("*.tmp"))


def test_kill_during_renames_is_rolled_forward(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    loaded = qkv.load(run)
    opt = make_optimizer(loaded.model, TrainConfig())
    real_replace = checkpoint.os.replace
    count = {"n": 0}

    def dying_replace(src, dst):
        if str(src).endswith(".tmp"):
            count["n"] += 1
            if count["n"] == 2:  # the model file is renamed, the trainer state is not
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, loaded.model, opt, {"step": 4242})
    monkeypatch.undo()
    assert (run / "COMMIT").exists()
    recover(run)
    assert not (run / "COMMIT").exists()
    assert '"step": 4242' in (run / "trainer_state.json").read_text()
    assert qkv.load(run).translate(["abc"])


def test_a_run_saved_before_adam_was_fused_resumes_fused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    state_file = run / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert all(g["fused"] for g in state["param_groups"])
    for group in state["param_groups"]:
        group["fused"] = None  # as torch's loop Adam wrote it
    state_file.write_text(json.dumps(state))
    loaded = qkv.load(run)
    opt = make_optimizer(loaded.model, TrainConfig())
    load_trainer_state(run, opt)
    assert all(g["fused"] for g in opt.param_groups)
    saved_moments = [opt.state[p]["exp_avg"].clone() for p in loaded.model.parameters() if p in opt.state]
    assert saved_moments and any(m.abs().sum() > 0 for m in saved_moments)  # the run's moments came back
    loss = sum(p.sum() for p in loaded.model.parameters())
    loss.backward()
    opt.step()  # the fused kernel runs on the restored state (its step counters included)
