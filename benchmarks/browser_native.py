"""realm_web in the browser beside realm_web native, on the same GGUF, in one run.

    .venv/bin/python benchmarks/browser_native.py [-m MODEL.gguf] [--prompt 64] [--gen 64] [--json] [--profile]

Native: `realm-web bench`'s measurement (realm_web.bench.bench_model) on wgpu-py's adapter. Browser: the same
function run inside Debian's Chromium (headless, WebGPU; SwiftShader without a GPU) through the JS SDK's
`engine.benchmark()` (benchmarks/browser_peers.realm_browser), on the same prompt ids. Prints both and
browser ÷ native. `--profile`: instead, `realm-web bench --profile`'s report (GPU time per kernel of a decode step,
host time per step) natively and in Chromium (the SDK's engine.benchmark({profile: true})), `--gen` steps each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bench_prompt  # noqa: E402
from realm_web.bench import bench_model  # noqa: E402
from realm_web.cli import bundled_model  # noqa: E402


def native(path: str, n_prompt: int, n_gen: int) -> tuple[dict, list[int]]:
    """realm_web native on `path`, and the prompt ids it used (the browser gets the same ids)."""
    import realm_web

    t0 = time.perf_counter()
    model = realm_web.load(path)
    load_s = time.perf_counter() - t0
    prompt = bench_prompt(min(n_prompt, model.n_ctx - n_gen - 1), model.config.n_vocab, model.tokenizer.bos_id)
    return bench_model(model, n_gen=n_gen, load_s=load_s, prompt=prompt), prompt


def browser(path: str, prompt: list[int], n_gen: int, chromium: str) -> dict:
    """The same measurement in Chromium through the SDK: benchmarks/browser_peers.realm_browser."""
    from benchmarks.browser_peers import realm_browser

    return realm_browser(path, prompt, n_gen, chromium=chromium)


def profiles(path: str, n_prompt: int, n_steps: int, chromium: str, as_json: bool) -> int:
    """realm_web.profile's report of a decode step natively and in Chromium, printed one after the other."""
    import realm_web
    from benchmarks.browser_peers import realm_browser_profile
    from realm_web.profile import format_profile, profile_decode

    model = realm_web.load(path)
    try:
        native_report = profile_decode(model, n_steps=n_steps, n_prompt=n_prompt)
    finally:
        model.close()
    browser_report = realm_browser_profile(path, n_prompt, n_steps, chromium=chromium)
    if as_json:
        print(json.dumps({"native": native_report, "browser": browser_report}, indent=2))
        return 0
    for name, r in (("native", native_report), ("browser (Chromium, SDK)", browser_report)):
        print(f"== {name}\n{format_profile(r)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=bundled_model())
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--chromium", default=os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-kernel GPU time of a decode step, both sides")
    a = ap.parse_args(argv)
    if a.profile:
        return profiles(a.model, a.prompt, a.gen, a.chromium, a.json)
    n, prompt = native(a.model, a.prompt, a.gen)
    w = browser(a.model, prompt, a.gen, a.chromium)
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
