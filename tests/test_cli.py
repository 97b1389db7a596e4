"""The qkv command end to end: each verb, and one-line errors for bad input that never damage a run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qkv.errors import QkvError


def qkv(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkv", *args], input=stdin, capture_output=True, text=True, timeout=300, cwd=cwd
    )


def assert_user_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("qkv: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in res.stderr


def qkv_bytes(*args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """qkv with raw bytes on stdin (and possibly in argv), its output decoded leniently."""
    res = subprocess.run([sys.executable, "-m", "qkv", *args], input=stdin, capture_output=True, timeout=300)
    out, err = res.stdout.decode(errors="replace"), res.stderr.decode()
    return subprocess.CompletedProcess(res.args, res.returncode, out, err)


def test_input_that_is_not_utf8_is_one_line_and_stdin_splits_at_newlines_alone(tiny_run, tmp_path):
    """Bytes that are not UTF-8 on stdin or in a TEXT argument: one line naming where (they reached a tokenizer
    as surrogates: an internal error). Lines of stdin end at "\\n" (or "\\r\\n") alone, as a file's do: a lone
    "\\r" inside a line does not make it two."""
    run = str(tiny_run)
    assert_user_error(qkv_bytes("translate", run, stdin=b"abc\n\xff\n"), "stdin: line 2 is not valid UTF-8")
    assert_user_error(qkv_bytes("translate", run, b"\xffabc"), "TEXT argument 1 is not valid UTF-8")
    out = str(tmp_path / "m.json")
    assert_user_error(qkv_bytes("attention", run, "-o", out, stdin=b"\xff"), "stdin is not valid UTF-8")
    res = qkv_bytes("translate", run, "--json", stdin=b"abc\rxyz\nabc\r\n")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["source"] for line in res.stdout.splitlines()] == ["abc\rxyz", "abc"]


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_help_has_examples():
    for verb in ("train", "translate", "evaluate", "info"):
        res = qkv(verb, "--help")
        assert res.returncode == 0 and "example" in res.stdout


def test_translate_info_evaluate(tiny_run):
    res = qkv("translate", str(tiny_run), "abc", "hello")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 2
    assert qkv("translate", str(tiny_run), "--beam", "3", stdin="abc\nxyz\n").stdout.count("\n") == 2
    info = json.loads(qkv("info", str(tiny_run)).stdout)
    assert info["parameters"] > 0 and info["config"]["task"]["name"] == "reverse"
    assert info["last_metrics"]["step"] == 120
    ev = json.loads(qkv("evaluate", str(tiny_run)).stdout)
    assert set(ev) >= {"loss", "token_accuracy", "exact_match"}


def test_train_end_to_end_then_resume(tmp_path, tiny_overrides):
    out = tmp_path / "rev"
    over = [o for o in tiny_overrides if not o.startswith("steps=")]
    res = qkv("train", "reverse", *over, "steps=20", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "exact match" in res.stdout and "->" in res.stdout
    res = qkv("train", "--resume", str(out), "steps=30", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["step"] == 30


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "/nonexistent/run"], "does not exist"),
        (["train", "nosuchpreset"], "unknown preset 'nosuchpreset'"),
        (["train", "reverse", "d_model"], "malformed override"),
        (["train", "reverse", "d_model=30", "h=4"], "model.d_model"),
        (["train", "reverse", "dropout=-0.5"], "model.dropout"),
        (["train", "reverse", "stpes=5"], "did you mean 'steps'"),
        (["train", "reverse", "decode.early_stopping=maybe"], "decode.early_stopping='maybe' is not a valid bool"),
        (["train", "--resume", "/nonexistent/run"], "not a qkv run directory"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, needle, tmp_path):
    assert_user_error(qkv(*args, cwd=tmp_path), needle)
    assert not (tmp_path / "runs").exists()


def test_bad_text_input(tiny_run):
    before = snapshot(tiny_run)
    assert_user_error(qkv("translate", str(tiny_run), "aBc"), "not in this model's vocabulary")
    assert_user_error(qkv("translate", str(tiny_run), "a" * 100), "reads at most 63")
    assert_user_error(qkv("translate", str(tiny_run), stdin=""), "nothing to translate")
    assert snapshot(tiny_run) == before


def test_existing_run_is_never_overwritten(tiny_run, tiny_overrides):
    before = snapshot(tiny_run)
    assert_user_error(qkv("train", "reverse", *tiny_overrides, "--out", str(tiny_run)), "already exists")
    assert_user_error(qkv("train", "--resume", str(tiny_run), "d_model=64"), "cannot change when resuming")
    assert snapshot(tiny_run) == before


@pytest.mark.parametrize(
    ("victim", "damage", "needle"),
    [
        ("model.safetensors", b"garbage", "model.safetensors is corrupt"),
        ("config.json", b"{not json", "config.json is corrupt"),
        ("tgt_tokenizer.json", None, "tgt_tokenizer.json is missing"),
        ("model.safetensors", None, "model.safetensors is missing"),
    ],
)
def test_corrupt_or_incomplete_run(tiny_run, tmp_path, victim, damage, needle):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    if damage is None:
        (run / victim).unlink()
    else:
        (run / victim).write_bytes(damage)
    assert_user_error(qkv("translate", str(run), "abc"), needle)


def _corpus(tmp_path: Path, n: int = 120) -> dict[str, Path]:
    words = ["Hund", "Katze", "Mann", "Frau", "Kind"]
    english = {"Hund": "dog", "Katze": "cat", "Mann": "man", "Frau": "woman", "Kind": "child"}
    files = {}
    for split, count in (("train", n), ("valid", 20)):
        de = [f"Ein {words[i % 5]} sieht eine {words[(i * 3) % 5]}." for i in range(count)]
        en = [f"A {english[words[i % 5]]} sees a {english[words[(i * 3) % 5]]}." for i in range(count)]
        for side, lines in (("de", de), ("en", en)):
            p = tmp_path / f"{split}.{side}"
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[f"{split}.{side}"] = p
    return files


def test_parallel_text_train_translate_evaluate(tmp_path):
    f = _corpus(tmp_path)
    out = tmp_path / "mt"
    res = qkv(
        "train",
        "multi30k",
        "--train",
        str(f["train.de"]),
        str(f["train.en"]),
        "--valid",
        str(f["valid.de"]),
        str(f["valid.en"]),
        "--out",
        str(out),
        "--no-progress",
        "d_model=32",
        "h=2",
        "N=1",
        "d_ff=64",
        "steps=6",
        "warmup=2",
        "vocab_size=60",
        "max_tokens=256",
    )
    assert res.returncode == 0, res.stderr
    assert "20 pairs (0 with an empty side" in res.stderr and "BLEU" in res.stdout
    assert (out / "src_tokenizer.json").exists()
    # the closing score is also the run's own decoding (multi30k: beam 5, α 1.0), the one `evaluate` gives
    closing = r"BLEU ([0-9.]+) \(beam 5, alpha 1; greedy [0-9.]+\) on 20 held-out examples \(valid\)"
    score = re.search(closing, res.stdout)
    evaluated = json.loads(qkv("evaluate", str(out), "--split", "valid").stdout)
    assert score and score[1] == f"{evaluated['bleu']:.2f}", res.stdout
    res = qkv("evaluate", str(out), "--src", str(f["valid.de"]), "--ref", str(f["valid.en"]), "--beam", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()  # the scores with their signatures for people; JSON alone on stdout
    assert lines[0].startswith("BLEU") and "nrefs:1|case:mixed|eff:no|tok:13a" in lines[0]
    assert "case:lc" in lines[1] and lines[2].startswith("chrF")
    scored = json.loads(res.stdout)
    assert (scored["n"], scored["beam"], scored["early_stopping"]) == (20, 2, False)
    files = ["--src", str(f["valid.de"]), "--ref", str(f["valid.en"])]
    early = json.loads(qkv("evaluate", str(out), *files, "--beam", "2", "--early-stopping").stdout)
    assert early["early_stopping"] is True
    res = qkv("translate", str(out), "-i", str(f["valid.de"]))
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 20
    short = tmp_path / "short.en"
    short.write_text("A dog.\n")
    assert_user_error(qkv("evaluate", str(out), "--src", str(f["valid.de"]), "--ref", str(short)), "aligned")
    assert_user_error(qkv("evaluate", str(out), "--src", str(f["valid.de"])), "both --src FILE and --ref FILE")


def test_parallel_text_errors(tmp_path):
    f = _corpus(tmp_path)
    short = tmp_path / "short.en"
    short.write_text("A dog.\n")
    args = ["train", "multi30k", "--valid", str(f["valid.de"]), str(f["valid.en"])]
    assert_user_error(qkv(*args, "--train", str(f["train.de"]), str(short), cwd=tmp_path), "different line counts")
    assert_user_error(qkv(*args, "--train", str(f["train.de"]), "nope.en", cwd=tmp_path), "no such file")
    assert_user_error(qkv("train", "multi30k", cwd=tmp_path), "task.train_src is not set")


def _data_flags(tmp_path: Path) -> dict[str, list[str]]:
    """Every kind of data flag, on tiny files: two files, one TSV, one gzip JSON Lines, a store, text."""
    import gzip

    from qkv.data.store import prepare_store

    f = _corpus(tmp_path, n=40)
    pairs = list(zip(f["train.de"].read_text().splitlines(), f["train.en"].read_text().splitlines(), strict=True))
    tsv, jsonl = tmp_path / "pairs.tsv", tmp_path / "pairs.jsonl.gz"
    tsv.write_text("".join(f"{x}\t{y}\n" for x, y in pairs), encoding="utf-8")
    jsonl.write_bytes(gzip.compress("".join(json.dumps({"src": x, "tgt": y}) + "\n" for x, y in pairs).encode()))
    splits = {s: (str(f[f"{s}.de"]), str(f[f"{s}.en"])) for s in ("train", "valid")}
    store = prepare_store(tmp_path / "store", splits, vocab_size=60)
    return {
        "files": ["--train", str(f["train.de"]), str(f["train.en"]), "--valid", str(f["valid.de"]), str(f["valid.en"])],
        "tsv": ["--train", str(tsv), "--valid", str(tsv)],
        "jsonl.gz": ["--train", str(jsonl), "--valid", str(f["valid.de"]), str(f["valid.en"]), "--test", str(jsonl)],
        "store": ["--data", str(store.path)],
        "text": ["--text", str(f["train.en"]), "--valid-text", str(f["valid.en"])],
    }


def test_every_preset_reads_the_data_flags_it_fits_and_refuses_the_others(tmp_path, capsys):
    from qkv.cli import main
    from qkv.train import RECIPES

    flags = _data_flags(tmp_path)
    for preset, recipe in RECIPES.items():
        for kind, argv in flags.items():
            code = main(["train", preset, *argv, "d_model=64", "--print-config"])
            out, err = capsys.readouterr()
            fits = recipe.spec.translation == (kind != "text")
            assert code == (0 if fits else 2), (preset, kind, err)
            if not fits:
                assert err.startswith("qkv: error: --") and err.count("\n") == 1, (preset, kind, err)
                continue
            cfg = json.loads(out)
            task, given = cfg["task"], [a for a in argv if not a.startswith("--")]
            assert cfg["model"]["d_model"] == 64, (preset, kind)
            if kind == "text":
                assert [task["path"], task["valid_path"]] == given
                continue
            assert task["name"] == "parallel"
            stored = [task[k] for k in ("train_src", "train_tgt", "valid_src", "valid_tgt", "test_src", "test_tgt")]
            assert [x for x in stored if x] == given or [task["data"]] == given, (preset, kind, task)
            assert task["max_len"] + 2 <= cfg["model"]["max_len"]


def test_the_bare_form_picks_a_preset_from_the_data_and_overrides_may_follow_files(tmp_path, capsys):
    from qkv.cli import main

    flags = _data_flags(tmp_path)
    for kind, family in (("tsv", "transformer"), ("store", "transformer"), ("text", "gpt")):
        assert main(["train", *flags[kind], "steps=7", "--print-config"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["family"] == family and cfg["train"]["steps"] == 7
    tsv = flags["tsv"][1]
    assert main(["train", "--train", tsv, "multi30k", "steps=5", "--valid", tsv, "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["train"]["steps"], cfg["task"]["train_src"], cfg["task"]["vocab_size"]) == (5, tsv, 8000)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["dates", "task.vocab_size=100"], "task.vocab_size does nothing for the dates task"),
        (["reverse", "--train", "{tsv}", "task.min_len=3"], "task.min_len does nothing for the parallel task"),
        (["multi30k", "--train", "{tsv}", "task.name=copy"], "task.name=copy asks for another task"),
        (["shakespeare-char", "--text", "{text}", "task.vocab_size=99"], "task.vocab_size does nothing"),
        (["multi30k", "--train", "{tsv}", "--data", "{store}"], "not both"),
        (["multi30k", "--train", "{tsv}", "{tsv}", "{tsv}"], "--train takes SRC TGT (two files) or one"),
        (["multi30k", "--data", "{tsv}"], "--data takes the directory"),
        (["multi30k", "--data", "{store}", "vocab_size=99"], "task.vocab_size does nothing for the parallel task"),
        (["multi30k", "--data", "{dir}"], "not a qkv token store"),
    ],
)
def test_data_a_preset_cannot_read_is_one_line(tmp_path, argv, needle):
    flags = _data_flags(tmp_path)
    where = {"tsv": flags["tsv"][1], "store": flags["store"][1], "text": flags["text"][1], "dir": str(tmp_path)}
    argv = [a.format(**where) for a in argv]
    assert_user_error(qkv("train", *argv, "--out", str(tmp_path / "r"), "--no-progress"), needle)
    assert not (tmp_path / "r").exists()


def test_the_reported_commands_train_on_the_given_files_or_refuse(tmp_path):
    """The issue's three commands: a preset with files, the bare form with an override, a missing file."""
    f = _corpus(tmp_path, n=40)
    data = ["--train", str(f["train.de"]), str(f["train.en"]), "--valid", str(f["valid.de"]), str(f["valid.en"])]
    tiny = ["d_model=32", "h=2", "N=1", "d_ff=64", "steps=2", "vocab_size=60", "max_tokens=256", "--no-progress"]
    for argv in (["base", *data, *tiny], [*data, *tiny]):
        out = tmp_path / f"run{len(argv)}"
        res = qkv("train", *argv, "--out", str(out))
        assert res.returncode == 0, res.stderr
        manifest = json.loads((out / "data" / "manifest.json").read_text())
        assert manifest["splits"]["train"]["from"] == [str(f["train.de"]), str(f["train.en"])]
        assert "BLEU" in res.stdout and "40 pairs used" in res.stderr
    missing = ["--train", str(tmp_path / "nope.de"), str(f["train.en"]), *data[3:], "steps=1"]
    assert_user_error(qkv("train", *missing, "--out", str(tmp_path / "z")), "nope.de: no such file")
    assert not (tmp_path / "z").exists()


