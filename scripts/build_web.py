#!/usr/bin/env python3
"""Build the web bundle `build/web/`: everything the browser needs to run realm_web, served from this machine.

    build/web/manifest.json     {"pyodide": "pyodide/", "wheels": [...], "realm_web_version", "pyodide_version"}
    build/web/pyodide/          every file of the npm package pyodide (js/node_modules/pyodide, pinned by
                                js/package.json) plus the four wheels realm_web needs from Pyodide's lock file:
                                micropip, packaging, jinja2 (py3-none-any from PyPI) and markupsafe (built pure
                                from its sdist); their pyodide-lock.json entries point at these files (file_name,
                                sha256), so loadPackage("micropip") and micropip's resolution of jinja2 ->
                                markupsafe load local files with integrity checks on.
    build/web/wheels/realm_web-VERSION-py3-none-any.whl   realm_web, pure Python, without the bundled model
                                (the server hands models out separately, by HTTP Range).

The npm package ships no wheels, and no CDN is reachable from the machines this runs on, so the lock's four
wheels come from PyPI (`pip download`, the only network access here; cached under build/web-cache/ so a rerun
is offline). PyPI has no MarkupSafe wheel for Pyodide's platform (pyemscripten_2026_0_wasm32); its sdist builds
a pure wheel when the C compiler is missing (`CC=/bin/false`: setup.py catches the failed build and falls back
to the pure-Python `_native` module). The realm_web wheel is built offline by setuptools
(`pip wheel --no-deps --no-build-isolation`, so the venv needs setuptools>=77, which setup.sh installs) from a
staged copy of the package without models/*.gguf, with SOURCE_DATE_EPOCH fixed so the same sources give the
same bytes (and the same sha256).

Work already done is skipped: pyodide files are copied when their size or mtime differ, downloads and the
MarkupSafe build are cached, and the realm_web wheel is rebuilt only when a digest of its sources changes.

Why not `pyodide build` (pyodide-build, the official tool): it builds wheels for Pyodide in a cross-build
environment. Online, `pyodide build .` would first fetch the list of cross-build environments
(https://pyodide.github.io/pyodide/api/v2/pyodide-cross-build-environments.json), download the one matching
the Pyodide version (a tarball with Pyodide's headers, sysconfig and the prebuilt packages of its lock file),
install Emscripten (emsdk) when a package has C extensions, then run pypa/build with the cross-compilers and
tag the result pyemscripten_*_wasm32 (or py3-none-any when nothing was compiled). For pure-Python packages,
which is all we ship, the output is the same wheel setuptools makes here, yet it still insists on the
cross-build environment first. Tried with pyodide-build 0.39.2 (Python 3.12.1; current versions need >= 3.12):
`pyodide build --help` works, `pyodide build .` on this repo fails in build_env.init_environment ->
xbuildenv.install -> load_cross_build_env_metadata with requests.exceptions.ConnectionError
"HTTPSConnectionPool(host='pyodide.github.io', port=443): ... Failed to resolve 'pyodide.github.io'". It
would also give us no MarkupSafe wheel without Emscripten. So it is not used.

Usage: .venv/bin/python scripts/build_web.py [--force]     (scripts/setup.sh runs it)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "web"
CACHE = ROOT / "build" / "web-cache"
PYODIDE_NPM = ROOT / "js" / "node_modules" / "pyodide"

PURE_FROM_PYPI = ("micropip", "packaging", "jinja2")  # lock entries whose PyPI wheels are py3-none-any
PURE_FROM_SDIST = ("markupsafe",)  # lock entries rebuilt pure from their sdist
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold: reproducible wheels
NATIVE_ONLY = ("numpy", "wgpu")  # must never be requirements of the browser wheel under Pyodide
PYODIDE_MARKERS = {"sys_platform": "emscripten", "platform_system": "Emscripten", "platform_machine": "wasm32",
                   "extra": ""}  # fmt: skip


class BuildError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if r.returncode:
        raise BuildError(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    # -qq: pip's configured find-links that do not exist on this machine would each print a warning
    run([sys.executable, "-m", "pip", "-qq", "--disable-pip-version-check", *args], env)


# ---- Pyodide -------------------------------------------------------------------------------------------------


def copy_pyodide(dest: Path) -> tuple[dict, set[str]]:
    """Copy the npm package's files (all but pyodide-lock.json, which is rewritten) when changed.
    Returns the lock file and the names written."""
    if not (PYODIDE_NPM / "pyodide.mjs").is_file():
        raise BuildError(f"{PYODIDE_NPM} is missing: run `npm ci` in js/ (scripts/setup.sh does)")
    dest.mkdir(parents=True, exist_ok=True)
    names = set()
    for src in sorted(PYODIDE_NPM.iterdir()):
        if not src.is_file() or src.name == "pyodide-lock.json":
            continue
        names.add(src.name)
        dst = dest / src.name
        st = src.stat()
        if dst.is_file() and dst.stat().st_size == st.st_size and int(dst.stat().st_mtime) == int(st.st_mtime):
            continue
        shutil.copy2(src, dst)
    lock = json.loads((PYODIDE_NPM / "pyodide-lock.json").read_text())
    return lock, names


def pyodide_version() -> str:
    return json.loads((PYODIDE_NPM / "package.json").read_text())["version"]


def fetch_lock_wheels(lock: dict) -> dict[str, Path]:
    """The wheels of the lock entries we ship, at the lock's versions, from the cache or PyPI."""
    py_version = ".".join(lock["info"]["python"].split(".")[:2])
    dl = CACHE / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    wheels: dict[str, Path] = {}
    for name in PURE_FROM_PYPI:
        version = lock["packages"][name]["version"]
        found = [p for p in dl.glob("*.whl") if _wheel_is(p, name, version)]
        if not found:
            pip("download", "--no-deps", "--only-binary=:all:", "--implementation", "py", "--platform", "any",
                "--python-version", py_version, "-d", str(dl), f"{name}=={version}")  # fmt: skip
            found = [p for p in dl.glob("*.whl") if _wheel_is(p, name, version)]
        if not found:
            raise BuildError(f"pip download gave no pure wheel for {name}=={version}")
        wheels[name] = found[0]
    for name in PURE_FROM_SDIST:
        wheels[name] = build_pure_from_sdist(name, lock["packages"][name]["version"])
    for path in wheels.values():
        if not path.name.endswith("-py3-none-any.whl"):
            raise BuildError(f"{path.name} is not a pure-Python wheel")
        with zipfile.ZipFile(path) as z:
            binary = [n for n in z.namelist() if n.endswith((".so", ".pyd", ".dll", ".dylib"))]
        if binary:
            raise BuildError(f"{path.name} holds compiled code: {binary}")
    return wheels


