"""The native half of the side-by-side benchmark: realm_web on wgpu-py against llama.cpp (llama-cpp-python).

Each engine runs in its own child process (this file, `--engine realm|llama.cpp|llama.cpp-Vulkan`), so its peak
resident memory is the child's own (ru_maxrss from wait4) and one engine's caches never help the other. All get
the same prompt ids and follow benchmarks/common.py's definitions, and report their greedy token ids ("tokens":
the first new token and one per decode step) except realm_web, whose bench_model does not return them.
realm_web's child also measures the adapter's copy bandwidth and the bytes a decode step reads, right after
decoding, for the roofline figure.

llama.cpp: Llama(model, n_ctx, n_threads = n_threads_batch = cores, n_batch ≥ prompt), eval() of the prompt,
then one eval() per token; greedy = argmax of the last logits on the host (what llama.cpp's greedy sampler
does). llama-cpp-python must be built as shared/ENVIRONMENT.md says (see benchmarks/README in BENCHMARKS.md).

llama.cpp-Vulkan: the same measurement with every layer offloaded (n_gpu_layers=-1) to ggml's Vulkan backend on
device 0, which here is lavapipe, the adapter realm_web runs on. It runs in build/peers/llama-vulkan/'s python,
built on first use by benchmarks/peer_install.py. ggml-vulkan skips CPU-type devices such as lavapipe unless
GGML_VK_VISIBLE_DEVICES names them, and falls back to the CPU silently, so the parent reads the child's log and
requires the lines naming the device used and "offloaded N/N layers".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Unavailable  # noqa: E402

LLAMA_CPP_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" '
    ".venv/bin/pip install llama-cpp-python"
)


def _child(engine: str, gguf: str, prompt: list[int], n_gen: int, n_ctx: int, timeout: float,
           python: str | Path = sys.executable, env: dict | None = None, script: str | Path = __file__
           ) -> tuple[dict, str]:  # fmt: skip
    """Run one engine in a child process (`python` running `script`, this file or another checkout's copy, in
    environment `env`); its JSON result plus its peak resident memory, and its stderr (llama.cpp's log, when
    verbose). Output goes to files, so a long log cannot block it."""
    args = [python, str(script), "--engine", engine, "-m", gguf, "--gen", str(n_gen), "--n-ctx", str(n_ctx),
            "--prompt-ids", ",".join(map(str, prompt))]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(args, stdout=out_f, stderr=err_f, text=True, cwd=ROOT, env=env)
        t0 = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise Unavailable(f"{engine} did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    code = os.waitstatus_to_exitcode(status)
    if code == 3:  # the child's way of saying "this engine is not available here"
        raise Unavailable(err.strip().splitlines()[-1] if err.strip() else "unavailable")
    if code != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise Unavailable(f"{engine} failed (exit {code}): {tail}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return r, err


def realm_native(gguf: str, prompt: list[int], n_gen: int, *, n_ctx: int = 512, timeout: float = 3600,
                 script: str | Path = __file__) -> dict:  # fmt: skip
    """realm_web on wgpu-py's adapter; `script`: another checkout's benchmarks/native_peers.py to measure that
    checkout's realm_web (it puts its own root first on sys.path)."""
    return _child("realm", gguf, prompt, n_gen, n_ctx, timeout, script=script)[0]


def llama_cpp(gguf: str, prompt: list[int], n_gen: int, *, n_ctx: int = 512, timeout: float = 3600) -> dict:
    return _child("llama.cpp", gguf, prompt, n_gen, n_ctx, timeout)[0]


