"""The explorer's server: pages, the attention API, and its safety rules."""

from __future__ import annotations

import builtins
import json
import pathlib

import pytest
from starlette.testclient import TestClient

import qkv
from qkv.viz.server import allowed_hosts, create_app


@pytest.fixture
def client(tiny_run):
    app = create_app(qkv.load(tiny_run), host="127.0.0.1", max_body=2048, max_chars=100)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_page_and_api(client):
    page = client.get("/")
    assert page.status_code == 200 and "attention explorer" in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["heads"] == 2 and info["layers"]["enc"] == 2
    res = client.post("/api/attention", json={"text": "abc"})
    assert res.status_code == 200
    data = res.json()
    assert data["kinds"]["enc"]["queries"] == ["a", "b", "c", "<eos>"]
    assert len(data["kinds"]["cross"]["weights"][0][0]) == data["steps"]


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