def test_prepare_then_train_from_the_store_and_resume(tmp_path):
    f = _corpus(tmp_path, n=40)
    data = tmp_path / "store"
    res = qkv("prepare", "--train", str(f["train.de"]), str(f["train.en"]), "--valid", str(f["valid.de"]),
              str(f["valid.en"]), "--vocab-size", "60", "--out", str(data))  # fmt: skip
    assert res.returncode == 0 and "train 40 pairs" in res.stdout, res.stderr
    again = qkv("prepare", "--train", str(f["train.de"]), str(f["train.en"]), "--valid", str(f["valid.de"]),
                str(f["valid.en"]), "--out", str(data))  # fmt: skip
    assert_user_error(again, "already exists and is not empty")
    tiny = ["d_model=32", "h=2", "N=1", "d_ff=64", "max_tokens=256", "--no-progress"]
    out = tmp_path / "r"
    res = qkv("train", "multi30k", "--data", str(data), *tiny, "steps=3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert not (out / "data").exists()  # the store is read where it is
    size = json.loads((data / "manifest.json").read_text())["vocab_size"]["src"]
    # the store's BPE is not the size the preset learns from files: said, not silently taken
    assert f"has a vocabulary of {size:,} symbols, the recipe's task.vocab_size is 8,000" in res.stderr
    assert (
        json.loads((out / "trainer_state.json").read_text())["data"]["store"]
        == json.loads((data / "manifest.json").read_text())["sha256"]
    )
    res = qkv("train", "--resume", str(out), "steps=5", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert_user_error(qkv("train", "--resume", str(out), "--data", str(data)), "drop --data")


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, capsys, monkeypatch):
    from qkv.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"model": {"d_model": 96, "h": 4}, "train": {"steps": 9}}))
    argv = ["train", "reverse", "--config", "c.json", "d_model=64", "--print-config", "warmup=3"]
    assert main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["family"] == "transformer" and cfg["task"]["name"] == "reverse"
    assert (cfg["model"]["d_model"], cfg["model"]["h"], cfg["train"]["steps"], cfg["train"]["warmup"]) == (64, 4, 9, 3)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.json"]  # no run directory