def _wheel_is(path: Path, name: str, version: str) -> bool:
    dist, ver = path.name.split("-")[:2]
    return dist.lower().replace("_", "-") == name and ver == version and path.name.endswith("-py3-none-any.whl")


def build_pure_from_sdist(name: str, version: str) -> Path:
    out = CACHE / "built"
    out.mkdir(parents=True, exist_ok=True)
    found = [p for p in out.glob("*.whl") if _wheel_is(p, name, version)]
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        pip("download", "--no-deps", "--no-binary=:all:", "-d", tmp, f"{name}=={version}")
        sdists = list(Path(tmp).iterdir())
        if len(sdists) != 1:
            raise BuildError(f"pip download {name}=={version} gave {sdists}, expected one sdist")
        # No compiler: MarkupSafe's setup.py catches the failed C build and ships the pure `_native` module.
        pip("wheel", "--no-deps", "-w", str(out), str(sdists[0]), env={"CC": "/bin/false", "CXX": "/bin/false"})
    found = [p for p in out.glob("*.whl") if _wheel_is(p, name, version)]
    if not found:
        raise BuildError(f"building {name}=={version} from its sdist gave no py3-none-any wheel: {list(out.iterdir())}")
    return found[0]


def rewrite_lock(lock: dict, wheels: dict[str, Path]) -> dict:
    """Point the lock's entries at our files; loadPackage checks each file against its sha256."""
    lock = json.loads(json.dumps(lock))
    for name, path in wheels.items():
        entry = lock["packages"][name]
        version = path.name.split("-")[1]
        if version != entry["version"]:
            raise BuildError(f"{path.name} is not the lock's version {entry['version']} of {name}")
        entry.update(file_name=path.name, sha256=sha256_file(path), version=version)
    return lock


# ---- the realm_web wheel -------------------------------------------------------------------------------------


def _package_files() -> list[Path]:
    """What goes into the browser wheel's build: pyproject, README, licences and the package sources, minus
    models/*.gguf (served separately) and build litter."""
    files = [ROOT / "pyproject.toml", ROOT / "README.md", *sorted(ROOT.glob("LICEN[CS]E*"))]
    for p in sorted((ROOT / "realm_web").rglob("*")):
        rel = p.relative_to(ROOT)
        if p.is_dir() or "__pycache__" in rel.parts or p.suffix in (".pyc", ".gguf"):
            continue
        files.append(p)
    return [f for f in files if f.is_file()]


