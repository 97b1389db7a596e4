"""The explorer as a person uses it, in real headless Chromium (skipped only where Chromium is absent)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import qkv
from qkv.viz.server import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"
)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run):
    """The explorer of ``run`` on a free local port while the test runs: yields (run, url)."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield run, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def server(tiny_run):
    yield from _serve(qkv.load(tiny_run))


@pytest.fixture
def marian_server(tmp_path):
    """The explorer of a run converted from a (random, local) Marian model."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("transformers")
    from marian_dirs import make_marian_dir

    from qkv.interop import convert_from_hf

    convert_from_hf(make_marian_dir(tmp_path / "marian", "shared-swish"), tmp_path / "run")
    yield from _serve(qkv.load(tmp_path / "run"))


def test_type_see_switch_and_screenshot(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run, url = server
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_function("document.getElementById('run-info').textContent.includes('heads')")
        page.fill("#text", "hello")
        page.click("#run")
        page.wait_for_selector("#result:not([hidden])")
        assert page.inner_text("#output") == run.translate("hello")[0]
        maps = run.attention("hello")
        T, S = len(maps.queries["cross"]), len(maps.keys["cross"])

        def cells() -> int:
            return page.locator("#heatmap td.cell").count()

        page.select_option("#kind", "enc")
        assert cells() == 6 * 6  # h e l l o <eos>
        page.select_option("#kind", "cross")
        assert cells() == T * S
        first = page.get_attribute("#heatmap td.cell >> nth=0", "data-weight")
        page.select_option("#head", "1")
        assert "head 1" in page.inner_text("#caption")
        page.select_option("#layer", "1")
        assert "layer 1" in page.inner_text("#caption") and cells() == T * S
        expected = float(maps.maps["cross"][1][0, 1, 0, 0])
        shown = float(page.get_attribute("#heatmap td.cell >> nth=0", "data-weight"))
        assert abs(shown - expected) < 1e-4 and first is not None
        page.select_option("#head", "mean")
        assert "mean over heads" in page.inner_text("#caption")
        page.fill("#step", "0")
        page.dispatch_event("#step", "input")
        assert page.locator("#heatmap tr.current").count() == 1
        page.hover("#lines text >> nth=0")
        assert page.locator("#lines line.hot").count() >= 1
        shot = tmp_path / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        page.fill("#text", "HELLO")
        page.click("#run")
        page.wait_for_selector("#error:not([hidden])")
        assert "not in this model's vocabulary" in page.inner_text("#error")
        browser.close()
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
    assert requests and all(r.startswith(url) for r in requests), "the page requested something outside the server"


def test_the_explorer_on_an_imported_marian_run(marian_server):
    """A run converted from Marian (SentencePiece pieces, halves positions, logits bias) in the page: its
    translation, and encoder and cross-attention maps of the right sizes."""
    sync_api = pytest.importorskip("playwright.sync_api")
    run, url = marian_server
    text = "Ein Hund läuft im Park."
    maps = run.attention(text)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url)
        page.wait_for_function("document.getElementById('run-info').textContent.includes('heads')")
        page.fill("#text", text)
        page.click("#run")
        page.wait_for_selector("#result:not([hidden])")
        assert page.inner_text("#output") == run.translate(text, beam=1)[0]  # the page decodes greedily
        page.select_option("#kind", "cross")
        cross = len(maps.queries["cross"]) * len(maps.keys["cross"])
        assert page.locator("#heatmap td.cell").count() == cross
        page.select_option("#kind", "enc")
        assert page.locator("#heatmap td.cell").count() == len(maps.keys["enc"]) ** 2
        browser.close()
