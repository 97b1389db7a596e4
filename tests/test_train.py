"""Training: schedules, loss, accumulation, exact resume, and configs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from qkv.data import Vocab, encode_pairs
from qkv.errors import QkvError
from qkv.models import TransformerConfig, build_transformer
from qkv.train import (
    RunConfig,
    TrainConfig,
    fused_adam,
    label_smoothed_loss,
    lr_at,
    make_optimizer,
    recipe,
    train,
    train_step,
)


def test_noam_schedule_is_the_papers_formula():
    cfg = TrainConfig(schedule="noam", warmup=4000, lr=1.0)
    for step in (1, 100, 3999, 4000, 4001, 100_000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert lr_at(step, cfg, 512) == pytest.approx(expected, rel=1e-12)
    peak = max(range(1, 10_000, 7), key=lambda s: lr_at(s, cfg, 512))
    assert abs(peak - 4000) <= 7


def test_warmup_inverse_sqrt_and_cosine():
    inv = TrainConfig(schedule="inverse_sqrt", warmup=100, lr=1e-3)
    assert lr_at(50, inv, 64) == pytest.approx(5e-4)
    assert lr_at(100, inv, 64) == pytest.approx(1e-3)
    assert lr_at(400, inv, 64) == pytest.approx(5e-4)
    cos = TrainConfig(schedule="cosine", warmup=10, lr=1e-3, min_lr=1e-4, steps=110)
    assert lr_at(10, cos, 64) == pytest.approx(1e-3)
    assert lr_at(60, cos, 64) == pytest.approx(0.55e-3)
    assert lr_at(110, cos, 64) == pytest.approx(1e-4)


def test_label_smoothed_loss_matches_its_formula_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0]])
    eps = 0.1
    logp = torch.log_softmax(logits, -1)
    real = target != 0
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    smooth = -logp.mean(-1)
    expected = ((1 - eps) * nll + eps * smooth)[real].sum()
    assert label_smoothed_loss(logits, target, eps) == pytest.approx(float(expected), rel=1e-6)
    logits2 = logits.clone()
    logits2[0, 3] = 100.0  # a padded position
    assert label_smoothed_loss(logits2, target, eps) == pytest.approx(float(expected), rel=1e-6)


def _tiny_model_and_batches():
    vocab = Vocab(list("abcdef"), "char")
    cfg = TransformerConfig(d_model=16, h=2, N=1, d_ff=32, dropout=0.0, src_vocab_size=10, tgt_vocab_size=10)
    pairs = [("abc", "cba"), ("de", "ed"), ("fabd", "dbaf"), ("a", "a")]
    return (
        cfg,
        encode_pairs(pairs[:2], vocab, vocab),
        encode_pairs(pairs[2:], vocab, vocab),
        encode_pairs(pairs, vocab, vocab),
    )


def test_gradient_accumulation_equals_one_big_batch():
    cfg, part1, part2, whole = _tiny_model_and_batches()
    tc = TrainConfig(schedule="constant", lr=1.0, warmup=0, clip=0.0)
    results = []
    for batches in ([part1, part2], [whole]):
        torch.manual_seed(0)
        model = build_transformer(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself
        train_step(model, opt, batches, tc, 1)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (results[0] - results[1]).abs().max() < 1e-6


def test_make_optimizer_is_the_papers_adam():
    opt = make_optimizer(torch.nn.Linear(2, 2), TrainConfig())
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-9


def test_make_optimizer_is_fused_and_updates_as_torchs_loop():
    """The fused kernel (qkv's choice on the CPU) updates as torch's default per-parameter loop does."""
    torch.manual_seed(0)
    ours, plain = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    plain.load_state_dict(ours.state_dict())
    start = ours.weight.detach().clone()
    for cfg in (TrainConfig(), TrainConfig(weight_decay=0.1)):
        opt, ref = make_optimizer(ours, cfg), make_optimizer(plain, cfg)
        assert all(g["fused"] for g in opt.param_groups)
        for o in (opt, ref):
            for g in o.param_groups:
                g["lr"] = 1e-2
        for g in ref.param_groups:
            g["fused"] = None  # torch's default on the CPU: a loop over the parameters
        for _ in range(5):
            grads = [torch.randn_like(p) for p in ours.parameters()]
            for model in (ours, plain):
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.grad = g.clone()
            opt.step()
            ref.step()
        for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (ours.weight - start).abs().min() > 1e-3  # every weight moved: ten real updates were compared


def test_fused_adam_only_where_torch_has_the_kernel():
    assert fused_adam([torch.zeros(2)]) is True
    assert fused_adam([torch.zeros(2, device="meta")]) is None
    assert fused_adam([torch.zeros(2, dtype=torch.int64)]) is None
    assert fused_adam([]) is None


def _weights(run):
    return load_file(run / "model.safetensors")


def test_resume_is_bit_identical(tmp_path, tiny_overrides):
    cfg = recipe("reverse")
    over = tiny_overrides + ["steps=16", "eval_every=8", "dropout=0.1"]  # dropout on: the RNG state must resume too
    train(cfg, tmp_path / "one", overrides=over, progress=False, log=lambda m: None)
    stopped = train(cfg, tmp_path / "two", overrides=over, until_step=8, progress=False, log=lambda m: None)
    assert stopped == {"step": 8, "stopped": True}
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["step"] == 8
    train(out=tmp_path / "two", resume=True, progress=False, log=lambda m: None)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [8, 16]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["step"] == 16 and 0.0 <= summary["exact_match"] <= 1.0


def test_training_learns_the_reverse_task(tiny_run):
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] < math.log(30)


def test_refuses_to_overwrite_an_existing_run(tiny_run, tiny_overrides):
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir()}
    with pytest.raises(QkvError, match="already exists"):
        train(recipe("reverse"), tiny_run, overrides=tiny_overrides, progress=False, log=lambda m: None)
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir()} == before


def test_overrides_parse_and_fail_clearly():
    cfg = RunConfig().with_overrides(["d_model=256", "train.steps=7", "norm_first=true", "betas=0.9,0.99"])
    assert cfg.model.d_model == 256 and cfg.train.steps == 7 and cfg.model.norm_first
    assert cfg.train.betas == (0.9, 0.99)
    with pytest.raises(QkvError, match="malformed override"):
        RunConfig().with_overrides(["d_model"])
    with pytest.raises(QkvError, match="did you mean 'steps'"):
        RunConfig().with_overrides(["stesp=3"])
    with pytest.raises(QkvError, match="ambiguous"):
        RunConfig().with_overrides(["max_len=3"])
    with pytest.raises(QkvError, match="not a valid int"):
        RunConfig().with_overrides(["d_model=big"])
    with pytest.raises(QkvError, match="model.d_model"):
        RunConfig().with_overrides(["d_model=500"])
    with pytest.raises(QkvError, match="train.schedule"):
        RunConfig().with_overrides(["schedule=linear"])
    with pytest.raises(QkvError, match="cannot change when resuming"):
        RunConfig().with_overrides(["d_model=64"], sections=("train",))
    for lr in ("inf", "nan", "0"):  # an infinite rate passed the old "> 0" check: NaN weights after one step
        with pytest.raises(QkvError, match="train.lr=.*must be a number > 0"):
            RunConfig().with_overrides([f"lr={lr}"])


def _qkv_train(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qkv", "train", *args, "--no-progress"], stderr=subprocess.PIPE, text=True
    )


def _wait_for_training(proc: subprocess.Popen) -> None:
    """Read stderr until the first training line (the run directory is set up by then)."""
    for line in proc.stderr:
        if "qkv: training a" in line:
            return
    raise AssertionError("training did not start")


@pytest.mark.parametrize("delay", [0.3, 1.2])
def test_sigterm_saves_and_resume_is_bit_identical(tmp_path, tiny_overrides, delay):
    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=300", "eval_every=100", "dropout=0.1", "save_minutes=0"]
    ref = _qkv_train("reverse", *over, "--out", str(tmp_path / "one"))
    ref.communicate()
    proc = _qkv_train("reverse", *over, "--out", str(tmp_path / "two"))
    _wait_for_training(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode == 0 and "(SIGTERM); continue with: qkv train --resume" in err, err
    step = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["step"]
    assert 0 < step < 300 and not (tmp_path / "two" / "summary.json").exists()
    assert subprocess.run([sys.executable, "-m", "qkv", "train", "--resume", str(tmp_path / "two")]).returncode == 0
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=400", "eval_every=400", "save_minutes=0"]
    proc = _qkv_train("reverse", *over, "--out", str(tmp_path / "two"))
    _wait_for_training(proc)
    proc.kill()  # SIGKILL: nothing is saved
    proc.communicate()
    assert (tmp_path / "two" / "config.json").exists() and not (tmp_path / "two" / "model.safetensors").exists()
    messages = []
    train(out=tmp_path / "two", resume=True, overrides=["steps=12"], progress=False, log=messages.append)
    assert any("no checkpoint yet: starting it from step 0" in m for m in messages)
    train(recipe("reverse"), tmp_path / "one", overrides=[*over, "steps=12"], progress=False, log=lambda m: None)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_keeps_metrics_up_to_the_step_and_drops_damaged_lines(tmp_path):
    """Rows after the resumed step go; so do lines that are not JSON objects with a numeric step (a torn
    line, a bare number, a string step), which used to stop the resume with an internal error."""
    from qkv.train import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": 50}, {"kind": "eval", "step": 100}, {"kind": "train", "step": 150}]
    damaged = ["0", "[1, 2]", '{"step": "7"}', '{"step": true}', '{"kind": "tr']
    path.write_text("\n".join([json.dumps(rows[0]), *damaged, *map(json.dumps, rows[1:])]) + "\n")
    _truncate_metrics(path, 100)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]


def test_a_step_with_gradients_that_are_not_finite_is_refused_before_the_update():
    """Diverged training (NaN loss) stops with one line instead of writing NaN into the weights (and later
    into a checkpoint, and every evaluation after it)."""
    torch.manual_seed(0)
    model_cfg, _, _, batches = _tiny_model_and_batches()
    cfg = TrainConfig(steps=4, batch_size=4, warmup=1, lr=1e-3)
    model = build_transformer(model_cfg)
    optimizer = make_optimizer(model, cfg)
    train_step(model, optimizer, [batches], cfg, 1)  # finite: a normal step
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.generator.weight[0, 0] = float("nan")
    with pytest.raises(QkvError, match="training diverged at step 2: the gradients are not finite"):
        train_step(model, optimizer, [batches], cfg, 2)
    after = model.state_dict()
    poisoned = model.generator.weight.data_ptr()  # (and the embeddings tied to it)
    assert all(torch.equal(after[k], v) for k, v in before.items() if after[k].data_ptr() != poisoned)


def test_resume_checks(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))] + ["steps=8", "eval_every=4"]
    run = tmp_path / "r"
    train(recipe("reverse"), run, overrides=over, progress=False, log=lambda m: None)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(QkvError, match="is at step 8: resuming needs train.steps >= 8"):
        train(out=run, resume=True, overrides=["steps=5"], progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing rewritten
    train(out=run, resume=True, overrides=["steps=12"], until_step=10, progress=False, log=lambda m: None)
    assert not (run / "summary.json").exists()  # the old summary (of step 8) no longer describes the run
    state = json.loads((run / "trainer_state.json").read_text())
    (run / "trainer_state.json").write_text(json.dumps({**state, "step": 9}))
    with pytest.raises(QkvError, match="disagree"):
        train(out=run, resume=True, progress=False)
    (run / "trainer_state.json").write_text("{}")
    with pytest.raises(QkvError, match="lacks step"):
        train(out=run, resume=True, progress=False)


def test_kept_checkpoints_and_averaging(tmp_path, tiny_overrides, capsys):
    from qkv.api import average
    from qkv.checkpoint import kept_steps
    from qkv.cli import main

    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=20", "eval_every=10", "save_every=3", "keep_last=4", "keep_best=true"]
    run = tmp_path / "r"
    train(recipe("reverse"), run, overrides=over, progress=False, log=lambda m: None)
    assert kept_steps(run) == [12, 15, 18, 20]  # saves at 3, 6, …, 18 and the evaluations at 10, 20
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert best["value"] == min(r["valid_loss"] for r in rows) and best["metric"] == "valid_loss"
    out = average(run, tmp_path / "avg", last=2)
    kept = [load_file(run / "checkpoints" / f"step-{s:07d}.safetensors") for s in (18, 20)]
    got = load_file(out / "model.safetensors")
    for k in got:
        torch.testing.assert_close(got[k], (kept[0][k].double() + kept[1][k].double()).div(2).float())
    assert torch.equal(
        load_file(run / "checkpoints" / "step-0000020.safetensors")["src_embed.weight"],
        _weights(run)["src_embed.weight"],
    )
    assert main(["translate", str(out), "abc"]) == 0 and capsys.readouterr().out.count("\n") == 1
    assert main(["average", str(run), "--steps", "15,99", "--out", str(tmp_path / "x")]) == 2
    assert "keeps no checkpoint of step 99" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["average", str(run), "--last", "9", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--resume", str(out)]) == 2 and "cannot be resumed" in capsys.readouterr().err


def test_checkpoints_on_the_clock(tmp_path, tiny_overrides):
    from qkv.checkpoint import kept_steps

    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=30", "eval_every=30", "save_minutes=0.00001", "keep_last=100"]  # a save after every step
    train(recipe("reverse"), tmp_path / "r", overrides=over, progress=False, log=lambda m: None)
    assert kept_steps(tmp_path / "r") == list(range(1, 31))  # no evaluation before step 30: the clock saved them


def test_a_time_budget_ends_the_run_as_finished_and_resume_can_extend_it(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=30", "eval_every=30", "max_minutes=0.000001"]  # any step takes longer than 60 µs
    messages: list[str] = []
    summary = train(recipe("reverse"), tmp_path / "r", overrides=over, progress=False, log=messages.append)
    assert summary["step"] == 1 and "exact_match" in summary  # a finished run: the final evaluation ran
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["step"] == 1
    assert any("minutes of training reached at step 1" in m for m in messages)
    assert [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1]
    again = train(out=tmp_path / "r", resume=True, progress=False, log=lambda m: None)  # the budget is spent
    assert again["step"] == 1
    longer = train(out=tmp_path / "r", resume=True, overrides=["max_minutes=0"], progress=False, log=lambda m: None)
    assert longer["step"] == 30


def test_the_plain_line_eta_is_the_time_budget_left_when_that_is_shorter(tmp_path):
    from qkv.train import StepStats
    from qkv.trainlog import TrainLog

    lines: list[str] = []
    common = {"log_every": 1, "tensorboard": False, "main": True, "progress": False, "step": 0}
    log = TrainLog(tmp_path, **common, total=10**9, device=torch.device("cpu"), say=lines.append, budget_s=90.0)
    log.step(1, StepStats(loss=1.0, tokens=10, lr=1e-3, grad_norm=1.0), elapsed=30.0, nll=None)
    assert lines[-1].endswith("elapsed 0:30 | eta 1:00")  # by steps it would be ~10**9 step times
    log = TrainLog(tmp_path, **common, total=10**9, device=torch.device("cpu"), say=lines.append)
    log.step(1, StepStats(loss=1.0, tokens=10, lr=1e-3, grad_norm=1.0), elapsed=30.0, nll=None)
    assert not lines[-1].endswith("eta 1:00")


def test_evaluations_on_the_clock(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=6", "eval_every=100", "eval_minutes=0.000001"]  # an evaluation after every step
    train(recipe("reverse"), tmp_path / "r", overrides=over, progress=False, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(rows, rows[1:], strict=False))


@pytest.mark.parametrize("field", ["max_minutes", "eval_minutes"])
def test_a_negative_time_is_refused_naming_the_field(field):
    with pytest.raises(QkvError, match=rf"train\.{field}=-1.*must be >= 0"):
        RunConfig().with_overrides([f"{field}=-1"])


def test_under_a_time_budget_the_cosine_schedule_ends_where_the_time_does():
    cos = TrainConfig(schedule="cosine", warmup=10, lr=1e-3, min_lr=1e-4, steps=10_000, max_minutes=30)
    # 110 steps in 10 of 30 minutes: at this pace the run ends at step 330, 100 of its 320 steps after warmup
    expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 100 / 320))
    assert lr_at(110, cos, 64, minutes=10) == pytest.approx(expected)
    assert lr_at(330, cos, 64, minutes=30) == pytest.approx(1e-4)  # the time is up: min_lr
    assert lr_at(5, cos, 64, minutes=1) == pytest.approx(5e-4)  # warmup is in steps
    assert lr_at(110, cos, 64, minutes=0) == lr_at(110, TrainConfig(**{**vars(cos), "max_minutes": 0}), 64)


def test_train_rows_and_plain_lines_every_log_every_steps(tmp_path, tiny_overrides):
    from qkv.api import load

    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=12", "eval_every=6", "log_every=4"]
    for eps in (0.0, 0.1):
        run, lines = tmp_path / f"r{eps}", []
        train(recipe("reverse"), run, overrides=[*over, f"label_smoothing={eps}"], progress=False, log=lines.append)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [(r["kind"], r["step"]) for r in rows] == [
            ("train", 4),
            ("eval", 6),
            ("train", 8),
            ("train", 12),
            ("eval", 12),
        ]
        train_rows = [r for r in rows if r["kind"] == "train"]
        for r in train_rows:
            assert {"train_loss", "train_nll", "grad_norm", "lr", "tokens_per_second", "peak_memory_mb"} <= set(r)
            assert r["tokens_per_second"] > 0 and r["peak_memory_mb"] > 0 and r["grad_norm"] > 0
            if eps == 0.0:
                assert r["train_nll"] == pytest.approx(r["train_loss"], rel=1e-6)  # the same quantity, measured twice
            else:
                assert r["train_nll"] != pytest.approx(r["train_loss"], rel=1e-4)
        plain = [m for m in lines if m.startswith("step ") and " | loss " in m]
        assert [m.split()[1] for m in plain] == ["4/12", "8/12", "12/12"]
        assert all(" tok/s | elapsed " in m and " | eta " in m for m in plain)
        assert load(run).info()["last_metrics"] == rows[-1]  # the last evaluation


def test_tensorboard_events_hold_the_logged_numbers(tmp_path, tiny_overrides):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))]
    over += ["steps=12", "eval_every=6", "log_every=4", "tensorboard=true"]
    run = tmp_path / "r"
    train(recipe("reverse"), run, overrides=over, until_step=9, progress=False, log=lambda m: None)
    train(out=run, resume=True, progress=False, log=lambda m: None)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["train_loss"])) for r in rows if r["kind"] == "train"]
    valid = [e.step for e in events.Scalars("valid/loss")]
    assert valid == [r["step"] for r in rows if r["kind"] == "eval"] == [6, 9, 12]


def test_resume_from_a_token_store_is_bit_identical(tmp_path):
    from qkv.data.store import prepare_store

    words = "ein zwei drei hund katze haus baum frau mann kind".split()
    for split, n in (("train", 200), ("valid", 10)):
        rows = [" ".join(words[(i * 7 + k) % 10] for k in range(1 + i % 6)) for i in range(n)]
        (tmp_path / f"{split}.de").write_text("".join(r + "\n" for r in rows))
        (tmp_path / f"{split}.en").write_text("".join(r.upper() + "\n" for r in rows))
    splits = {s: (str(tmp_path / f"{s}.de"), str(tmp_path / f"{s}.en")) for s in ("train", "valid")}
    store = prepare_store(tmp_path / "data", splits, vocab_size=40)
    cfg = recipe("multi30k").with_data(data=str(store.path))
    over = ["d_model=32", "h=2", "N=1", "d_ff=64", "max_tokens=512", "steps=16", "eval_every=8", "warmup=4"]
    quiet = {"progress": False, "log": lambda m: None}
    from qkv.data.store import BucketStream

    epoch = BucketStream(store, 100, 512, 0, {"bos": 1, "eos": 2, "pad": 0}).batches_per_epoch
    assert 7 < epoch < 16  # the runs cross an epoch's end after the resume point
    train(cfg, tmp_path / "one", overrides=over, **quiet)
    train(cfg, tmp_path / "two", overrides=over, until_step=7, **quiet)
    assert json.loads((tmp_path / "two" / "trainer_state.json").read_text())["data"]["store"] == store.sha256
    train(out=tmp_path / "two", resume=True, **quiet)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_eta_after_an_evaluation_counts_only_the_steps_since(tmp_path, monkeypatch):
    import types

    from qkv import trainlog
    from qkv.train import StepStats

    now = [0.0]
    monkeypatch.setattr(trainlog, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    lines: list[str] = []
    log = trainlog.TrainLog(
        tmp_path, log_every=10, tensorboard=False, main=True, progress=False, step=0, total=1000,
        device=torch.device("cpu"), say=lines.append,
    )  # fmt: skip
    stats = StepStats(loss=1.0, tokens=10, lr=1e-3, grad_norm=1.0)
    for step in range(1, 21):  # one second a step; an evaluation (not training time) after step 14
        now[0] += 1.0
        log.step(step, stats, elapsed=float(step), nll=None)
        if step == 14:
            now[0] += 300.0
            log.pause(step)
    assert lines[0].endswith("| 10 tok/s | elapsed 0:10 | eta 16:30")
    assert lines[1].endswith("| 10 tok/s | elapsed 0:20 | eta 16:20")  # 980 steps left at 1 s each
