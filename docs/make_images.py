"""Make the README's images: an example heatmap and a screenshot of the explorer from a trained run, and the
model view and head table of a converted all-MiniLM-L6-v2 reading a real sentence.

    python docs/make_images.py RUN [--text "the fourth of july nineteen eighty seven"] [--minilm MINILM_RUN]

Writes docs/heatmap.png (``qkv attention``), docs/explorer.png (the explorer in headless Chromium, driven
by Playwright; needs ``apt-get install chromium`` and ``pip install playwright``) and, with ``--minilm``
(a run from ``qkv convert --from-hf`` of sentence-transformers/all-MiniLM-L6-v2), docs/model_view.png and
docs/head_table.png.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import qkv
from qkv.viz import save_attention
from qkv.viz.server import create_app

DOCS = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
MINILM_TEXT = "The cat sat on the mat because it was warm."


@contextlib.contextmanager
def explorer(run, text: str, viewport: dict[str, int]) -> Iterator:
    """A Chromium page of the explorer for ``run`` with ``text`` shown."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
            page = browser.new_page(viewport=viewport)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('run-info').textContent.includes('·')")
            page.wait_for_timeout(500)  # the example the page opens with, if the run has one
            n = page.evaluate("window.qkvRenders")
            page.fill("#text", text)
            page.click("#run")
            page.wait_for_function(f"window.qkvRenders > {n}")
            yield page
            browser.close()
    finally:
        server.should_exit = True


def screenshot(run, text: str, out: Path) -> None:
    """The last layer's mean cross-attention at the third decoder step, with a token hovered."""
    with explorer(run, text, {"width": 1280, "height": 820}) as page:
        page.select_option("#kind", "cross")
        page.select_option("#layer", str(run.config.model.decoder_layers - 1))
        page.select_option("#head", "mean")
        page.fill("#step", "2")  # the third decoder step: the model writes the year's third digit
        page.dispatch_event("#step", "input")
        page.hover("#lines text >> nth=2")
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1280, "height": 820})


def minilm_views(run, text: str) -> None:
    """MiniLM's model view (6 layers × 12 heads) and the top of its head table, sorted by weight on the
    previous token."""
    with explorer(run, text, {"width": 1700, "height": 1000}) as page:
        page.locator("#model-view").screenshot(path=str(DOCS / "model_view.png"))
        page.click("#head-table th[data-key='previous']")
        page.mouse.move(0, 0)  # no row highlighted
        page.evaluate("document.querySelectorAll('#head-table tbody tr').forEach((r, i) => r.hidden = i >= 12)")
        page.locator("#head-table").screenshot(path=str(DOCS / "head_table.png"))


def main() -> None:
    """Write the README's images."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--text", default="the fourth of july nineteen eighty seven")
    p.add_argument("--minilm", help="a converted all-MiniLM-L6-v2 run: also write model_view.png, head_table.png")
    p.add_argument("--minilm-text", default=MINILM_TEXT)
    a = p.parse_args()
    run = qkv.load(a.run)
    maps = run.attention(a.text)
    save_attention(maps, DOCS / "heatmap.png", kind="cross", layer=run.config.model.decoder_layers - 1, head="all")
    screenshot(run, a.text, DOCS / "explorer.png")
    print(f"wrote {DOCS / 'heatmap.png'} and {DOCS / 'explorer.png'}")
    if a.minilm:
        minilm_views(qkv.load(a.minilm), a.minilm_text)
        print(f"wrote {DOCS / 'model_view.png'} and {DOCS / 'head_table.png'}")


if __name__ == "__main__":
    main()