def llama_cpp_vulkan(gguf: str, prompt: list[int], n_gen: int, *, n_ctx: int = 512, timeout: float = 3600) -> dict:
    """llama.cpp with every layer on Vulkan device 0 (lavapipe here); installs the peer on first use. Unavailable
    unless its log shows that device in use and all layers offloaded."""
    from benchmarks.peer_install import ensure_llama_vulkan

    python = ensure_llama_vulkan()
    env = {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"}
    r, log = _child("llama.cpp-Vulkan", gguf, prompt, n_gen, n_ctx, timeout, python=python, env=env)
    r["adapter"] = f"{_vulkan_offload(log)} ({r['adapter']})"
    return r


def _vulkan_offload(log: str) -> str:
    """From llama.cpp's log: "Vulkan0 <device>, N/N layers offloaded", or Unavailable saying what the log showed
    instead (the device line or its absence, the offload line or its absence)."""
    device = re.search(r"using device (Vulkan\d+) \((.+?)\) \(", log)
    offload = re.search(r"offloaded (\d+)/(\d+) layers", log)
    if device and offload and offload[1] == offload[2]:
        return f"{device[1]} {device[2]}, {offload[1]}/{offload[2]} layers offloaded"
    shown = [line.strip() for line in log.splitlines() if re.search(r"using device|offloaded|ggml_vulkan", line)]
    raise Unavailable("llama.cpp-Vulkan did not run every layer on a Vulkan device; its log shows: "
                      + (" | ".join(shown) or "no Vulkan device and no offload line"))  # fmt: skip


# -- in the child ---------------------------------------------------------------------------------------------
def _run_realm(gguf: str, prompt: list[int], n_gen: int, n_ctx: int) -> dict:
    import realm_web
    from realm_web.bench import bench_model, copy_bandwidth, decode_bytes

    t0 = time.perf_counter()
    model = realm_web.load(gguf, n_ctx=n_ctx)
    load_s = time.perf_counter() - t0
    r = bench_model(model, n_gen=n_gen, load_s=load_s, prompt=prompt)
    mid = len(prompt) + n_gen // 2  # the mean position of the decode steps
    return {
        "engine": "realm_web native",
        "adapter": f"{model.device.info.name} ({model.device.info.backend})",
        **{k: r[k] for k in ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "n_prompt", "n_gen")},
        "decode_bytes": decode_bytes(model, mid),
        "copy_gbps": copy_bandwidth(model.device) / 1e9,
    }


def _run_llama_cpp(gguf: str, prompt: list[int], n_gen: int, n_ctx: int, vulkan: bool = False) -> dict:
    """`vulkan`: offload every layer (to the Vulkan build's device) and log to stderr for the parent to check."""
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        build = "benchmarks/peer_install.py llama-vulkan" if vulkan else LLAMA_CPP_BUILD
        print(f"llama-cpp-python is not installed ({e}); build it with: {build}", file=sys.stderr)
        sys.exit(3)
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(gguf, n_ctx=n_ctx, n_batch=max(512, len(prompt)), n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=-1 if vulkan else 0, verbose=vulkan)  # fmt: skip
    load_s = time.perf_counter() - t0

    n_vocab = llm.n_vocab()

    def greedy() -> int:  # the last evaluated position's logits (llm.scores stays zero without logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    llm.eval(prompt)  # warm-up on the same prompt, as realm_web's bench does (Vulkan builds pipelines on first use)
    llm.eval([greedy()])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tokens = [greedy()]
    t1 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval(tokens[-1:])
        tokens.append(greedy())
    t2 = time.perf_counter()
    version = f"llama-cpp-python {llama_cpp.__version__}"
    return {
        "engine": "llama.cpp-Vulkan native" if vulkan else "llama.cpp native",
        "adapter": version if vulkan else f"CPU, {threads} threads ({version})",  # the parent adds the device
        "load_s": load_s,
        "ttft_s": t1 - t0,
        "prefill_tok_s": len(prompt) / (t1 - t0),
        "decode_tok_s": n_gen / (t2 - t1),
        "n_prompt": len(prompt),
        "n_gen": n_gen,
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("realm", "llama.cpp", "llama.cpp-Vulkan"), required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=512)
    a = ap.parse_args(argv)
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    if a.engine == "realm":
        r = _run_realm(a.model, prompt, a.gen, a.n_ctx)
    else:
        r = _run_llama_cpp(a.model, prompt, a.gen, a.n_ctx, vulkan=a.engine == "llama.cpp-Vulkan")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
