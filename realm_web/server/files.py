"""The demo page, the JS SDK, the web bundle and GGUF model files over HTTP (an ASGI app under /).

    /                     site/index.html; /app.js, /style.css, ... the files of site/
    /js/...               js/src/ (the SDK; /js/index.js is its entry module)
    /runtime/...          build/web/ (manifest.json, pyodide/, wheels/: made by scripts/build_web.py)
    /models/registry.json a registry record (realm_web.registry) for each served model
    /models/NAME          the bundled model and every --model file, by file name

Files come from the source checkout this package lives in (realm_web/..), so the page needs a checkout with the
bundle built (./scripts/setup.sh). Only files under the mounted folders are ever served: paths with `..`, `.`,
dot-files or backslashes are refused, and a path that resolves (through a link) outside its folder gets 403.
GET and HEAD, single byte ranges (206 / 416), `Cache-Control: no-cache` (the SDK does its own caching and tests
rebuild files under the server), bodies streamed in 1 MiB chunks read in a worker thread.

Browser tests inject faults by subclassing `Files`: override `file_chunks` (corrupt or truncate a body: a body
that ends early closes the connection, as a server dying mid-body would) or `route` (answer any path differently).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from realm_web.errors import RealmError
from realm_web.registry import record_for, sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHUNK = 1 << 20

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".whl": "application/octet-stream",
    ".zip": "application/octet-stream",
    ".gguf": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class ServeError(RealmError):
    """The server cannot start: no web bundle, not a source checkout, a bad --model, a port in use."""


class NoPageError(ServeError):
    """The demo page cannot be served: not a source checkout, or its web bundle is not built (the API still can)."""


class Route:
    """What a request path maps to: a file on disk, or bytes made in memory (registry.json)."""

    def __init__(self, path: Path | None = None, data: bytes | None = None, content_type: str | None = None):
        self.path, self.data = path, data
        name = path.name if path is not None else ""
        self.content_type = content_type or MIME.get(os.path.splitext(name)[1], "application/octet-stream")

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, length) of a `Range: bytes=a-b | a- | -n` header; "ignore" for a form we answer with the whole
    file (several ranges, other units, malformed: RFC 9110 allows ignoring Range); None when unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or m.group(1) == m.group(2) == "":
        return "ignore"
    a, b = m.groups()
    if a == "":  # the last n bytes
        n = int(b)
        return (size - min(n, size), min(n, size)) if n > 0 and size > 0 else None
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if b and int(b) < start:
        return "ignore"
    if start >= size:
        return None
    return start, end - start + 1


class Files:
    """The static half of the server, as an ASGI app. `mounts`: URL prefix -> folder; `models`: file name -> path;
    `registry`: the records /models/registry.json lists. Subclass to inject faults (`route`, `file_chunks`)."""

    def __init__(self, mounts: dict[str, Path], models: dict[str, Path], registry: list[dict],
                 headers: dict[str, str] | None = None):  # fmt: skip
        """`headers`: sent with every response (e.g. cross-origin isolation for a benchmark page)."""
        self.mounts, self.models, self.registry = mounts, models, registry
        self.headers = headers or {}
        self.registry_json = (json.dumps(registry, indent=2) + "\n").encode()

    # -- hooks ------------------------------------------------------------------------------------------------
    def route(self, path: str, request: Request) -> Route | None:
        """The file or bytes for a URL path (already split from its query), or None for 404.
        Raises PermissionError (403) for a path that escapes its folder."""
        if path == "/models/registry.json":
            return Route(data=self.registry_json, content_type="application/json")
        segments = path.split("/")[1:]
        if any(s.startswith(".") or "\\" in s or "\0" in s for s in segments):  # ., .., dot-files
            raise PermissionError(path)
        if segments[0] == "models":
            model = self.models.get("/".join(segments[1:]))
            return Route(model) if model is not None else None
        prefix, rest = ("/" + segments[0], segments[1:]) if "/" + segments[0] in self.mounts else ("/", segments)
        root = self.mounts[prefix]
        rel = "/".join(s for s in rest if s) or "index.html"
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise PermissionError(path)
        return Route(target) if target.is_file() else None

    def file_chunks(self, route: Route, start: int, length: int, request: Request) -> Iterator[bytes]:
        """The bytes [start, start + length) of a route's body, in chunks (run in a worker thread). Override to
        corrupt them, or stop early to truncate (the connection is then closed mid-body)."""
        if route.data is not None:
            yield route.data[start : start + length]
            return
        with open(route.path, "rb") as f:  # type: ignore[arg-type]
            f.seek(start)
            while length > 0:
                chunk = f.read(min(CHUNK, length))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk

    # -- HTTP -------------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        extra = self.headers
        if request.method not in ("GET", "HEAD"):
            await _plain(send, 405, {"Allow": "GET, HEAD", **extra}, request.method == "HEAD")
            return
        head = request.method == "HEAD"
        path = scope["path"]
        try:
            route = self.route(path, request) if path.startswith("/") else None
        except PermissionError:
            await _plain(send, 403, extra, head)
            return
        if route is None:
            await _plain(send, 404, extra, head)
            return
        size = route.size
        start, length, status = 0, size, 200
        rng = request.headers.get("range")
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed is None:
                await _plain(send, 416, {"Content-Range": f"bytes */{size}", **extra}, head)
                return
            if parsed != "ignore":
                start, length = parsed  # type: ignore[misc]
                status = 206
        headers = {"Content-Type": route.content_type, "Content-Length": str(length), "Accept-Ranges": "bytes",
                   "Cache-Control": "no-cache", **extra}  # fmt: skip
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
        await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        sent = 0
        async for chunk in iterate_in_threadpool(self.file_chunks(route, start, length, request)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        if sent == length:
            await send({"type": "http.response.body", "body": b""})
        # else: a truncating hook. Returning without ending the body makes the server close the connection, so
        # the client sees the body end early (a short read), as with a server dying mid-body.


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _plain(send: Send, status: int, headers: dict[str, str], head: bool) -> None:
    from http import HTTPStatus

    data = f"{status} {HTTPStatus(status).phrase}\n".encode()
    headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(data)),
               "Cache-Control": "no-cache", **headers}  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": b"" if head else data})


def check_checkout(root: Path) -> dict[str, Path]:
    """The folders to mount, or a ServeError saying what to do."""
    mounts = {"/": root / "site", "/js": root / "js" / "src", "/runtime": root / "build" / "web"}
    if not (mounts["/"] / "index.html").is_file() or not (mounts["/js"] / "index.js").is_file():
        raise NoPageError(f"{root} is not a realm_web source checkout (site/index.html and js/src/index.js are "
                         "missing): `realm-web serve` serves the demo page and the SDK from the checkout")  # fmt: skip
    if not (mounts["/runtime"] / "manifest.json").is_file():
        raise NoPageError(f"the web bundle is missing ({mounts['/runtime'] / 'manifest.json'} not found): run "
                         "./scripts/setup.sh (or .venv/bin/python scripts/build_web.py) first")  # fmt: skip
    return {k: v.resolve() for k, v in mounts.items()}


def model_records(paths: Iterable[Path], drafts: dict[Path, list[str]] | None = None,
                  loras: dict[Path, list[str]] | None = None) -> tuple[dict[str, Path], list[dict]]:  # fmt: skip
    """Served file name -> path, and a registry record per model (`drafts`: path -> ids it is a draft for;
    `loras`: adapter path -> ids of the models it applies to). A
    file realm_web cannot read still gets served, with a record holding only its id, url, size, hash and the
    error, so a page can show how a bad model fails."""
    drafts = {Path(k).resolve(): v for k, v in (drafts or {}).items()}
    loras = {Path(k).resolve(): v for k, v in (loras or {}).items()}
    models: dict[str, Path] = {}
    records = []
    for path in paths:
        path = Path(path).resolve()
        if not path.is_file():
            raise ServeError(f"--model {path}: no such file")
        if path.name in models and models[path.name] != path:
            raise ServeError(f"two models are named {path.name}: {models[path.name]} and {path}")
        if path.name in models:
            continue
        models[path.name] = path
        url = f"/models/{path.name}"
        try:
            records.append(record_for(path, url=url, draft_for=drafts.get(path), base_models=loras.get(path)))
        except RealmError as e:
            records.append({"id": path.stem, "url": url, "sha256": sha256_file(path), "size": path.stat().st_size,
                            "error": str(e)})  # fmt: skip
            print(f"realm-web serve: warning: {path.name} is served but cannot be run: {e}", file=sys.stderr)
    return models, records
