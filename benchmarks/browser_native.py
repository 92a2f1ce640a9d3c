"""realm_web in the browser beside realm_web native, on the same GGUF, in one run.

    .venv/bin/python benchmarks/browser_native.py [-m MODEL.gguf] [--prompt 64] [--gen 64] [--json]

Native: `realm-web bench`'s measurement (realm_web.bench.bench_model) on wgpu-py's adapter. Browser: the same
function run inside Debian's Chromium (headless, WebGPU; SwiftShader without a GPU) through the JS SDK's
`engine.benchmark()`, the model served by realm_web.serve on 127.0.0.1. Prints both and browser ÷ native.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realm_web.bench import bench_model  # noqa: E402
from realm_web.cli import bundled_model  # noqa: E402

CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def native(path: str, n_prompt: int, n_gen: int) -> dict:
    import realm_web

    t0 = time.perf_counter()
    model = realm_web.load(path)
    return bench_model(model, n_prompt, n_gen, load_s=time.perf_counter() - t0)


def browser(path: str, n_prompt: int, n_gen: int, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    from realm_web.serve import make_server, start_in_thread

    srv = make_server("127.0.0.1", 0, models=[] if path == bundled_model() else [path])
    start_in_thread(srv)
    model_id = Path(path).stem
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = b.new_page()
            page.set_default_timeout(600_000)
            page.goto(srv.url + "runtime/manifest.json")
            res = page.evaluate(
                """async ([id, nPrompt, nGen]) => {
                    const sdk = await import('/js/index.js');
                    const models = await (await fetch('/models/registry.json')).json();
                    const t0 = performance.now();
                    const e = await sdk.createEngine(id, { appConfig: { models } });
                    const load_s = (performance.now() - t0) / 1000;
                    const r = await e.benchmark({ nPrompt, nGen });
                    await e.unload();
                    return { ...r, load_s };
                }""",
                [model_id, n_prompt, n_gen],
            )
            b.close()
            return res
    finally:
        srv.shutdown()
        srv.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=bundled_model())
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--chromium", default=os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    n = native(a.model, a.prompt, a.gen)
    w = browser(a.model, a.prompt, a.gen, a.chromium)
    ratio = {k: w[k] / n[k] for k in ("prefill_tok_s", "decode_tok_s")}
    if a.json:
        print(json.dumps({"native": n, "browser": w, "browser_over_native": ratio}, indent=2))
        return 0
    print(f"model {Path(a.model).name}: {a.prompt}-token prompt, {a.gen} generated tokens (greedy, EOS ignored)")
    print(f"{'':10} {'adapter':44} {'load s':>7} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for name, r in (("native", n), ("browser", w)):
        speeds = f"{r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.1f}"
        print(f"{name:10} {r['adapter'][:44]:44} {r['load_s']:7.2f} {speeds}")
    print(f"{'browser÷native':25} {'':29} {ratio['prefill_tok_s']:14.2f} {ratio['decode_tok_s']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
