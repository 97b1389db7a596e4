"""`qkv compare`: the smoke-sized run end to end through the CLI, and the measured properties that
must come out exactly (path lengths, query-batch agreement, softmax saturation)."""

from __future__ import annotations

import json

import pytest
import torch

from qkv.cli import main
from qkv.compare import EXPERIMENTS, SIZES, run_comparison
from qkv.compare.experiments import path_length, query_batch, scaling
from qkv.compare.sizes import with_changes


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "smoke"
    assert main(["compare", "--sizes", "smoke", "--out", str(out)]) == 0
    return out


def test_smoke_run_writes_report_plots_and_results(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert set(EXPERIMENTS) <= set(results)
    pngs = sorted(p.name for p in smoke.glob("*.png"))
    assert len(pngs) == 8
    for png in pngs:
        assert (smoke / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (smoke / "report.md").read_text()
    for heading in (
        "a. Parallelism",
        "b. Path length",
        "c. Long-range",
        "d. Why divide",
        "e. Query batch",
        "f. Multi-head",
        "g. Translation",
    ):
        assert heading in report
    for png in pngs:
        assert f"({png})" in report  # every plot is shown
    runs = results["translation"]["runs"]
    assert {r["summary"]["parameters"] > 0 for r in runs.values()} == {True}
    assert set(runs) == {"transformer", "rnn", "cnn"}
    # the per-family runs are ordinary run directories
    assert main(["info", str(smoke / "runs" / "translation-rnn")]) == 0


def test_the_families_at_equal_training_time(tmp_path):
    out = tmp_path / "c"
    assert (
        main(
            ["compare", "--sizes", "smoke", "--only", "translation", "--minutes", "0.00001", "--device", "cpu"]
            + ["--out", str(out)]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    r = results["translation"]
    assert r["minutes"] == 0.00001 and set(r["runs"]) == {"transformer", "rnn", "cnn"}
    assert results["device"] == "cpu"
    for family, run in r["runs"].items():
        config = json.loads((out / "runs" / f"translation-{family}" / "config.json").read_text())
        assert config["train"]["max_minutes"] == 0.00001
        assert config["train"]["device"] == "cpu"  # --device reaches every training run
        assert run["summary"]["step"] == 1  # the clock ended it: any step takes longer than 0.6 ms
        assert run["curve"]["step"] == [1] and run["curve"]["elapsed_s"][0] > 0
        assert 0 <= run["beam"]["exact_match"] <= 1  # the test split again, with the beam
    report = (out / "report.md").read_text()
    assert "1e-05 training minutes each" in report and "BLEU (beam 2)" in report
    assert "; device cpu. Total" in report


def _fake_multi30k(root):
    """A directory laid out like Multi30k's (train, val, test_2016_flickr; .de and .en), a few pairs each."""
    words = ["ein", "hund", "eine", "katze", "läuft", "schläft", "im", "park", "haus", "rot"]
    english = ["a", "dog", "a", "cat", "runs", "sleeps", "in", "park", "house", "red"]
    for split, n in (("train", 40), ("val", 8), ("test_2016_flickr", 8)):
        rows = [[(i * 7 + j * 3) % len(words) for j in range(3 + i % 4)] for i in range(n)]
        (root / f"{split}.de").write_text("".join(" ".join(words[w] for w in r) + "\n" for r in rows))
        (root / f"{split}.en").write_text("".join(" ".join(english[w] for w in r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("minutes", [None, 0.00001])
def test_multi30k_uses_the_half_hour_recipe_at_equal_time(tmp_path, minutes):
    # at the same steps the `multi30k` recipe; at the same minutes the recipe selected for a time budget
    from qkv.recipes import recipe

    cfg = with_changes(SIZES["smoke"], translation_steps=1, translation_beam=1, run_overrides=("d_model=32",))
    r = run_comparison(
        tmp_path / "c", cfg, multi30k=_fake_multi30k(tmp_path), only=("translation",), minutes=minutes, log=print
    )["translation"]
    preset = cfg.translation_preset if minutes is None else cfg.translation_timed_preset
    assert r["task"] == preset and set(r["runs"]) == {"transformer", "rnn", "cnn"}
    for family in r["runs"]:
        config = json.loads((tmp_path / "c" / "runs" / f"translation-{family}" / "config.json").read_text())
        assert config["family"] == family
        assert config["train"]["max_tokens"] == recipe(preset).train.max_tokens
    assert recipe(cfg.translation_preset).train.max_tokens != recipe(cfg.translation_timed_preset).train.max_tokens


def test_path_lengths_are_measured_exactly():
    cfg = with_changes(SIZES["smoke"], path_lengths=(5, 9), kernels=(3, 5))
    rows = path_length(cfg)["rows"]
    assert len(rows) == 8
    for row in rows:
        assert row["layers"] == row["expected"], row
    by = {(r["family"], r["n"], r["kernel"]): r["layers"] for r in rows}
    assert by[("cnn", 9, 3)] == 8 and by[("cnn", 9, 5)] == 4 and by[("transformer", 9, None)] == 1


def test_query_batch_and_loop_agree():
    r = query_batch(with_changes(SIZES["smoke"], lengths=(4, 16)))
    assert r["max_abs_diff"] < 1e-5
    assert len(r["ratio"]) == 2


def test_unscaled_softmax_saturates_as_d_k_grows(tmp_path):
    cfg = with_changes(SIZES["smoke"], d_ks=(16, 1024), init_rows=256, init_keys=32)
    r = scaling(cfg, tmp_path, log=lambda _m: None)["at_init"]
    # scaled: entropy roughly constant in d_k; unscaled: collapses, rows saturate, gradient vanishes
    assert abs(r["scaled"]["entropy"][0] - r["scaled"]["entropy"][1]) < 0.1
    assert r["dot"]["entropy"][1] < 0.5 * r["scaled"]["entropy"][1]
    assert r["dot"]["saturated"][1] > 0.5 > r["scaled"]["saturated"][1]
    assert r["dot"]["grad_norm"][1] < 0.5 * r["scaled"]["grad_norm"][1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--only", "nonsense"], "unknown experiment"),
        (["--multi30k", "/nonexistent"], "lacks train.de"),
        (["--minutes", "0"], "a number > 0"),
        (["--minutes", "5", "--only", "query_batch"], "--minutes is for the translation experiment"),
        (["--multi30k", "/nonexistent", "--only", "heads"], "--multi30k is for the translation experiment"),
        (["--device", "tpu"], "--device 'tpu': choose auto, cpu"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, needle):
    assert main(["compare", "--sizes", "smoke", "--out", str(tmp_path / "x"), *args]) != 0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", "--sizes", "smoke", "--only", "query_batch", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "sees no CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_comparison_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "c"
    run_comparison(out, "smoke", only=("query_batch",), log=lambda _m: None)
    before = (out / "results.json").read_bytes()
    assert main(["compare", "--sizes", "smoke", "--only", "query_batch", "--out", str(out)]) != 0
    assert "already holds a comparison" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("family", ["transformer", "rnn", "cnn"])
def test_pushed_tangent_is_the_directional_derivative(family):
    """push_tangent gives J·t: compared with a central difference in float64."""
    from qkv.compare.experiments import push_tangent
    from qkv.compare.probes import probe_layer

    torch.manual_seed(0)
    layer = probe_layer(family, 8, heads=1, kernel=3).double()
    x, t = torch.randn(1, 6, 8, dtype=torch.float64), torch.randn(1, 6, 8, dtype=torch.float64)
    y, jt = push_tangent(layer, x, t)
    eps = 1e-6
    with torch.no_grad():
        fd = (layer(x + eps * t) - layer(x - eps * t)) / (2 * eps)
        torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(jt, fd, atol=1e-7, rtol=1e-6)
