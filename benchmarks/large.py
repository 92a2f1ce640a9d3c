"""A model larger than 4 GiB (wasm32's whole address space), natively and in Chromium: Llama-3-8B's shape in
Q4_K_M (4.58 GiB, random but valid blocks, made on demand by benchmarks/models.py).

    .venv/bin/python benchmarks/large.py [--native] [--browser] [--tokens 4]

- native: `realm_web.load` on this machine's adapter (lavapipe here, whose "GPU" buffers are host memory): load
  time and GB/s from disk to the GPU, the process's peak RSS during the load with the device's own buffers
  reported apart (what the loader itself holds beyond them is the chunk), then greedy tokens of a fixed prompt.
- browser: headless Chromium (SwiftShader here) through the public SDK (`createEngine` on the page, so the Pyodide
  heap can be read): once streaming the file with HTTP Range reads (`useCache: false`), once from the OPFS cache
  (downloaded and SHA-256-verified first), each a fresh engine: load time and GB/s, the wasm heap's size after the
  load and after generating (a WebAssembly memory only grows: that is its peak), the same greedy tokens.
Each part runs in its own child process; results go to build/bench-results/large-*.json and stdout. Also run by
`pytest -m large` (tests/test_large.py), which checks the tokens against llama.cpp's where it is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_child, save_results  # noqa: E402

PROMPT = "The capital of France is"
MODEL_ID = "realm-bench-8b-q4_k_m"


def model_path() -> Path:
    from benchmarks.models import ensure_models

    (path,) = ensure_models(sizes=("8b",), mixes=("q4_k_m",))
    return path


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def native(n_tokens: int) -> dict:
    import realm_web

    path = model_path()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.02)

    rss0 = _rss()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    model = realm_web.load(str(path), n_ctx=128, n_parallel=1)
    load_s = time.perf_counter() - t0
    stop.set()
    th.join()
    dev = model.device
    buffers = dev.allocated_bytes()
    ids = model.tokenize(PROMPT)
    t1 = time.perf_counter()
    out = list(model.generate(ids, max_tokens=n_tokens, temperature=0, ignore_eos=True).ids())
    gen_s = time.perf_counter() - t1
    info = dev.info.name
    model.close()
    size = path.stat().st_size
    return {"where": "native", "adapter": info, "file_bytes": size, "load_s": load_s,
            "load_gb_s": size / load_s / 1e9, "rss_before": rss0, "rss_peak_load": peak[0],
            "device_buffer_bytes": buffers, "host_beyond_buffers": peak[0] - rss0 - buffers, "prompt_ids": ids,
            "tokens": out, "gen_s": gen_s}  # fmt: skip


_BROWSER_JS = """async ([record, nTokens, prompt]) => {
    const sdk = await import('/js/index.js');
    const out = {};
    for (const [mode, useCache] of [['range', false], ['opfs', true], ['opfs-cached', true]]) {
      try {
        const t0 = performance.now();
        const engine = await sdk.createEngine(record.id, { useWorker: false, appConfig: { models: [record], useCache,
                                                                                       n_ctx: 128 } });
        const loadMs = performance.now() - t0;
        const py = engine._client.host.model.runtime.py;
        const heap = () => py._module.HEAP8.buffer.byteLength;
        const heapLoaded = heap();
        const stats = await engine.runtimeStats();
        const info = engine.modelInfo;  // the adapter's own limits, requested whole, the weights split to them
        const r = { loadMs, heapAfterLoad: heapLoaded, source: stats.load.source, load: stats.load,
                    adapter: info.adapter, maxStorageBinding: info.max_storage_binding, maxBuffer: info.max_buffer };
        if (mode !== 'opfs') {  // the first OPFS load only downloads and verifies: its engine is not used
            const ids = await engine.tokenize(prompt);
            const g = await engine.generate(prompt, { maxTokens: nTokens, temperature: 0 });
            r.promptIds = ids;
            r.text = g.text;
            r.usage = g.usage;
        }
        r.heapPeak = heap();
        out[mode] = r;
        await engine.unload();
      } catch (e) {
        out[mode] = { error: `${e?.name}: ${e?.message ?? e}` };
      }
    }
    return out;
}"""


def browser(n_tokens: int) -> dict:
    from benchmarks.browser_peers import BASE_ARGS, _Browser
    from realm_web.registry import record_for
    from realm_web.server import make_server

    path = model_path()
    srv = make_server("127.0.0.1", 0, api=False, models=[path]).start()
    record = record_for(path, url=srv.url + f"models/{path.name}")
    try:
        with _Browser("/usr/bin/chromium") as b, tempfile.TemporaryDirectory(dir=ROOT / "build") as profile:
            # a persistent profile: OPFS on disk (a fresh context keeps storage in memory, too small for 4.6 GiB)
            b.browser.close()
            ctx = b._pw.chromium.launch_persistent_context(profile, executable_path=b.chromium, args=BASE_ARGS)
            b.page = ctx.new_page()
            b.page.set_default_timeout(3_600_000)
            b.page.on("console", lambda m: b.console.append(f"{m.type}: {m.text}"))
            b.page.goto(srv.url + "runtime/manifest.json")
            try:
                got = b.evaluate("the 8B model", _BROWSER_JS, [record, n_tokens, PROMPT])
            finally:
                ctx.close()
                b.browser = ctx  # closed again by _Browser's exit: harmless
    finally:
        srv.shutdown()
    size = path.stat().st_size
    for r in got.values():
        r["load_gb_s"] = size / (r["loadMs"] / 1e3) / 1e9
    return {"where": "browser", "file_bytes": size, "runs": got}


def child(part: str, n_tokens: int) -> dict:
    return run_child(__file__, ["--child", part, "--tokens", str(n_tokens)], timeout=7200, tail=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(native(a.tokens) if a.child == "native" else browser(a.tokens)))
        return 0
    parts = [p for p, on in (("native", a.native), ("browser", a.browser)) if on] or ["native", "browser"]
    results = {p: child(p, a.tokens) for p in parts}
    print(json.dumps(results, indent=2))
    out = save_results("large", results)
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
