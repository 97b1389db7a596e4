"""Fuzzing a run directory: random type and value changes to config.json and random truncation or bytes in
any of its files. `qkv info`, `translate`, `evaluate`, `attention`, `export`, `average` and `train --resume` must
exit 0, or 2 with one `qkv: error:` line (training's, after what it said it was doing) — never a traceback,
never an internal error — and a refused command changes no file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fuzz_values import JSON_VALUES  # tests/fuzz_values.py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkv.cli import main

FILES = (
    "config.json",
    "model.safetensors",
    "src_tokenizer.json",
    "tgt_tokenizer.json",
    "trainer_state.json",
    "trainer_state.safetensors",
    "metrics.jsonl",
    "summary.json",
)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@st.composite
def damage(draw: st.DrawFn) -> tuple:
    """One change: (config.json, section, field or a new key, JSON value) or (file, cut at, bytes put there)."""
    if draw(st.booleans()):
        section = draw(st.sampled_from(["model", "train", "task", "family", None]))
        return ("config", section, draw(st.text(min_size=1, max_size=8) | st.just("")), draw(JSON_VALUES))
    name = draw(st.sampled_from(FILES))
    return ("bytes", name, draw(st.floats(0, 1)), draw(st.binary(max_size=16)), draw(st.booleans()))


def _apply(run: Path, change: tuple) -> None:
    if change[0] == "config":
        _, section, key, value = change
        cfg = json.loads((run / "config.json").read_text())
        if section is None:
            cfg = value  # the whole file replaced by a value
        elif section == "family" or not isinstance(cfg.get(section), dict):
            cfg[section] = value
        else:
            fields = sorted(cfg[section])
            cfg[section][fields[hash(key) % len(fields)] if key else "unknown_field"] = value
        (run / "config.json").write_text(json.dumps(cfg))
        return
    _, name, where, data, truncate = change
    raw = (run / name).read_bytes()
    at = int(where * len(raw))
    (run / name).write_bytes(raw[:at] + data + (b"" if truncate else raw[at + len(data) :]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=damage())
def test_a_damaged_run_is_answered_in_one_line(tiny_run, tmp_path_factory, capsys, change):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(tiny_run, run)
    _apply(run, change)
    for argv in (
        ["info", str(run)],
        ["translate", str(run), "abc"],
        ["evaluate", str(run), "--beam", "2"],
        ["attention", str(run), "abc", "--format", "json", "-o", str(run.parent / "a.json")],
        ["export", str(run), "--out", str(run.parent / "hf")],
        ["average", str(run), "--out", str(run.parent / "avg")],
        ["train", "--resume", str(run), "--until-step", "120"],
    ):
        before = _snapshot(run)
        code = main(argv)
        out, err = capsys.readouterr()
        assert code in (0, 2), (argv[0], change, err)
        assert "Traceback" not in out + err
        if code == 2:  # one error line, last (training may have said what it was doing before it)
            lines = err.strip().splitlines()
            assert lines[-1].startswith("qkv: error: ") and sum(ln.startswith("qkv: error") for ln in lines) == 1, err
            assert argv[0] == "train" or len(lines) == 1, err
        if code == 2 or argv[0] != "train":
            assert _snapshot(run) == before, (argv[0], change)
