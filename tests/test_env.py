"""`qkv env`: what the machine offers, read from the CPU's own description."""

from __future__ import annotations

import json

from qkv.cli import main
from qkv.env import CPU_FEATURES, cpu_info, environment, format_environment


def test_cpu_model_and_features_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
    )
    model, features = cpu_info(info)
    assert model == "Intel(R) Xeon(R) Platinum 8481C"
    assert features == ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    assert cpu_info(tmp_path / "missing")[1] == []


def test_env_text_and_json(capsys):
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env == json.loads(json.dumps(environment()))  # the same facts the API reports
    assert set(env["cpu"]["features"]) <= set(CPU_FEATURES) and env["cpu"]["torch_threads"] >= 1
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert text.strip() == format_environment(env) and "torch" in text and "CPU features" in text


def test_version(capsys):
    import pytest

    import qkv

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qkv {qkv.__version__}"