def test_print_config_of_a_resume_changes_nothing(tiny_run, capsys):
    from qkv.cli import main

    before = snapshot(tiny_run)
    assert main(["train", "--resume", str(tiny_run), "steps=500", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 500
    assert snapshot(tiny_run) == before


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("dmodel=5", "did you mean 'd_model' (model.d_model)?"),
        ("train.d_model=5", "unknown train field 'd_model': did you mean 'd_model' (model.d_model)?"),
        ("warmpu=5", "did you mean 'warmup' (train.warmup)?"),
    ],
)
def test_a_misspelt_field_is_found_in_any_section(tmp_path, override, needle):
    assert_user_error(qkv("train", "reverse", override, "--out", str(tmp_path / "r")), needle)
    assert not (tmp_path / "r").exists()


def test_options_before_or_after_the_texts(tiny_run, capsys):
    from qkv.cli import main

    outputs = []
    for argv in (
        ["translate", str(tiny_run), "abc", "cab", "--beam", "3"],
        ["translate", str(tiny_run), "--beam", "3", "abc", "cab"],
        ["translate", "--beam", "3", str(tiny_run), "abc", "cab"],
    ):
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].count("\n") == 2


def test_json_lines_on_stdout_messages_on_stderr(tiny_run, tmp_path):
    res = qkv("translate", str(tiny_run), "abc", "ba", "--json")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in rows] == ["abc", "ba"] and all(isinstance(r["translation"], str) for r in rows)
    plain = qkv("translate", str(tiny_run), "abc", "ba").stdout.splitlines()
    assert [r["translation"] for r in rows] == plain
    res = qkv("attention", str(tiny_run), "-o", str(tmp_path / "m.json"), stdin="abc\n")  # the text from stdin
    assert res.returncode == 0 and res.stdout == "" and "wrote" in res.stderr
    assert json.loads((tmp_path / "m.json").read_text())["source"] == "abc"
    res = qkv("attention", str(tiny_run), "abc", "-o", str(tmp_path / "e.json"), "--kind", "enc", "--layer", "1")
    kinds = json.loads((tmp_path / "e.json").read_text())["kinds"]  # the file holds what the flags chose
    assert res.returncode == 0 and list(kinds) == ["enc"] and kinds["enc"]["layers"] == [1]
    res = qkv("attention", str(tiny_run), "abc", "--stats")  # head statistics: JSON on stdout
    heads = json.loads(res.stdout)["heads"]
    assert res.returncode == 0 and {r["kind"] for r in heads} == {"enc", "dec", "cross"}
    assert len(heads) == 3 * 2 * 2 and all(r["distance"] is None for r in heads if r["kind"] == "cross")
    chosen = json.loads(qkv("attention", str(tiny_run), "abc", "--stats", "--kind", "enc", "--layer", "1").stdout)
    assert [(r["kind"], r["layer"], r["head"]) for r in chosen["heads"]] == [("enc", 1, 0), ("enc", 1, 1)]
    one_head = json.loads(qkv("attention", str(tiny_run), "abc", "--stats", "--head", "1").stdout)["heads"]
    assert len(one_head) == 3 * 2 and {r["head"] for r in one_head} == {1}


