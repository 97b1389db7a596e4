"""The local attention explorer: ``qkv serve RUN`` — a web page to type a sentence and see the model's
output and every attention map (Starlette + uvicorn; the page ships in ``qkv/viz/static``).

Safety: binds 127.0.0.1 by default; answers only requests whose Host header names the bound host
(a DNS-rebinding page cannot reach it); caps the request body and the input length with a 4xx JSON
error; serves only its own fixed files — no path or URL from a request is ever opened.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from qkv.errors import QkvError

__all__ = ["create_app", "page_info", "serve", "standalone_page"]

MAX_BODY = 64 * 1024  # bytes
MAX_CHARS = 5000  # characters of input text (a 512-token input; the model's own length limit applies too)
STATIC = {  # the only files ever served: name -> media type
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def allowed_hosts(host: str) -> set[str]:
    """Host header names accepted for a server bound to ``host`` (loopback binds accept each
    loopback name)."""
    names = {host.lower().strip("[]")}
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            names |= {"127.0.0.1", "localhost", "::1"}
    except ValueError:
        if host == "localhost":
            names |= {"127.0.0.1", "::1"}
    return names


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardMiddleware:
    """Rejects a wrong Host header (421) and bodies over ``max_body`` bytes (413), as JSON."""

    def __init__(self, app: ASGIApp, hosts: set[str], max_body: int) -> None:
        self.app, self.hosts, self.max_body = app, hosts, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if _host_name(headers.get("host", "")) not in self.hosts:
            await _error(421, "wrong Host header: this server only answers for its own address")(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send)
            return
        # Read the whole body first, up to the cap, so that the app never sees an oversized request.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def page_info(run: Any, *, max_chars: int = MAX_CHARS, example: str | None = None) -> dict[str, Any]:
    """What the page shows about the run before any input: family, name, task, the input limit and the
    example it opens with (``example``, else the run's first held-out sentence, else none)."""
    example = example if example is not None else run.example()
    return {
        "family": run.config.family,
        "translation": run.config.spec.translation,
        "run": run.path.name,
        "task": run.config.task.name,
        "max_chars": max_chars,
        "example": example[:max_chars] if example else None,
    }


def create_app(
    run: Any,
    *,
    host: str = "127.0.0.1",
    max_body: int = MAX_BODY,
    max_chars: int = MAX_CHARS,
    example: str | None = None,
) -> ASGIApp:
    """The explorer's ASGI app for a loaded run (``example``: the text the page opens with)."""
    static = resources.files("qkv.viz") / "static"

    def page(name: str):
        async def handler(request: Request) -> Response:
            return Response((static / name).read_bytes(), media_type=STATIC[name])

        return handler

    translation = run.config.spec.translation
    about = page_info(run, max_chars=max_chars, example=example)

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(about)

    async def attention(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep JSON
            return _error(400, 'the body must be JSON: {"text": "..."}')
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return _error(400, 'the body must be JSON: {"text": "..."}')
        text = body["text"].strip()
        beam = body.get("beam", 1)
        if not text:
            return _error(422, "type a sentence first")
        if len(text) > max_chars:
            return _error(413, f"input of {len(text)} characters is over the limit of {max_chars}")
        if type(beam) is not int or not 1 <= beam <= 8:  # (true is not a beam width)
            return _error(422, "beam must be a whole number from 1 to 8")
        try:
            maps = run.attention(text, beam=beam) if translation else run.attention(text)
        except QkvError as e:
            return _error(422, str(e))
        return JSONResponse(maps.to_page())

    routes = [
        Route("/", page("index.html")),
        Route("/static/app.js", page("app.js")),
        Route("/static/style.css", page("style.css")),
        Route("/api/info", info),
        Route("/api/attention", attention, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    return GuardMiddleware(app, allowed_hosts(host), max_body)


def standalone_page(run: Any, maps: Any, *, start: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page of ``maps`` (style, script and data inline; it fetches nothing): the
    explorer's views of one input, to keep or send; ``start`` = {kind, layer, head} it opens at."""
    static = resources.files("qkv.viz") / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    data = {"info": page_info(run, example=maps.source), "data": maps.to_page(), "start": start or {}}
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # no "</script>" or "<!--" inside
    css = (static / "style.css").read_text(encoding="utf-8")
    js = (static / "app.js").read_text(encoding="utf-8")  # holds no "</script" (tested)
    html = html.replace('<link rel="stylesheet" href="/static/style.css">', f"<style>\n{css}</style>")
    return html.replace(
        '<script src="/static/app.js"></script>',
        f"<script>window.QKV_PAGE = {payload};</script>\n<script>\n{js}</script>",
    )


def serve(run: Any, host: str = "127.0.0.1", port: int = 8000, *, example: str | None = None) -> None:
    """Serve the explorer for a loaded run until Ctrl-C (``example``: the text the page opens with)."""
    import uvicorn

    if not 0 < port < 65536:
        raise QkvError(f"--port {port} is not a port number: choose one from 1 to 65535")
    sock = _bound_socket(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"qkv: warning: serving on {host} makes the explorer reachable from other machines")
    print(f"qkv: attention explorer for {run.path} at http://{host}:{port}/  (Ctrl-C to stop)")
    config = uvicorn.Config(create_app(run, host=host, example=example), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def _bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (a port in use, a host not of this
    machine) — before anything is announced, rather than uvicorn's own error after it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise QkvError(f"cannot serve on {host}: {e.strerror or e}; give --host an address of this machine") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        busy = e.errno == errno.EADDRINUSE
        fix = "choose another --port, or stop what uses it" if busy else "give --host an address of this machine"
        raise QkvError(f"cannot serve on {host}:{port}: {e.strerror or e}; {fix}") from None
    return sock
