"""`realm-web serve`: the demo page, the JS SDK, the web bundle and GGUF models over HTTP on this machine.

    /                     site/index.html; /app.js, /style.css, ... the files of site/
    /js/...               js/src/ (the SDK; /js/index.js is its entry module)
    /runtime/...          build/web/ (manifest.json, pyodide/, wheels/: made by scripts/build_web.py)
    /models/registry.json a registry record (realm_web.registry) for each served model
    /models/NAME          the bundled model and every --model file, by file name

Files come from the source checkout this package lives in (realm_web/..), so `serve` needs a checkout with
the bundle built (./scripts/setup.sh). Only files under the mounted folders are ever served: paths with
`..`, `.`, dot-files or backslashes are refused, and a path that resolves (through a link) outside its folder
gets 403. GET and HEAD, single byte ranges (206 / 416), no caching (`Cache-Control: no-cache`: the SDK does
its own caching and tests rebuild files under the server), files streamed in 1 MiB chunks.

Tests start it on port 0 in a thread (`make_server(...)`, then `serve_forever` and `shutdown`); browser tests
inject faults by passing a `Handler` subclass that overrides `file_chunks` (corrupt or truncate a body) or
`route` (answer any path differently).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from realm_web.errors import RealmError
from realm_web.registry import record_for, sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    """The server cannot start: no web bundle, not a source checkout, or a bad --model."""


class Route:
    """What a request path maps to: a file on disk, or bytes made in memory (registry.json)."""

    def __init__(self, path: Path | None = None, data: bytes | None = None, content_type: str | None = None):
        self.path, self.data = path, data
        name = path.name if path is not None else ""
        self.content_type = content_type or MIME.get(os.path.splitext(name)[1], "application/octet-stream")

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]


class Handler(BaseHTTPRequestHandler):
    """Serves `server.mounts` and `server.models`. Subclass to inject faults (see `file_chunks`, `route`)."""

    server: RealmServer
    protocol_version = "HTTP/1.1"  # keep-alive: a model download is many Range requests

    # -- hooks ------------------------------------------------------------------------------------------------
    def route(self, path: str) -> Route | None:
        """The file or bytes for a URL path (already split from its query), or None for 404.
        Raises PermissionError (403) for a path that escapes its folder."""
        if path == "/models/registry.json":
            return Route(data=self.server.registry_json, content_type="application/json")
        segments = path.split("/")[1:]
        if any(s.startswith(".") or "\\" in s or "\0" in s for s in segments):  # ., .., dot-files
            raise PermissionError(path)
        if segments[0] == "models":
            model = self.server.models.get("/".join(segments[1:]))
            return Route(model) if model is not None else None
        prefix, rest = ("/" + segments[0], segments[1:]) if "/" + segments[0] in self.server.mounts else ("/", segments)
        root = self.server.mounts[prefix]
        rel = "/".join(s for s in rest if s) or "index.html"
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise PermissionError(path)
        return Route(target) if target.is_file() else None

    def file_chunks(self, route: Route, start: int, length: int) -> Iterator[bytes]:
        """The bytes [start, start + length) of a route's body, in chunks. Override to corrupt them, or stop
        early to truncate (the connection is then closed, as a server dying mid-body would)."""
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
    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            route = self.route(path) if path.startswith("/") else None
        except PermissionError:
            self._error(HTTPStatus.FORBIDDEN)
            return
        if route is None:
            self._error(HTTPStatus.NOT_FOUND)
            return
        size = route.size
        start, length, status = 0, size, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed is None:
                self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
                return
            if parsed != "ignore":
                start, length = parsed
                status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        self.end_headers()
        if not body:
            return
        sent = 0
        try:
            for chunk in self.file_chunks(route, start, length):
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if sent != length:  # a truncating hook: the client must see the body end early
            self.close_connection = True

    def _error(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        data = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


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


class RealmServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[Handler], *, mounts: dict[str, Path],
                 models: dict[str, Path], registry: list[dict], quiet: bool):  # fmt: skip
        self.mounts, self.models, self.registry, self.quiet = mounts, models, registry, quiet
        self.registry_json = (json.dumps(registry, indent=2) + "\n").encode()
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def check_checkout(root: Path) -> dict[str, Path]:
    """The folders to mount, or a ServeError saying what to do."""
    mounts = {"/": root / "site", "/js": root / "js" / "src", "/runtime": root / "build" / "web"}
    if not (mounts["/"] / "index.html").is_file() or not (mounts["/js"] / "index.js").is_file():
        raise ServeError(f"{root} is not a realm_web source checkout (site/index.html and js/src/index.js are "
                         "missing): `realm-web serve` serves the demo page and the SDK from the checkout")  # fmt: skip
    if not (mounts["/runtime"] / "manifest.json").is_file():
        raise ServeError(f"the web bundle is missing ({mounts['/runtime'] / 'manifest.json'} not found): run "
                         "./scripts/setup.sh (or .venv/bin/python scripts/build_web.py) first")  # fmt: skip
    return {k: v.resolve() for k, v in mounts.items()}


def model_records(paths: Iterable[Path]) -> tuple[dict[str, Path], list[dict]]:
    """Served file name -> path, and a registry record per model. A file realm_web cannot read still gets
    served, with a record holding only its id, url, size, hash and the error, so a page can show how a bad
    model fails."""
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
            records.append(record_for(path, url=url))
        except RealmError as e:
            records.append({"id": path.stem, "url": url, "sha256": sha256_file(path), "size": path.stat().st_size,
                            "error": str(e)})  # fmt: skip
            print(f"realm-web serve: warning: {path.name} is served but cannot be run: {e}", file=sys.stderr)
    return models, records


def make_server(host: str = "127.0.0.1", port: int = 8000, *, models: Iterable[str | Path] = (),
                bundled: bool = True, root: Path | None = None, handler: type[Handler] = Handler,
                quiet: bool = True) -> RealmServer:  # fmt: skip
    """A server bound to (host, port) (port 0 picks a free one: see `.url`), not yet serving. `root` is the
    checkout whose site/, js/src/ and build/web/ are served (default: the one this package is in)."""
    mounts = check_checkout(Path(root) if root is not None else REPO_ROOT)
    from realm_web.cli import bundled_model

    paths = ([Path(bundled_model())] if bundled else []) + [Path(m) for m in models]
    served, records = model_records(paths)
    return RealmServer((host, port), handler, mounts=mounts, models=served, registry=records, quiet=quiet)


def start_in_thread(server: RealmServer) -> threading.Thread:
    """Serve in a daemon thread (tests); stop with `server.shutdown(); server.server_close()`."""
    t = threading.Thread(target=server.serve_forever, name="realm-web-serve", daemon=True)
    t.start()
    return t


def serve(host: str, port: int, models: Iterable[str] = (), open_browser: bool = False) -> int:
    """`realm-web serve`: serve until Ctrl-C."""
    try:
        server = make_server(host, port, models=models, quiet=False)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    ids = ", ".join(r["id"] for r in server.registry)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"realm-web serve: note: browsers give WebGPU only to secure contexts (https:// or localhost); "
              f"http://{host}:{port}/ from another machine will have no navigator.gpu", file=sys.stderr)  # fmt: skip
    print(f"realm-web serve: open {server.url}  (models: {ids}; Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    with server:  # Ctrl-C: cli.main turns the KeyboardInterrupt into exit status 130
        server.serve_forever()
    return 0
