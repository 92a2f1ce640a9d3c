"""`realm-web serve`: one ASGI app (Starlette on uvicorn) serving the demo page and model files (files.py) and
the OpenAI-compatible API (api.py) over the batched engine of every `-m` model.

    GET  /health                503 while models load, then 200 (no key needed)
    GET  /metrics               Prometheus text (metrics.py; no key needed)
    GET  /v1/models             POST /v1/completions   POST /v1/chat/completions   (keys and limits: auth.py)
    GET  /, /js/..., /runtime/..., /models/...   the page, the SDK, the web bundle, the GGUF files (files.py)

Tests build one with `make_server(host, 0, ...)`, then `start()` (a thread) and `shutdown()`."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realm_web.server.api import API, error_response
from realm_web.server.auth import KeysAndLimits, Limits
from realm_web.server.files import REPO_ROOT, Files, NoPageError, ServeError, check_checkout, model_records
from realm_web.server.metrics import CONTENT_TYPE, Metrics
from realm_web.server.pool import ModelPool
from realm_web.server.protocol import APIError

MAX_BODY = 4 << 20  # bytes of a request body
API_PATHS = ("/v1/models", "/v1/completions", "/v1/chat/completions")


class CountRequests:
    """Counts every /v1/ request by endpoint and status (the status it started its response with)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            endpoint = scope["path"] if scope["path"] in API_PATHS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()


def build_app(pool: ModelPool, files: Files | None, *, keys: Sequence[str] = (), rate_limit: int | None = None,
              max_concurrent: int | None = None, max_body: int = MAX_BODY,
              cors_origins: Sequence[str] = ()) -> Starlette:  # fmt: skip
    metrics = Metrics(pool)
    api = API(pool, metrics, max_body)

    async def health(request: Request) -> Response:
        status, body = pool.health()
        return JSONResponse(body, status_code=status, headers={"Retry-After": "1"} if status == 503 else None)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def unknown(request: Request) -> Response:
        return error_response(APIError(404, f"no such endpoint: {request.method} {request.url.path}",
                                       code="unknown_url"))  # fmt: skip

    async def not_allowed(request: Request) -> Response:
        return error_response(APIError(405, f"{request.url.path} does not accept {request.method}",
                                       code="method_not_allowed"))  # fmt: skip

    async def internal(request: Request, exc: Exception) -> Response:
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    routes = [
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_page, methods=["GET", "HEAD"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
    ]
    routes += [Route(p, not_allowed, methods=["GET", "PUT", "PATCH", "DELETE"]) for p in API_PATHS[1:]]
    routes += [Route("/v1/models", not_allowed, methods=["POST", "PUT", "PATCH", "DELETE"])]
    routes += [Route("/v1/{rest:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        pool.start()
        yield
        pool.close()

    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                                     allow_headers=["*"]))  # fmt: skip
    middleware += [Middleware(CountRequests, metrics=metrics),
                   Middleware(KeysAndLimits, keys=keys, limits=Limits(rate_limit, max_concurrent))]  # fmt: skip
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={500: internal})
    if files is not None:
        app.router.default = files  # everything else: the page, the SDK, the bundle, the model files
    app.state.pool, app.state.metrics = pool, metrics
    return app


