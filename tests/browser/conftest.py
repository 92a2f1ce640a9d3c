"""Browser tests: Debian's Chromium (headless, WebGPU on SwiftShader) driven by Python Playwright, against
`realm-web serve` on 127.0.0.1. Nothing beyond loopback is reached: the Pyodide runtime and the wheels come from
build/web/ (scripts/build_web.py), the model from the server.

The server's handler injects the faults the SDK must survive, by URL prefix (the file served is the bundled
model): /faulty/corrupt/NAME flips one byte; /faulty/drop/NAME closes the connection after 256 KiB the first
time a download starts at byte 0 (a later Range request then resumes it). Requests' Range headers are logged.

Under CI=true a missing Chromium, Playwright or web bundle fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from realm_web.cli import bundled_model

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium")
BASE_ARGS = [
    "--no-sandbox",  # as root in containers
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic", "--disable-default-apps", "--disable-extensions",
]  # fmt: skip
WEBGPU_ARGS = ["--enable-unsafe-webgpu"]
LOAD_TIMEOUT_MS = 180_000  # Pyodide + model on SwiftShader: ~5 s here, generous for a 2-core CI machine


def _unavailable(why: str):
    if CI:
        pytest.fail(f"CI=true but the browser tests cannot run: {why}")
    pytest.skip(why)


# Module scope: Playwright's sync API keeps an asyncio loop running in this thread while it is open, which
# would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        _unavailable(f"playwright is not installed ({e})")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def chromium(playwright_api):
    """Chromium with WebGPU enabled (SwiftShader when there is no GPU)."""
    b = playwright_api.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS + WEBGPU_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def chromium_without_webgpu(playwright_api):
    """Chromium as shipped on Linux: navigator.gpu exists but no adapter is given out."""
    b = playwright_api.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="session")
def server():
    from realm_web.server import Files, Route, ServeError, make_server

    bundled = Path(bundled_model())
    log: list[tuple[str, str | None]] = []  # (path, Range header) of every request
    dropped: set[str] = set()
    lock = threading.Lock()

    class FaultyFiles(Files):
        def route(self, path: str, request) -> Route | None:
            with lock:
                log.append((path, request.headers.get("range")))
            if path.startswith("/faulty/"):
                return Route(bundled)
            return super().route(path, request)

        def file_chunks(self, route: Route, start: int, length: int, request):
            path = request.url.path
            sent = 0
            for chunk in super().file_chunks(route, start, length, request):
                if path.startswith("/faulty/corrupt/") and start <= 4096 < start + sent + len(chunk):
                    i = 4096 - (start + sent)
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if path.startswith("/faulty/drop/") and start == 0 and sent + len(chunk) > 256 << 10:
                    with lock:
                        first = path not in dropped
                        dropped.add(path)
                    if first:
                        yield chunk[: (256 << 10) - sent]
                        time.sleep(0.5)  # let the browser take those bytes before the connection dies
                        return  # the body ends early: the server closes the connection mid-body
                sent += len(chunk)
                yield chunk

    try:
        # the same server as `realm-web serve`: the page and files, and the OpenAI API on the bundled model
        srv = make_server("127.0.0.1", 0, files=FaultyFiles)
    except ServeError as e:
        _unavailable(str(e))
    srv.request_log = log
    srv.start()
    yield srv
    srv.shutdown()


@pytest.fixture
def new_page():
    """Open `url` in a fresh context of `browser` (its own, empty, OPFS model cache); closed after the test."""
    contexts = []

    def open_page(browser, url: str):
        ctx = browser.new_context()
        contexts.append(ctx)
        pg = ctx.new_page()
        pg.set_default_timeout(LOAD_TIMEOUT_MS)
        pg.goto(url)
        return pg

    yield open_page
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def page(new_page, chromium, server):
    """A fresh same-origin page (tests import the SDK into it themselves)."""
    return new_page(chromium, server.url + "runtime/manifest.json")


@pytest.fixture(scope="session")
def native_model():
    """The bundled model on the native device: the oracle the browser must agree with."""
    import realm_web

    return realm_web.load(bundled_model())