def build_realm_web_wheel(dest: Path, force: bool) -> Path:
    try:
        st_version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        st_version = "0"
    if int(st_version.split(".")[0]) < 77:
        raise BuildError(f"setuptools {st_version} in {sys.prefix} is too old (>= 77 builds pyproject.toml's "
                         "PEP 639 license): run ./scripts/setup.sh")  # fmt: skip
    files = _package_files()
    h = hashlib.sha256(f"setuptools {st_version} epoch {SOURCE_DATE_EPOCH}\n".encode())
    for f in files:
        h.update(f"{f.relative_to(ROOT).as_posix()}\n".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    digest = h.hexdigest()
    stamp = CACHE / "realm_web.stamp"
    dest.mkdir(parents=True, exist_ok=True)
    if not force and stamp.is_file():
        name = stamp.read_text().split()
        if len(name) == 2 and name[0] == digest and (dest / name[1]).is_file():
            return dest / name[1]

    stage = CACHE / "realm_web-src"
    shutil.rmtree(stage, ignore_errors=True)
    for f in files:
        (stage / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, stage / f.relative_to(ROOT))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(stage),
            env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})  # fmt: skip
        built = list(Path(tmp).glob("realm_web-*.whl"))
        if len(built) != 1:
            raise BuildError(f"pip wheel gave {built}")
        check_realm_web_wheel(built[0])
        for old in dest.glob("realm_web-*.whl"):
            old.unlink()
        wheel = dest / built[0].name
        shutil.move(built[0], wheel)
    shutil.rmtree(stage, ignore_errors=True)
    stamp.write_text(f"{digest} {wheel.name}\n")
    return wheel


def check_realm_web_wheel(path: Path) -> None:
    """Pure, no native-only requirement outside extras, every shipped kernel inside, no model."""
    if not path.name.endswith("-py3-none-any.whl"):
        raise BuildError(f"{path.name} is not a pure-Python wheel")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip
    from packaging.requirements import Requirement

    for req in map(Requirement, requires):
        # as micropip evaluates the markers under Pyodide (no extra asked for)
        if req.name.lower() in NATIVE_ONLY and (req.marker is None or req.marker.evaluate(PYODIDE_MARKERS)):
            raise BuildError(f"{path.name} requires {str(req)!r} in the browser, which has no {req.name}")
    want = {f"realm_web/wgsl/{p.name}" for p in (ROOT / "realm_web" / "wgsl").glob("*.wgsl")}
    if not want or want - set(names):
        raise BuildError(f"{path.name} lacks kernels: {sorted(want - set(names))[:5]}")
    bad = [n for n in names if n.endswith((".gguf", ".so", ".pyc"))]
    if bad:
        raise BuildError(f"{path.name} holds files the browser wheel must not: {bad}")


# ---- the bundle ----------------------------------------------------------------------------------------------


def write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def remove_stale(directory: Path, keep: set[str]) -> None:
    for p in directory.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def build(force: bool = False) -> dict:
    t0 = time.perf_counter()
    if force:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # no manifest = no complete bundle: `realm-web serve` checks it

    pyo = OUT / "pyodide"
    lock, names = copy_pyodide(pyo)
    lock_wheels = fetch_lock_wheels(lock)
    for path in lock_wheels.values():
        dst = pyo / path.name
        if not dst.is_file() or dst.stat().st_size != path.stat().st_size:
            shutil.copy2(path, dst)
        names.add(path.name)
    write_if_changed(pyo / "pyodide-lock.json", json.dumps(rewrite_lock(lock, lock_wheels), indent=1) + "\n")
    names.add("pyodide-lock.json")
    remove_stale(pyo, names)

    wheel = build_realm_web_wheel(OUT / "wheels", force)
    remove_stale(OUT / "wheels", {wheel.name})
    remove_stale(OUT, {"pyodide", "wheels"})

    manifest = {
        "pyodide": "pyodide/",
        "wheels": [f"wheels/{wheel.name}"],
        "realm_web_version": wheel.name.split("-")[1],
        "pyodide_version": pyodide_version(),
    }
    write_if_changed(manifest_path, json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"build_web: {OUT.relative_to(ROOT)}/ ready in {time.perf_counter() - t0:.1f}s: pyodide "
          f"{manifest['pyodide_version']} + {', '.join(p.name for p in lock_wheels.values())}, {wheel.name} "
          f"({wheel.stat().st_size / 1024:.0f} KiB); {size / 2**20:.1f} MiB in all")  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild build/web/ from scratch (downloads stay cached)")
    args = ap.parse_args(argv)
    try:
        build(args.force)
    except BuildError as e:
        print(f"build_web: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