class Server:
    """A bound server, not yet serving: `start()` serves in a thread (tests), `serve_forever()` in this one."""

    def __init__(self, app: Starlette, host: str, port: int, files: Files | None, pool: ModelPool, quiet: bool):
        self.app, self.files, self.pool = app, files, pool
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as e:
            self.socket.close()
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.server_address = self.socket.getsockname()
        config = uvicorn.Config(app, log_level="critical" if quiet else "info", access_log=not quiet,
                                timeout_graceful_shutdown=2, lifespan="on")  # fmt: skip
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def registry(self) -> list[dict]:
        return self.files.registry if self.files is not None else []

    def start(self, timeout: float = 30.0) -> Server:
        self.uvicorn.config.install_signal_handlers = False  # not the main thread
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.socket]},
                                        name="realm-web-serve", daemon=True)  # fmt: skip
        self._thread.start()
        t0 = time.monotonic()
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise ServeError("the server did not start")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every model's load attempt ended; True if all did."""
        return self.pool.wait(timeout)

    def serve_forever(self) -> None:
        self.uvicorn.run(sockets=[self.socket])

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self.socket.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def make_server(host: str = "127.0.0.1", port: int = 8000, *, models: Iterable[str | Path] = (),
                bundled: bool = True, root: Path | None = None, files: type[Files] | None = Files,
                api: bool = True, api_keys: Sequence[str] = (), rate_limit: int | None = None,
                max_concurrent: int | None = None, max_body: int = MAX_BODY, cors_origins: Sequence[str] = (),
                quiet: bool = True, loras: Sequence[tuple[str, str | Path]] = (),
                **load_options: Any) -> Server:  # fmt: skip
    """A server bound to (host, port) (port 0 picks a free one: see `.url`), not yet serving.
    `models`: GGUF files served to browsers and, with `api`, loaded for the API (none given: the bundled model;
    `bundled` also offers it and its draft to browsers);
    `files=None`: the API alone (no checkout needed); `root`: the checkout whose site/, js/src/ and build/web/
    are served (default: the one this package is in); `load_options` go to realm_web.load (n_parallel, n_ctx,
    kv_cache_tokens, ...); `loras`: (id, adapter path) pairs, each served as model `id` over the model it fits."""
    from realm_web.cli import bundled_draft, bundled_lora, bundled_model

    extra = [Path(m) for m in models]
    target, draft, lora = Path(bundled_model()), Path(bundled_draft()), Path(bundled_lora())
    bundled_files = ([target] + [p for p in (draft, lora) if p.is_file()]) if bundled else []
    file_app = None
    if files is not None:
        mounts = check_checkout(Path(root) if root is not None else REPO_ROOT)
        served, records = model_records(bundled_files + extra, {draft: [target.stem]}, {lora: [target.stem]})
        file_app = files(mounts, served, records)
    for p in extra:
        if not p.is_file():
            raise ServeError(f"--model {p}: no such file")
    for name, p in loras:
        if not Path(p).is_file():
            raise ServeError(f"--lora {name}={p}: no such file")
    api_paths = [p.resolve() for p in (extra or [Path(bundled_model())])] if api else []
    try:
        pool = ModelPool(api_paths, load_options, log=not quiet, loras=[(n, Path(p)) for n, p in loras])
    except ValueError as e:
        raise ServeError(str(e)) from None
    app = build_app(pool, file_app, keys=api_keys, rate_limit=rate_limit, max_concurrent=max_concurrent,
                    max_body=max_body, cors_origins=cors_origins)  # fmt: skip
    return Server(app, host, port, file_app, pool, quiet)


def file_server(mounts: dict[str, Path], models: dict[str, Path] | None = None, *,
                headers: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0) -> Server:  # fmt: skip
    """Files alone (benchmark harness pages): `mounts` URL prefix -> folder, `models` /models/NAME -> path,
    `headers` on every response. Not yet serving: `start()`."""
    files = Files({k: Path(v).resolve() for k, v in mounts.items()}, dict(models or {}), [], headers)
    pool = ModelPool([], {}, log=False)
    return Server(build_app(pool, files), host, port, files, pool, quiet=True)


LOCAL = ("127.0.0.1", "localhost", "::1")


def serve(host: str, port: int, models: Iterable[str] = (), *, open_browser: bool = False, **options: Any) -> int:
    """`realm-web serve`: serve until Ctrl-C."""
    try:
        server = make_server(host, port, models=models, quiet=False, **options)
    except NoPageError as e:
        print(f"realm-web serve: note: {e}; serving the API alone", file=sys.stderr)
        server = make_server(host, port, models=models, quiet=False, files=None, **options)
    ids = ", ".join(server.pool.entries) or "none"
    if host not in LOCAL:
        print(f"realm-web serve: note: listening on {host}, beyond this machine"
              + ("" if options.get("api_keys") else " and without --api-key: anyone who reaches it can use the API")
              + "; browsers give WebGPU only to secure contexts (https:// or localhost)", file=sys.stderr)  # fmt: skip
    page = f"open {server.url} for the demo page; " if server.files is not None else ""
    print(f"realm-web serve: {page}OpenAI API at {server.url}v1 (models: {ids}; loading); Ctrl-C to stop",
          flush=True)  # fmt: skip
    if open_browser and server.files is not None:
        import webbrowser

        webbrowser.open(server.url)
    server.serve_forever()
    return 0
