"""The explorer's server: pages, the attention API, and its safety rules."""

from __future__ import annotations

import base64
import builtins
import json
import pathlib

import pytest
import torch
from starlette.testclient import TestClient

import qkv
from qkv.viz.server import allowed_hosts, create_app
from qkv.viz.stats import head_stats


@pytest.fixture
def client(tiny_run):
    app = create_app(qkv.load(tiny_run), host="127.0.0.1", max_body=2048, max_chars=100)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_page_and_api(client, tiny_run):
    page = client.get("/")
    assert page.status_code == 200 and "attention explorer" in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    run = qkv.load(tiny_run)
    assert info["family"] == "transformer" and info["example"] == run.example()  # the page opens with it
    assert isinstance(info["example"], str) and info["example"].strip()
    res = client.post("/api/attention", json={"text": "abc"})
    assert res.status_code == 200
    data = res.json()
    assert data["kinds"]["enc"]["queries"] == ["a", "b", "c", "<eos>"]
    maps = run.attention("abc")
    for kind, k in data["kinds"].items():  # every weight, one byte each: within half a step of 1/255
        w = torch.stack([x[0] for x in maps.maps[kind]])
        assert k["shape"] == list(w.shape) and k["shape"][2] == len(k["queries"])
        got = torch.frombuffer(bytearray(base64.b64decode(k["weights_u8"])), dtype=torch.uint8).view(w.shape)
        assert (got.float() / 255 - w).abs().max() <= 0.5 / 255 + 1e-6
    assert data["stats"] == json.loads(json.dumps(head_stats(maps)))


def test_the_baselines_and_language_models_are_served(family_runs):
    for family in ("rnn", "cnn", "gpt", "bert"):
        app = create_app(qkv.load(family_runs[family]), host="127.0.0.1")
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        data = client.post("/api/attention", json={"text": "To be" if family in ("gpt", "bert") else "abc"}).json()
        assert list(data["kinds"]) == (["cross"] if family in ("rnn", "cnn") else ["self", "rollout"])


def test_rejects_foreign_host_headers(client):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        res = client.get("/api/info", headers={"host": host})
        assert res.status_code == 421 and "Host" in res.json()["error"]
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    assert allowed_hosts("0.0.0.0") == {"0.0.0.0"}


def test_caps_body_and_input(client):
    big = json.dumps({"text": "a" * 5000})
    res = client.post("/api/attention", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "over 2048 bytes" in res.json()["error"]

    def chunks():  # no Content-Length: the cap holds while streaming
        for _ in range(10):
            yield b"x" * 1000

    assert client.post("/api/attention", content=chunks()).status_code == 413
    res = client.post("/api/attention", json={"text": "a" * 101})
    assert res.status_code == 413 and "over the limit of 100" in res.json()["error"]
    res = client.post("/api/attention", json={"text": "ABC"})
    assert res.status_code == 422 and "not in this model's vocabulary" in res.json()["error"]
    assert client.post("/api/attention", content=b"{bad").status_code == 400
    assert client.post("/api/attention", json={"text": "  "}).status_code == 422
    assert client.post("/api/attention", json={"text": "abc", "beam": 99}).status_code == 422
    assert client.post("/api/attention", json={"text": "abc", "beam": True}).status_code == 422  # not a width
    res = client.post("/api/attention", content=b'{"text": "a\\ud800b"}')  # valid JSON, not Unicode text
    assert res.status_code == 422 and "error" in res.json()


def test_never_opens_a_path_named_by_a_request(client, monkeypatch):
    opened = []
    real_open, real_read = builtins.open, pathlib.Path.read_bytes

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_read(self):
        opened.append(str(self))
        return real_read(self)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", spy_read)
    for url in ("/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "/static/x.py"):
        assert client.get(url).status_code == 404
    client.post("/api/attention", json={"text": "/etc/passwd"})
    client.post("/api/attention", json={"text": "abc", "file": "/etc/passwd", "url": "http://example.com/"})
    assert not [p for p in opened if "passwd" in p or "example.com" in p]


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_one_line(tiny_run, capsys, port):
    from qkv.cli import main

    assert main(["serve", str(tiny_run), "--port", port]) == 2
    err = capsys.readouterr().err
    assert "is not a port number" in err and len(err.strip().splitlines()) == 1


def test_absurdly_deep_json_is_a_400(client):
    body = '{"text": ' + "[" * 5000 + "]" * 5000 + "}"
    res = client.post("/api/attention", content=body, headers={"content-type": "application/json"})
    assert res.status_code in (400, 413) and "error" in res.json()


def test_the_page_opens_with_the_given_text(tiny_run, monkeypatch):
    from qkv.cli import main
    from qkv.viz import server

    app = create_app(qkv.load(tiny_run), example="cab")
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/info").json()["example"] == "cab"
    seen = {}
    monkeypatch.setattr(server, "serve", lambda run, host, port, *, example: seen.update(example=example, port=port))
    assert main(["serve", str(tiny_run), "--text", "abc", "--port", "8123"]) == 0
    assert seen == {"example": "abc", "port": 8123}


def test_a_port_in_use_or_a_host_not_of_this_machine_is_one_line_before_anything_is_announced():
    """uvicorn announced the explorer, then printed its own error and exited 3; now serve binds first."""
    import socket

    from qkv.errors import QkvError
    from qkv.viz.server import _bound_socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(QkvError, match=f"cannot serve on 127.0.0.1:{port}: .*choose another --port"):
            _bound_socket("127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(QkvError, match="give --host an address of this machine"):
        _bound_socket("nosuchhost.invalid", 8000)
    free = _bound_socket("127.0.0.1", 0)  # a free port: a listening socket for uvicorn
    try:
        assert free.getsockname()[0] == "127.0.0.1"
    finally:
        free.close()
