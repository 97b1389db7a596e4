"""Make the README's images from a trained run: an example heatmap and a screenshot of the explorer.

    python docs/make_images.py RUN [--text "the fourth of july nineteen eighty seven"]

Writes docs/heatmap.png (``qkv attention``) and docs/explorer.png (the explorer in headless Chromium,
driven by Playwright; needs ``apt-get install chromium`` and ``pip install playwright``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import qkv
from qkv.viz import save_attention
from qkv.viz.server import create_app

DOCS = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]


def screenshot(run, text: str, out: Path) -> None:
    """Serve the explorer, type ``text``, show cross-attention of the last layer, screenshot it."""
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
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#text", text)
            page.click("#run")
            page.wait_for_selector("#result:not([hidden])")
            page.select_option("#kind", "cross")
            page.select_option("#layer", str(run.config.model.decoder_layers - 1))
            page.select_option("#head", "mean")
            page.fill("#step", "2")  # the third decoder step: the model writes the year's third digit
            page.dispatch_event("#step", "input")
            page.hover("#lines text >> nth=2")
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.should_exit = True


def main() -> None:
    """Write docs/heatmap.png and docs/explorer.png."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--text", default="the fourth of july nineteen eighty seven")
    a = p.parse_args()
    run = qkv.load(a.run)
    maps = run.attention(a.text)
    save_attention(maps, DOCS / "heatmap.png", kind="cross", layer=run.config.model.decoder_layers - 1, head="all")
    screenshot(run, a.text, DOCS / "explorer.png")
    print(f"wrote {DOCS / 'heatmap.png'} and {DOCS / 'explorer.png'}")


if __name__ == "__main__":
    main()
