"""`realm-web serve`'s files half (realm_web/server/files.py) over real HTTP on 127.0.0.1: layout, MIME types,
ranges, refusals, the generated registry and the fault-injection hook. No browser, no model loaded (the API has
its own tests: test_server_api.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from realm_web import cli
from realm_web.cli import bundled_lora, bundled_model
from realm_web.registry import record_for
from realm_web.server import Files, ServeError, make_server, parse_range
from realm_web.server import app as server_app

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = Path(bundled_model())
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Client:
    """One keep-alive connection; paths are sent exactly as given (no normalisation of `..`)."""

    def __init__(self, server):
        self.conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)

    def request(self, path: str, method: str = "GET", headers: dict | None = None):
        self.conn.request(method, path, headers=headers or {})
        r = self.conn.getresponse()
        return r, r.read()


def _running(**kw) -> Iterator:
    server = make_server("127.0.0.1", 0, api=False, **kw)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def srv():
    if not (ROOT / "build" / "web" / "manifest.json").is_file():
        if CI:
            pytest.fail("CI=true but build/web/ is missing: scripts/setup.sh builds it")
        pytest.skip("build/web/ missing: run ./scripts/setup.sh")
    yield from _running()


@pytest.fixture
def client(srv):
    c = Client(srv)
    yield c
    c.conn.close()


def fake_checkout(root: Path, manifest: bool = True) -> Path:
    (root / "site").mkdir(parents=True)
    (root / "site" / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "js" / "src").mkdir(parents=True)
    (root / "js" / "src" / "index.js").write_text("export {};\n")
    (root / "build" / "web").mkdir(parents=True)
    if manifest:
        (root / "build" / "web" / "manifest.json").write_text("{}")
    (root / "secret.txt").write_text("not for the web")
    return root


# ---- layout and MIME types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, file, mime",
    [
        ("/", "site/index.html", "text/html; charset=utf-8"),
        ("/index.html", "site/index.html", "text/html; charset=utf-8"),
        ("/app.js", "site/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "site/style.css", "text/css; charset=utf-8"),
        ("/js/index.js", "js/src/index.js", "text/javascript; charset=utf-8"),
        ("/js/builtin-models.json", "js/src/builtin-models.json", "application/json"),
        ("/runtime/manifest.json", "build/web/manifest.json", "application/json"),
        ("/runtime/pyodide/pyodide.mjs", "build/web/pyodide/pyodide.mjs", "text/javascript; charset=utf-8"),
        ("/runtime/pyodide/pyodide.asm.wasm", "build/web/pyodide/pyodide.asm.wasm", "application/wasm"),
        ("/runtime/pyodide/python_stdlib.zip", "build/web/pyodide/python_stdlib.zip", "application/octet-stream"),
        ("/models/realm-tiny-facts.gguf", str(BUNDLED), "application/octet-stream"),
    ],
)
def test_files_and_mime_types(client, path, file, mime):
    want = (ROOT / file).read_bytes()
    r, body = client.request(path)
    assert r.status == 200
    assert r.headers["Content-Type"] == mime
    assert int(r.headers["Content-Length"]) == len(want) and body == want
    assert r.headers["Accept-Ranges"] == "bytes" and r.headers["Cache-Control"] == "no-cache"


def test_wheels_listed_in_manifest_are_served(client):
    _, body = client.request("/runtime/manifest.json")
    manifest = json.loads(body)
    for wheel in manifest["wheels"]:
        r, data = client.request("/runtime/" + wheel)
        assert r.status == 200 and r.headers["Content-Type"] == "application/octet-stream"
        assert data[:2] == b"PK"


def test_head_sends_headers_only(client):
    size = (ROOT / "build/web/pyodide/pyodide.asm.wasm").stat().st_size
    r, body = client.request("/runtime/pyodide/pyodide.asm.wasm", "HEAD")
    assert r.status == 200 and body == b""
    assert int(r.headers["Content-Length"]) == size and r.headers["Content-Type"] == "application/wasm"
    r, body = client.request("/index.html")  # the connection is still usable after a HEAD
    assert r.status == 200 and body.startswith(b"<!doctype html>")


def test_query_strings_are_ignored(client):
    r, body = client.request("/?model=realm-tiny-facts&autoload=1")
    assert r.status == 200 and body == (ROOT / "site/index.html").read_bytes()


# ---- ranges --------------------------------------------------------------------------------------------------


def test_ranges(client):
    data = BUNDLED.read_bytes()
    n = len(data)
    url = "/models/realm-tiny-facts.gguf"
    for header, start, end in [
        ("bytes=0-3", 0, 3),
        ("bytes=100-199", 100, 199),
        (f"bytes={n - 10}-", n - 10, n - 1),
        ("bytes=-16", n - 16, n - 1),
        (f"bytes=5-{n + 1000}", 5, n - 1),  # an end past the file is clamped (RFC 9110 14.1.2)
        ("bytes=0-", 0, n - 1),
    ]:
        r, body = client.request(url, headers={"Range": header})
        assert r.status == 206, header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{n}", header
        assert int(r.headers["Content-Length"]) == end - start + 1 and body == data[start : end + 1], header
    assert client.request(url, headers={"Range": "bytes=0-3"})[1] == b"GGUF"


@pytest.mark.parametrize("header", ["bytes={size}-", "bytes=99999999-100000000", "bytes=-0"])
def test_unsatisfiable_range_is_416(client, header):
    n = BUNDLED.stat().st_size
    header = header.format(size=n)  # starting at the file's size: one byte past its end
    r, _ = client.request("/models/realm-tiny-facts.gguf", headers={"Range": header})
    assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{n}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-3", "bytes=9-3", "bytes=x-y", "bytes=-"])
def test_other_ranges_get_the_whole_file(client, header):
    r, body = client.request("/models/realm-tiny-facts.gguf", headers={"Range": header})
    assert r.status == 200 and len(body) == BUNDLED.stat().st_size


def test_head_with_range(client):
    r, body = client.request("/models/realm-tiny-facts.gguf", "HEAD", {"Range": "bytes=10-19"})
    assert r.status == 206 and body == b"" and r.headers["Content-Length"] == "10"


def test_parse_range():
    assert parse_range("bytes=0-0", 1) == (0, 1)
    assert parse_range("bytes=0-", 0) is None
    assert parse_range("bytes=-5", 3) == (0, 3)
    assert parse_range("bytes=1-2, 4-5", 10) == "ignore"


# ---- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/js/../../pyproject.toml",
        "/js/%2e%2e/%2e%2e/pyproject.toml",
        "/js/..%2f..%2fpyproject.toml",
        "/runtime/../../realm_web/cli.py",
        "/models/../realm_web/cli.py",
        "/../pyproject.toml",
        "/.git/config",
        "/js/./index.js",
        "/js/..\\..\\pyproject.toml",
        "/js//etc/passwd",
        "//etc/passwd",
        "/runtime/pyodide/",
        "/js",
        "/models/",
        "/models/registry.json/x",
        "/models/missing.gguf",
        "/nope.html",
        "relative/path",
    ],
)
def test_paths_outside_the_mounts_are_refused(client, path):
    r, body = client.request(path)
    assert r.status in (403, 404), path
    assert b"[project]" not in body and b"root:" not in body


def test_links_out_of_a_mount_are_refused(tmp_path):
    root = fake_checkout(tmp_path / "repo")
    (root / "site" / "leak.txt").symlink_to(root / "secret.txt")
    (root / "site" / "ok.txt").write_text("fine")
    for server in _running(root=root, bundled=False):
        c = Client(server)
        assert c.request("/ok.txt")[0].status == 200
        r, body = c.request("/leak.txt")
        assert r.status == 403 and b"not for the web" not in body


# ---- the model registry --------------------------------------------------------------------------------------


def test_registry_lists_the_bundled_model(client):
    r, body = client.request("/models/registry.json")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    draft = BUNDLED.with_name("realm-tiny-facts-draft.gguf")
    assert json.loads(body) == [
        record_for(BUNDLED, url="/models/realm-tiny-facts.gguf"),
        record_for(draft, url="/models/realm-tiny-facts-draft.gguf", draft_for=["realm-tiny-facts"]),
        record_for(bundled_lora(), url="/models/realm-tiny-facts-lora-fiction.gguf", base_models=["realm-tiny-facts"]),
    ]


def test_extra_and_bad_models(tmp_path):
    root = fake_checkout(tmp_path / "repo")
    extra = tmp_path / "my-model.gguf"
    shutil.copy(BUNDLED, extra)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 60)
    for server in _running(root=root, models=[extra, broken]):
        c = Client(server)
        records = json.loads(c.request("/models/registry.json")[1])
        assert [r["id"] for r in records] == ["realm-tiny-facts", "realm-tiny-facts-draft",
                                              "realm-tiny-facts-lora-fiction", "my-model", "broken"]  # fmt: skip
        assert records[3] == record_for(extra, url="/models/my-model.gguf")
        assert records[4]["url"] == "/models/broken.gguf" and records[4]["size"] == 64 and records[4]["error"]
        assert c.request("/models/my-model.gguf")[1] == extra.read_bytes()
        assert c.request("/models/broken.gguf")[1] == broken.read_bytes()


def test_model_name_clash_and_missing_model(tmp_path):
    root = fake_checkout(tmp_path / "repo")
    other = tmp_path / "other" / BUNDLED.name
    other.parent.mkdir()
    shutil.copy(BUNDLED, other)
    with pytest.raises(ServeError, match="two models are named"):
        make_server("127.0.0.1", 0, root=root, models=[other])
    with pytest.raises(ServeError, match="no such file"):
        make_server("127.0.0.1", 0, root=root, models=[tmp_path / "nope.gguf"])


# ---- startup errors ------------------------------------------------------------------------------------------


def test_missing_bundle_says_to_run_setup(tmp_path, monkeypatch, capsys):
    """make_server refuses; `realm-web serve` says why and serves the API alone (what a pip install has)."""
    root = fake_checkout(tmp_path / "repo", manifest=False)
    with pytest.raises(ServeError, match=r"web bundle is missing.*scripts/setup\.sh"):
        make_server("127.0.0.1", 0, root=root)
    served = []
    monkeypatch.setattr(server_app, "REPO_ROOT", root)
    monkeypatch.setattr(server_app.Server, "serve_forever", lambda self: served.append(self))
    assert cli.main(["serve", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "the web bundle is missing" in err and "./scripts/setup.sh" in err and "serving the API alone" in err
    (server,) = served
    assert server.files is None and list(server.pool.entries) == ["realm-tiny-facts"]
    server.socket.close()


def test_not_a_checkout(tmp_path):
    with pytest.raises(ServeError, match="not a realm_web source checkout"):
        make_server("127.0.0.1", 0, root=tmp_path)


# ---- fault injection (for browser tests) --------------------------------------------------------------------


class Truncating(Files):
    """Sends the first 1000 bytes of any model body, then drops the connection."""

    def file_chunks(self, route, start, length, request):
        if route.path is None or route.path.suffix != ".gguf":
            yield from super().file_chunks(route, start, length, request)
            return
        left = 1000
        for chunk in super().file_chunks(route, start, length, request):
            yield chunk[:left]
            left -= len(chunk[:left])
            if left <= 0:
                return


class Corrupting(Files):
    """Flips every byte of model bodies at absolute offset 64."""

    def file_chunks(self, route, start, length, request):
        pos = start
        for chunk in super().file_chunks(route, start, length, request):
            if route.path is not None and route.path.suffix == ".gguf" and pos <= 64 < pos + len(chunk):
                b = bytearray(chunk)
                b[64 - pos] ^= 0xFF
                chunk = bytes(b)
            pos += len(chunk)
            yield chunk


def test_truncating_handler_cuts_the_body(tmp_path):
    root = fake_checkout(tmp_path / "repo")
    for server in _running(root=root, files=Truncating):
        c = Client(server)
        c.conn.request("GET", "/models/realm-tiny-facts.gguf")
        r = c.conn.getresponse()
        assert r.status == 200
        with pytest.raises(http.client.IncompleteRead) as e:
            r.read()
        assert len(e.value.partial) == 1000
        assert Client(server).request("/")[0].status == 200  # the server itself carries on


def test_corrupting_handler(tmp_path):
    root = fake_checkout(tmp_path / "repo")
    data = BUNDLED.read_bytes()
    for server in _running(root=root, files=Corrupting):
        body = Client(server).request("/models/realm-tiny-facts.gguf")[1]
        assert len(body) == len(data) and body[64] == data[64] ^ 0xFF and body[:64] == data[:64]
        part = Client(server).request("/models/realm-tiny-facts.gguf", headers={"Range": "bytes=60-69"})[1]
        assert part == data[60:64] + bytes([data[64] ^ 0xFF]) + data[65:70]


def test_cli_has_serve():
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])


# ---- the web bundle (scripts/build_web.py) ------------------------------------------------------------------


def _build_web():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_web", ROOT / "scripts" / "build_web.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundle_lock_points_at_local_wheels(srv):
    web = ROOT / "build" / "web"
    manifest = json.loads((web / "manifest.json").read_text())
    assert manifest["pyodide"] == "pyodide/" and manifest["pyodide_version"] == "314.0.7"
    lock = json.loads((web / "pyodide" / "pyodide-lock.json").read_text())
    for name in ("micropip", "packaging", "jinja2", "markupsafe"):
        entry = lock["packages"][name]
        wheel = web / "pyodide" / entry["file_name"]
        assert entry["file_name"].endswith("-py3-none-any.whl") and wheel.is_file(), name
        assert entry["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest(), name


def test_bundle_wheel_is_pure_and_current(srv):
    """The browser wheel holds today's sources (else browser tests would test old code: rerun
    scripts/build_web.py), every WGSL kernel, no model and no unconditional numpy/wgpu requirement."""
    web = ROOT / "build" / "web"
    manifest = json.loads((web / "manifest.json").read_text())
    (wheel,) = manifest["wheels"]
    path = web / wheel
    _build_web().check_realm_web_wheel(path)
    with zipfile.ZipFile(path) as z:
        names = {n for n in z.namelist() if n.startswith("realm_web/")}
        stale = [n for n in names if not (ROOT / n).is_file() or (ROOT / n).read_bytes() != z.read(n)]
    sources = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "realm_web").rglob("*.py") if "__pycache__" not in p.parts
    }
    missing = sources - names
    assert not stale and not missing, (
        f"build/web is stale ({sorted(stale + list(missing))[:5]}): run scripts/build_web.py"
    )
    assert manifest["realm_web_version"] == wheel.split("-")[1]