def _edited_run(tiny_run: Path, tmp_path: Path, section: str, field: str, value) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg[section][field] = value
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize(
    ("section", "field", "value", "needle"),
    [
        ("model", "src_vocab_size", 99, "does not match the model in config.json"),
        ("model", "N", 2.0, "invalid model.N=2.0: must be a whole number"),
        ("model", "N", True, "invalid model.N=True: must be a whole number"),
        ("model", "norm_first", 0, "must be true or false"),
        ("train", "betas", "fast", "must be"),
    ],
)
def test_a_damaged_config_is_one_line(tiny_run, tmp_path, capsys, section, field, value, needle):
    from qkv.cli import main

    run = _edited_run(tiny_run, tmp_path, section, field, value)
    before = snapshot(run)
    verbs = [["translate", str(run), "abc"], ["info", str(run)]]
    if field != "src_vocab_size":  # resuming takes the vocabulary sizes from the run's tokenizers
        verbs.append(["train", "--resume", str(run)])
    for argv in verbs:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_more_bad_inputs_are_one_line(tiny_run, tmp_path, capsys):
    from qkv.cli import main

    (tmp_path / "a-file").write_text("in the way of a directory\n")  # (--out below it was an internal error)

    cases = [
        (
            ["attention", str(tiny_run), "abc", "-o", str(tmp_path / "no" / "dir" / "a.png")],
            "does not exist; create it",
        ),
        (["attention", str(tiny_run), "abc", "--format", "json", "-o", str(tmp_path)], "it is a directory"),
        (["translate", str(tiny_run), "abc", "-o", str(tmp_path)], "it is a directory"),  # (was an internal error)
        (["train", "reverse", "--out", str(tmp_path / "a-file" / "run")], "cannot create the directory"),
        (["export", str(tiny_run), "--out", str(tmp_path / "a-file" / "hf")], "cannot create the directory"),
        (["attention", str(tiny_run), "abc"], "nothing to write: give -o FILE"),
        (["attention", str(tiny_run), "abc", "--stats", "--format", "html"], "--format html needs -o FILE"),
        (["attention", str(tiny_run), "abc", "--stats", "--kind", "self"], "no 'self' attention"),
        (["attention", str(tiny_run), "abc", "--stats", "--head", "mean"], "--stats describes single heads"),
        (["attention", str(tiny_run), "abc", "--stats", "--head", "9"], "head 9 does not exist"),
        (["attention", str(tiny_run), "abc", "--stats", "--head", "x"], "--head must be a head number"),
        (["translate", str(tiny_run), "abc", "--beam", "100000"], "beam width must be from 1 to 64"),
        # an error about the options, not about a line, names no line (it read "line 1: …")
        (["translate", str(tiny_run), "abc", "--beam", "2", "--alpha", "nan"], "qkv: error: length penalty alpha"),
        (["translate", str(tiny_run), "abc", "--batch-size", "0"], "batch size must be >= 1"),
        (["train", "reverse", "save_every=-1", "--print-config"], "invalid train.save_every=-1"),
        (["train", "reverse", "keep_last=-2", "--print-config"], "invalid train.keep_last=-2"),
        (["train", "reverse", "save_minutes=-1", "--print-config"], "invalid train.save_minutes=-1"),
        (["translate", str(tiny_run), "Z" * 100_000], "not in this model's vocabulary"),
        (["train", "reverse", "d_model=" + "9x" * 50_000], "is not a valid int"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and len(err) < 600, err[:300]


def test_an_unexpected_failure_is_one_line_unless_debugging(tiny_run, capsys, monkeypatch):
    from qkv import cli

    def broken(_args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "info", (broken, cli._run_argument, "info"))
    assert cli.main(["info", str(tiny_run)]) == 1
    err = capsys.readouterr().err
    assert err == "qkv: internal error: RuntimeError: boom — run with QKV_DEBUG=1 for the traceback\n"
    monkeypatch.setenv("QKV_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["info", str(tiny_run)])


def test_translating_a_stream_keeps_lines_aligned_and_names_a_bad_line(tiny_run):
    import qkv as qkv_api

    run = qkv_api.load(tiny_run)
    lines = ["abc", "", "ba", "  ", "cab", "a"]
    got = list(run.translate_lines(lines, chunk=2, batch_size=2, beam=2))
    want = iter(run.translate(["abc", "ba", "cab", "a"], beam=2))
    assert got == [next(want) if t.strip() else "" for t in lines]
    with pytest.raises(QkvError, match=r"^line 5: symbol 'Q'"):
        list(run.translate_lines(["abc", "b", "c", "", "aQ", "c"], chunk=2))


def test_translate_a_file_to_a_file(tiny_run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("abc\n\nba\nc\n")
    out = tmp_path / "out.txt"
    res = qkv("translate", str(tiny_run), "-i", str(src), "-o", str(out), "--batch-size", "2")
    assert res.returncode == 0 and res.stdout == ""
    assert out.read_text().split("\n") == [*qkv("translate", str(tiny_run), "abc", "", "ba", "c").stdout.split("\n")]
    assert out.read_text().split("\n")[1] == ""  # the empty line stays in place
    src.write_text("abc\nba\nQ\n")
    assert_user_error(qkv("translate", str(tiny_run), "-i", str(src), "-o", str(tmp_path / "bad.txt")), "line 3:")
    assert not list(tmp_path.glob("bad.txt*"))  # no partial output left behind
    assert_user_error(qkv("translate", str(tiny_run), "abc", "-o", str(tmp_path / "no" / "o.txt")), "does not exist")


def test_train_json_reports_a_finished_or_stopped_run(tmp_path, tiny_overrides, capsys):
    from qkv.cli import main

    over = [o for o in tiny_overrides if not o.startswith(("steps=", "eval_every="))] + ["steps=6", "eval_every=3"]
    assert main(["train", "reverse", *over, "--out", str(tmp_path / "r"), "--until-step", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"step": 3, "stopped": True}
    assert main(["train", "--resume", str(tmp_path / "r"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 6 and summary == json.loads((tmp_path / "r" / "summary.json").read_text())


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tokenizer", "{run}", "--vocab-size", "8000"], "--tokenizer RUN brings its own vocabulary"),
        (["--fields", "src"], "--fields 'src': give two field names"),
        (["--fields", "de,en"], "fields de,en name JSON Lines fields, but"),  # the files are two aligned ones
        (["--vocab-size", "3"], "--vocab-size 3: must be >= 16"),
        (["--tokenizer", "{lm}"], "is a gpt run; give a translation run"),
    ],
)
def test_prepare_errors_are_one_line_and_write_nothing(tmp_path, tiny_run, capsys, extra, needle):
    from qkv.cli import main

    f = _corpus(tmp_path, n=10)
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"family": "gpt", "model": {}, "train": {}, "task": {}}))
    files = ["--train", str(f["train.de"]), str(f["train.en"]), "--valid", str(f["valid.de"]), str(f["valid.en"])]
    argv = ["prepare", *files, *[e.format(run=tiny_run, lm=lm) for e in extra], "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["dates", "log_every=-1"], "invalid train.log_every=-1"),
        (["dates", "decode.beam=0"], "invalid decode.beam=0"),
        (["dates", "decode.max_len_a=-1"], "invalid decode.max_len_a=-1.0"),
        (["shakespeare-char", "decode.beam=4"], "decode.beam does nothing for a gpt run"),
        (["dates", "precision=half"], "invalid train.precision='half': choose fp32, bf16, fp16, auto"),
        (["dates", "device=gpu"], "invalid train.device='gpu'"),
        (["dates", "decode.penalty=hf"], "invalid decode.penalty='hf': choose gnmt or transformers"),
        (["dates", "model.activation=tanh"], "invalid model.activation='tanh'"),
        (["dates", "model.position_layout=rows"], "invalid model.position_layout='rows'"),
        (["multi30k", "--init", "/nonexistent/run"], "/nonexistent/run is not a qkv run directory"),
    ],
)
def test_log_and_decode_fields_are_checked(capsys, argv, needle):
    from qkv.cli import main

    assert main(["train", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and needle in err, err


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch, tiny_overrides):
    from qkv.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["train", "reverse", *tiny_overrides, "--tensorboard", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: train.tensorboard needs the tensorboard package") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_attention_beam_on_a_language_model_is_one_line(family_runs, capsys):
    from qkv.cli import main

    assert main(["attention", str(family_runs["gpt"]), "To be", "--stats", "--beam", "3"]) == 2
    err = capsys.readouterr().err
    assert "--beam decodes a translation" in err and len(err.strip().splitlines()) == 1
    assert main(["attention", str(family_runs["gpt"]), "To be", "--stats"]) == 0
