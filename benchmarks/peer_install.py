"""Benchmark peers that need a build of their own, installed on demand under build/peers/ (git-ignored):

    .venv/bin/python benchmarks/peer_install.py llama-vulkan

llama-vulkan: llama-cpp-python LLAMA_VULKAN_VERSION (the version of the CPU peer in .venv) built with ggml's
Vulkan backend into its own virtualenv, build/peers/llama-vulkan/, so .venv keeps the CPU build. Needs the
Debian packages APT_PACKAGES (installed when missing and running as root) and ~15 min on 2 cores. Debian 12's
Vulkan headers (1.3.239) lack VK_EXT_layer_settings, which ggml-vulkan's instance creation uses: when the
installed header lacks it, the sdist is patched to create the instance without layer settings (they only turn
on the validation layer's best-practice checks). Every step is skipped when already done; any failure raises
benchmarks.common.Unavailable naming the build log, build/peers/llama-vulkan-build.log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Unavailable  # noqa: E402

PEERS = ROOT / "build" / "peers"
LLAMA_VULKAN_VERSION = "0.3.36"
LLAMA_VULKAN_VENV = PEERS / "llama-vulkan"
LLAMA_VULKAN_LOG = PEERS / "llama-vulkan-build.log"
APT_PACKAGES = ("mesa-vulkan-drivers", "libvulkan1", "libvulkan-dev", "glslc", "spirv-headers", "glslang-tools")
CMAKE_ARGS = (
    "-DGGML_VULKAN=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DLLAVA_BUILD=OFF"
)
VULKAN_HEADER = Path("/usr/include/vulkan/vulkan_core.h")
GGML_VULKAN_CPP = Path("vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp")

# The block of ggml_vk_instance_init that needs VK_EXT_layer_settings, from its first line to its last.
_LAYER_SETTINGS_FIRST = "    VkBool32 enable_best_practice = layer_settings;\n"
_LAYER_SETTINGS_LAST = (
    "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions, "
    "&layer_setting_info);\n"
)
_PATCH_GUARD = "#if defined(VK_EXT_layer_settings)\n"
_PATCH_ELSE = (
    "#else\n"
    "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);\n"
    "#endif\n"
)

# Exits 0 when llama_cpp imports, is LLAMA_VULKAN_VERSION and has a GPU (here: Vulkan) backend.
_CHECK = (
    "import sys, llama_cpp; "
    f"sys.exit(0 if llama_cpp.__version__ == {LLAMA_VULKAN_VERSION!r} and llama_cpp.llama_supports_gpu_offload() "
    "else 1)"
)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def llama_vulkan_ready() -> bool:
    """Whether build/peers/llama-vulkan/ already imports a Vulkan build of llama-cpp-python LLAMA_VULKAN_VERSION.
    ggml-vulkan lists lavapipe only when asked to (it skips CPU-type devices), hence GGML_VK_VISIBLE_DEVICES."""
    python = venv_python(LLAMA_VULKAN_VENV)
    if not python.exists():
        return False
    env = {**os.environ, "GGML_VK_VISIBLE_DEVICES": os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")}
    try:
        return subprocess.run([python, "-c", _CHECK], env=env, capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _missing_apt_packages(packages: tuple[str, ...]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise Unavailable(f"no dpkg-query: install the equivalents of {' '.join(packages)} by hand")
    missing = []
    for p in packages:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if q.returncode != 0 or not q.stdout.endswith(" installed"):
            missing.append(p)
    return missing


def _run_logged(args: list, log: Path, what: str, env: dict | None = None) -> None:
    """Run `args`, appending its output to `log`; a failure raises Unavailable naming `what` and the log."""
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, args))}\n")
        f.flush()
        p = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    if p.returncode != 0:
        raise Unavailable(f"{what} failed (exit {p.returncode}); see {log}")


def _patch_layer_settings(source: Path) -> bool:
    """Guard ggml-vulkan's use of VK_EXT_layer_settings with #if defined(VK_EXT_layer_settings); True if the file
    changed (False when it already was)."""
    path = source / GGML_VULKAN_CPP
    text = path.read_text()
    if _PATCH_GUARD in text:
        return False
    start = text.find(_LAYER_SETTINGS_FIRST)
    end = text.find(_LAYER_SETTINGS_LAST, start)
    if start < 0 or end < 0:
        raise Unavailable(f"the VK_EXT_layer_settings block of {path} is not where it was in 0.3.36; patch it by hand")
    end += len(_LAYER_SETTINGS_LAST)
    path.write_text(text[:start] + _PATCH_GUARD + text[start:end] + _PATCH_ELSE + text[end:])
    return True


def ensure_llama_vulkan(log=print) -> Path:
    """Install llama-cpp-python LLAMA_VULKAN_VERSION with the Vulkan backend into build/peers/llama-vulkan/ unless
    it is there already; returns that virtualenv's python. `log` gets one line per step taken."""
    python = venv_python(LLAMA_VULKAN_VENV)
    if llama_vulkan_ready():
        return python
    PEERS.mkdir(parents=True, exist_ok=True)
    LLAMA_VULKAN_LOG.write_text("")
    missing = _missing_apt_packages(APT_PACKAGES)
    if missing:
        cmd = f"apt-get install -y {' '.join(missing)}"
        if os.geteuid() != 0:
            raise Unavailable(f"llama.cpp-Vulkan needs Debian packages; as root run: {cmd}")
        log(f"llama-vulkan: {cmd}")
        _run_logged(cmd.split(), LLAMA_VULKAN_LOG, "apt-get install")
        if _missing_apt_packages(APT_PACKAGES):
            raise Unavailable(f"{cmd} did not install {' '.join(_missing_apt_packages(APT_PACKAGES))}")

    src_dir = PEERS / "src"
    sdist = src_dir / f"llama_cpp_python-{LLAMA_VULKAN_VERSION}.tar.gz"
    source = src_dir / f"llama_cpp_python-{LLAMA_VULKAN_VERSION}"
    if not sdist.exists():
        log(f"llama-vulkan: downloading the llama-cpp-python {LLAMA_VULKAN_VERSION} sdist")
        _run_logged([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                     f"llama-cpp-python=={LLAMA_VULKAN_VERSION}", "-d", src_dir],
                    LLAMA_VULKAN_LOG, "downloading the sdist")  # fmt: skip
    if not (source / GGML_VULKAN_CPP).exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src_dir, filter="data")
    header = VULKAN_HEADER.read_text() if VULKAN_HEADER.exists() else ""
    if "VK_EXT_layer_settings" not in header and _patch_layer_settings(source):
        log(f"llama-vulkan: {VULKAN_HEADER} lacks VK_EXT_layer_settings; patched {GGML_VULKAN_CPP}")

    if not python.exists():
        log(f"llama-vulkan: creating the virtualenv {LLAMA_VULKAN_VENV}")
        _run_logged([sys.executable, "-m", "venv", LLAMA_VULKAN_VENV], LLAMA_VULKAN_LOG, "creating the virtualenv")
    log(f"llama-vulkan: building llama-cpp-python {LLAMA_VULKAN_VERSION} with Vulkan (~15 min on 2 cores); "
        f"log: {LLAMA_VULKAN_LOG}")  # fmt: skip
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    _run_logged([python, "-m", "pip", "install", "--no-cache-dir", "--verbose", source], LLAMA_VULKAN_LOG,
                f"building llama-cpp-python {LLAMA_VULKAN_VERSION} with Vulkan", env=env)  # fmt: skip
    if not llama_vulkan_ready():
        raise Unavailable(f"llama-cpp-python built but does not offload to Vulkan (no device?); see {LLAMA_VULKAN_LOG}")
    log(f"llama-vulkan: ready ({python})")
    return python


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", choices=("llama-vulkan",))
    ap.parse_args(argv)
    try:
        print(ensure_llama_vulkan())
    except Unavailable as e:
        print(f"unavailable: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
