"""What a new user meets first: `pip install` of the wheel built from this repository into a clean virtual
environment, then `realm-web` run from another folder.

The dependencies come from build/wheelhouse/ (scripts/setup.sh downloads them with `pip download`) through
`pip install --no-index --find-links`, so nothing is fetched here; without that folder (setup.sh not run) pip
falls back to its configured indexes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "build" / "wheelhouse"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def run(cmd: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def source_tree(dest: Path) -> Path:
    """The files a fresh checkout has that the wheel is built from (no egg-info or build/ leftovers of this
    working copy, which setuptools would otherwise pick up)."""
    files = [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]
    files += [p for p in (ROOT / "realm_web").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for f in files:
        (dest / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.relative_to(ROOT))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_tree(tmp / "src")
    # --no-build-isolation: setuptools from this venv (the dev extra), so the build needs no index either
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
         str(src)], cwd=tmp)  # fmt: skip
    (whl,) = (tmp / "dist").glob("realm_web-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A new virtual environment (no system site-packages) with the wheel pip-installed; its bin/ folder."""
    tmp = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(tmp / "venv")], cwd=tmp)
    py = tmp / "venv" / "bin" / "python"
    if WHEELHOUSE.is_dir():
        source = ["--no-index", "--find-links", str(WHEELHOUSE)]
    elif CI:
        pytest.fail(f"CI=true but {WHEELHOUSE} is missing: scripts/setup.sh makes it")
    else:
        source = []
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *source, str(wheel)], cwd=tmp)
    return py.parent


def test_wheel_requires_wgpu_and_numpy_natively_and_not_in_the_browser(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [Requirement(line.split(":", 1)[1].strip()) for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
        assert "realm_web/models/realm-tiny-facts.gguf" in z.namelist()
    native = {"sys_platform": "linux", "extra": ""}
    pyodide = {"sys_platform": "emscripten", "platform_system": "Emscripten", "platform_machine": "wasm32", "extra": ""}

    def needed(env: dict) -> set[str]:
        return {r.name.lower() for r in reqs if r.marker is None or r.marker.evaluate(env)}

    assert {"wgpu", "numpy", "jinja2", "starlette", "uvicorn", "prometheus-client"} <= needed(native)
    assert needed(pyodide) == {"jinja2"}


def test_pip_installed_wheel_streams_paris_from_another_folder(venv: Path, tmp_path: Path, dev):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the package imported is the installed one, not this checkout
    where = run([str(venv / "python"), "-c", "import realm_web, wgpu; print(realm_web.__file__)"], cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(venv.parent), where.stdout
    r = run([str(venv / "realm-web"), "run", "The capital of France is", "-n", "4", "--temp", "0"], cwd=elsewhere)
    print(r.stdout)
    assert r.stdout.startswith("The capital of France is Paris"), r.stdout
    assert "Traceback" not in r.stderr


def test_pip_installed_version(venv: Path, wheel: Path, tmp_path: Path):
    r = run([str(venv / "realm-web"), "--version"], cwd=tmp_path)
    assert r.stdout.strip() == f"realm-web {wheel.name.split('-')[1]}"


def test_pip_installed_server_answers_the_openai_api(venv: Path, tmp_path: Path, dev):
    """`realm-web serve` from a plain install (no checkout, so no demo page) serves the API on the bundled model."""
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.Popen([str(venv / "realm-web"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 120, "the server did not become healthy"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", json={"model": "realm-tiny-facts", "prompt": "The capital of France is",
                                                      "max_tokens": 2, "temperature": 0}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith(" Paris"), r.text
        assert httpx.get(url + "/").status_code == 404  # no page without a checkout
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving the API alone" in err and "Traceback" not in err, err
