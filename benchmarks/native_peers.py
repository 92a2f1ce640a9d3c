"""The native half of the side-by-side benchmark: realm_web on wgpu-py against llama.cpp (llama-cpp-python).

Each engine runs in its own child process (this file, `--engine realm|llama.cpp`), so its peak resident memory
is the child's own (ru_maxrss from wait4) and one engine's caches never help the other. Both get the same
prompt ids and follow benchmarks/common.py's definitions. realm_web's child also measures the adapter's copy
bandwidth and the bytes a decode step reads, right after decoding, for the roofline figure.

llama.cpp: Llama(model, n_ctx, n_threads = n_threads_batch = cores, n_batch ≥ prompt), eval() of the prompt,
then one eval() per token; greedy = argmax of the last logits on the host (what llama.cpp's greedy sampler
does). llama-cpp-python must be built as shared/ENVIRONMENT.md says (see benchmarks/README in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Unavailable  # noqa: E402

LLAMA_CPP_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" '
    ".venv/bin/pip install llama-cpp-python"
)


def _child(engine: str, gguf: str, prompt: list[int], n_gen: int, n_ctx: int, timeout: float) -> dict:
    """Run one engine in a child process; its JSON result plus its peak resident memory."""
    args = [sys.executable, __file__, "--engine", engine, "-m", gguf, "--gen", str(n_gen), "--n-ctx", str(n_ctx),
            "--prompt-ids", ",".join(map(str, prompt))]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    t0 = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise Unavailable(f"{engine} did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    out, err = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code == 3:  # the child's way of saying "this engine is not available here"
        raise Unavailable(err.strip().splitlines()[-1] if err.strip() else "unavailable")
    if code != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise Unavailable(f"{engine} failed (exit {code}): {tail}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return r


def realm_native(gguf: str, prompt: list[int], n_gen: int, *, n_ctx: int = 512, timeout: float = 3600) -> dict:
    return _child("realm", gguf, prompt, n_gen, n_ctx, timeout)


def llama_cpp(gguf: str, prompt: list[int], n_gen: int, *, n_ctx: int = 512, timeout: float = 3600) -> dict:
    return _child("llama.cpp", gguf, prompt, n_gen, n_ctx, timeout)


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


def _run_llama_cpp(gguf: str, prompt: list[int], n_gen: int, n_ctx: int) -> dict:
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        print(f"llama-cpp-python is not installed ({e}); build it with: {LLAMA_CPP_BUILD}", file=sys.stderr)
        sys.exit(3)
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(gguf, n_ctx=n_ctx, n_batch=max(512, len(prompt)), n_threads=threads,
                          n_threads_batch=threads, verbose=False)  # fmt: skip
    load_s = time.perf_counter() - t0

    def greedy() -> int:
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    llm.eval(prompt[:8])  # warm-up, as realm_web's bench does
    llm.eval([greedy()])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = greedy()
    t1 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([tok])
        tok = greedy()
    t2 = time.perf_counter()
    return {
        "engine": "llama.cpp native",
        "adapter": f"CPU, {threads} threads (llama-cpp-python {llama_cpp.__version__})",
        "load_s": load_s,
        "ttft_s": t1 - t0,
        "prefill_tok_s": len(prompt) / (t1 - t0),
        "decode_tok_s": n_gen / (t2 - t1),
        "n_prompt": len(prompt),
        "n_gen": n_gen,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("realm", "llama.cpp"), required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=512)
    a = ap.parse_args(argv)
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    run = _run_realm if a.engine == "realm" else _run_llama_cpp
    print(json.dumps(run(a.model, prompt, a.gen, a.n_ctx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
