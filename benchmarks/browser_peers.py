"""The browser half of the side-by-side benchmark: realm_web's JS SDK and wllama (2.x and 3.x), in headless Chromium.

    .venv/bin/python benchmarks/browser_peers.py [-m MODEL.gguf] [--prompt 64] [--gen 32] [--chromium PATH]
                                                 [--engines realm_browser,wllama,wllama3]

All engines get the same GGUF file (served from 127.0.0.1) and the same prompt token ids (wllama 3.x: a text of
exactly as many tokens, see below), and are measured as `common` defines: load_s from the engine's create/load
call to ready (the download from the local server, the browser-cache copy and any hashing included), ttft_s from
submitting the prompt to having the first new token on the page, prefill_tok_s = n_prompt / ttft_s, decode_tok_s =
n_gen one-token greedy steps (EOS ignored) ÷ their time. Each engine gets its own fresh headless Chromium (a new
profile, so nothing is cached), and peak_rss_mb is the peak over load and benchmark of the summed proportional set
size (PSS) of that Chromium's processes (browser, GPU, renderer, workers), so pages they share count once.

realm_browser: realm_web's SDK (`createEngine` with the server's registry, then `engine.benchmark({promptIds,
nGen})`, which runs realm_web.bench.bench_model under Pyodide on the browser's WebGPU adapter; SwiftShader
without a GPU). Its timings are taken inside the engine's worker, around the prefill and decode calls.

wllama: `@wllama/wllama` 2.x (llama.cpp compiled to wasm; CPU; pinned in benchmarks/web/package.json, installed
with `npm ci` on first use), multithreaded with os.cpu_count() threads: the harness page is served
cross-origin isolated (COOP/COEP), which SharedArrayBuffer and so wasm threads need. Its low-level API takes token
ids (decode, samplingSample, samplingAccept); the page times prefill (decode of the ids, then sampling the first
token) and each decode step itself (benchmarks/web/wllama_bench.js).

wllama3: wllama 3.x (the npm alias `wllama3` beside 2.x; llama.cpp's server loop in wasm, with llama.cpp's WebGPU
backend), same page, threads and install. 3.x takes text only (its server loop rejects a prompt of ids), so it gets
`common.bench_text`: a text that the model's tokenizer (realm_web's, which matches llama.cpp's) turns into exactly
n_prompt tokens, BOS included; llama.cpp's own count (usage.prompt_tokens, timings.prompt_n, nothing cached) is
checked. One streamed completion of n_gen + 1 tokens (temperature 0, ignore_eos, cache_prompt off) is timed on the
page: ttft to the first chunk carrying a token, decode from there to the last (benchmarks/web/wllama3_bench.js);
llama.cpp's own timings go into "notes". It is asked to put every layer on WebGPU (n_gpu_layers), but llama.cpp's
WebGPU backend needs shader-f16, which SwiftShader lacks: wllama 3 then silently runs its wasm CPU path while
isSupportWebGPU() says true. So "adapter" is read from llama.cpp's log (`ggml_webgpu: adapter_info`, each layer's
"assigned to device ..."), the page's adapter and its shader-f16 go into "webgpu_adapter" and "shader_f16", and the
log lines into "device_log".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if __package__:
    from .common import PeakRSS, Unavailable, _procs, bench_prompt, bench_text, descendants
else:  # run as a script, or imported with benchmarks/ on sys.path
    from common import PeakRSS, Unavailable, _procs, bench_prompt, bench_text, descendants  # type: ignore[no-redef]

WEB = Path(__file__).resolve().parent / "web"
WLLAMA_PKG = WEB / "node_modules" / "@wllama" / "wllama"  # 2.x
WLLAMA3_PKG = WEB / "node_modules" / "wllama3"  # 3.x, installed beside it under an npm alias
WLLAMA_MAX_BYTES = 2**31 - 1  # wllama README: one file must fit an ArrayBuffer (2 GB); bigger needs splitting
BASE_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--disable-default-apps", "--disable-extensions", "--enable-unsafe-webgpu",
]  # fmt: skip
TIMEOUT_MS = 3 * 3600 * 1000  # SwiftShader and wasm are slow: a 1B model can decode well under 1 token/s
ISOLATION = {  # cross-origin isolation, which SharedArrayBuffer (wasm threads) needs
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def n_ctx_for(n_prompt: int, n_gen: int) -> int:
    """The context both engines allocate: prompt + generated tokens + 16, rounded up to a multiple of 256."""
    return -(-(n_prompt + n_gen + 16) // 256) * 256


def _chromium_pid(before: set[int]) -> int:
    """The main process of the Chromium Playwright just launched: a new `chromium` process below this one whose
    parent is not Chromium (the others are its GPU, renderer, utility and zygote processes)."""
    procs = _procs()
    mine = [p for p in descendants(os.getpid(), procs) if p not in before and p in procs]
    roots = [p for p in mine if procs[p][2].startswith("chromium") and not procs[procs[p][0]][2].startswith("chromium")]
    if not roots:
        raise Unavailable("could not find the launched Chromium's process under this one (needed for peak memory)")
    return max(roots)


class _Browser:
    """A fresh headless Chromium (own profile) and one page; `.pid` is its main process for PeakRSS."""

    def __init__(self, chromium: str):
        self.chromium = chromium
        self.console: list[str] = []

    def __enter__(self) -> _Browser:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise Unavailable(f"Python Playwright is not installed: {e}") from None
        if not Path(self.chromium).is_file():
            raise Unavailable(f"no Chromium at {self.chromium}")
        before = set(descendants(os.getpid()))
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=self.chromium, args=BASE_ARGS)
        except Exception as e:
            self._pw.stop()
            raise Unavailable(f"Chromium did not start: {str(e).splitlines()[0]}") from None
        self.pid = _chromium_pid(before)
        self.page = self.browser.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        return self

    def evaluate(self, what: str, script: str, arg: object) -> dict:
        """Run `script` on the page; a JS error or a crash becomes Unavailable naming `what`."""
        from playwright.sync_api import Error

        try:
            return self.page.evaluate(script, arg)
        except Error as e:
            tail = "\n".join(self.console[-10:])
            raise Unavailable(
                f"{what} failed in Chromium: {e.message.strip()}" + (f"\n{tail}" if tail else "")
            ) from None

    def __exit__(self, *exc) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()


def _read_model(gguf: str) -> dict:
    """What the CLI's prompt needs from the file: the vocabulary size and the BOS id."""
    from realm_web.gguf import open_gguf

    md = open_gguf(gguf).metadata
    return {"n_vocab": len(md.get("tokenizer.ggml.tokens") or ()), "bos": md.get("tokenizer.ggml.bos_token_id")}


def _result(engine: str, r: dict, n_prompt: int, n_gen: int, peak_mb: float, adapter: str, notes: str) -> dict:
    ttft, decode_s = r["ttft_s"], r["decode_s"]
    return {
        "engine": engine,
        "load_s": r["load_s"],
        "ttft_s": ttft,
        "prefill_tok_s": n_prompt / ttft,
        "decode_tok_s": n_gen / decode_s,
        "peak_rss_mb": peak_mb,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "adapter": adapter,
        "notes": notes,
    }


# -- realm_web in the browser -----------------------------------------------------------------------------------

_REALM_JS = """async ([id, promptIds, nGen, nCtx]) => {
    const sdk = await import('/js/index.js');
    const models = await (await fetch('/models/registry.json')).json();
    const t0 = performance.now();
    const engine = await sdk.createEngine(id, { appConfig: { models, n_ctx: nCtx } });
    const load_s = (performance.now() - t0) / 1000;
    const stats = await engine.runtimeStats();
    const r = await engine.benchmark({ promptIds, nGen });
    await engine.unload();
    return { ...r, load_s, load: stats.load };
}"""


def realm_browser(gguf: str, prompt: list[int], n_gen: int, *, chromium: str = "/usr/bin/chromium") -> dict:
    """realm_web's JS SDK in headless Chromium (WebGPU): load from the local server, then engine.benchmark with
    the exact prompt ids. ttft_s and decode times come from realm_web.bench.bench_model inside the engine."""
    from realm_web.errors import RealmError
    from realm_web.server import make_server

    try:
        srv = make_server("127.0.0.1", 0, models=[gguf], bundled=False, api=False)
    except RealmError as e:
        raise Unavailable(f"realm_web cannot serve {gguf}: {e}") from None
    record = srv.registry[0]
    if record.get("error"):
        srv.socket.close()
        raise Unavailable(f"realm_web cannot run {Path(gguf).name}: {record['error']}")
    srv.start()
    try:
        with _Browser(chromium) as b, PeakRSS(b.pid, interval=0.1, pss=True) as mem:
            b.page.goto(srv.url + "runtime/manifest.json")
            n_ctx = n_ctx_for(len(prompt), n_gen)
            r = b.evaluate("realm_web", _REALM_JS, [record["id"], list(prompt), n_gen, n_ctx])
    finally:
        srv.shutdown()
    if r["n_prompt"] != len(prompt) or r["n_gen"] != n_gen:
        raise Unavailable(f"realm_web measured {r['n_prompt']}+{r['n_gen']} tokens, not {len(prompt)}+{n_gen}")
    r["decode_s"] = n_gen / r["decode_tok_s"]
    ld = r.get("load") or {}
    secs = {k: ld.get(f"{k}Ms", 0) / 1e3 for k in ("download", "runtime", "upload")}
    notes = f"WebGPU via Pyodide; n_ctx {n_ctx}; load: source {ld.get('source')}, " + ", ".join(
        f"{k} {v:.2f} s" for k, v in secs.items()
    )
    return _result("realm_web (browser)", r, len(prompt), n_gen, mem.peak_mb, r["adapter"], notes)


_PROFILE_JS = """async ([id, nPrompt, nSteps, nCtx]) => {
    const sdk = await import('/js/index.js');
    const models = await (await fetch('/models/registry.json')).json();
    const engine = await sdk.createEngine(id, { appConfig: { models, n_ctx: nCtx } });
    const r = await engine.benchmark({ nPrompt, nGen: nSteps, profile: true });
    await engine.unload();
    return r;
}"""


def realm_browser_profile(gguf: str, n_prompt: int, n_steps: int, *, chromium: str = "/usr/bin/chromium") -> dict:
    """`realm-web bench --profile` in headless Chromium through the SDK (engine.benchmark({profile: true})): GPU
    time per kernel of a decode step on the browser's adapter, and host time per step (realm_web.profile's report,
    printable with realm_web.profile.format_profile)."""
    from realm_web.server import make_server

    srv = make_server("127.0.0.1", 0, models=[gguf], bundled=False, api=False)
    record = srv.registry[0]
    if record.get("error"):
        srv.socket.close()
        raise Unavailable(f"realm_web cannot run {Path(gguf).name}: {record['error']}")
    srv.start()
    try:
        with _Browser(chromium) as b:
            b.page.goto(srv.url + "runtime/manifest.json")
            return b.evaluate("realm_web profile", _PROFILE_JS, [record["id"], n_prompt, n_steps,
                                                                 n_ctx_for(n_prompt, n_steps + 8)])  # fmt: skip
    finally:
        srv.shutdown()


# -- wllama -----------------------------------------------------------------------------------------------------


def _install_wllama(pkg: Path) -> str:
    """Install benchmarks/web's pinned packages (npm ci) when `pkg` is missing; the installed version of `pkg`."""
    import subprocess

    if not (pkg / "package.json").is_file():
        try:
            p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, capture_output=True, text=True,
                               timeout=600)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"npm ci in {WEB} failed: {e}") from None
        if p.returncode != 0 or not (pkg / "package.json").is_file():
            err = (p.stderr or p.stdout).strip().splitlines()[-5:]
            raise Unavailable(f"npm ci in {WEB} failed (exit {p.returncode}): " + " | ".join(err))
    return json.loads((pkg / "package.json").read_text())["version"]


def _wllama_server(gguf: str):
    """A server on 127.0.0.1 for the harness (benchmarks/web/, cross-origin isolated) and /models/NAME (Range)."""
    from realm_web.server import file_server

    path = Path(gguf).resolve()
    srv = file_server({"/": WEB}, {path.name: path}, headers=ISOLATION).start()
    return srv, f"{srv.url}models/{path.name}"


_WLLAMA_JS = """async ({ module, ...args }) => {
    if (!self.crossOriginIsolated && args.nThreads > 1) throw new Error('the page is not cross-origin isolated');
    return (await import(module)).run(args);
}"""


def _run_wllama(what: str, pkg: Path, module: str, gguf: str, args: dict, chromium: str) -> tuple[dict, float, str]:
    """Run benchmarks/web/`module`'s run(args) in a fresh Chromium on the cross-origin isolated harness page, with
    os.cpu_count() threads and the model at args["modelUrl"]: (its result, peak PSS in MiB, wllama's version)."""
    size = Path(gguf).stat().st_size
    if size > WLLAMA_MAX_BYTES:
        raise Unavailable(f"{Path(gguf).name} is {size / 2**30:.2f} GiB: wllama loads one file only up to 2 GB "
                          "(ArrayBuffer limit); the model would have to be split with llama-gguf-split")  # fmt: skip
    version = _install_wllama(pkg)
    srv, model_url = _wllama_server(gguf)
    try:
        with _Browser(chromium) as b, PeakRSS(b.pid, interval=0.1, pss=True) as mem:
            b.page.goto(srv.url + "wllama.html")
            r = b.evaluate(what, _WLLAMA_JS, {"module": module, "modelUrl": model_url,
                                              "nThreads": os.cpu_count() or 1, **args})  # fmt: skip
    finally:
        srv.shutdown()
    return r, mem.peak_mb, version


def _threads(r: dict) -> str:
    threads = r["threads"] if r["multithread"] else 1
    return f"{threads} thread{'s' * (threads != 1)}"


def wllama(gguf: str, prompt: list[int], n_gen: int, *, chromium: str = "/usr/bin/chromium") -> dict:
    """wllama (llama.cpp in wasm, CPU, os.cpu_count() threads) in headless Chromium: loadModelFromUrl from the
    local server, then its low-level API (decode, samplingSample, samplingAccept) on the exact prompt ids, greedy,
    timed on the page (benchmarks/web/wllama_bench.js)."""
    n_ctx = n_ctx_for(len(prompt), n_gen)
    args = {"prompt": list(prompt), "nGen": n_gen, "nCtx": n_ctx}
    r, peak_mb, version = _run_wllama("wllama", WLLAMA_PKG, "/wllama_bench.js", gguf, args, chromium)
    if len(r["ids"]) != n_gen + 1:
        raise Unavailable(f"wllama produced {len(r['ids'])} tokens, not {n_gen + 1}")
    adapter = f"wasm (llama.cpp {r['libllama']}), {_threads(r)}"
    notes = f"wllama {version}, CPU, n_ctx {r['n_ctx']}, cross-origin isolated: {r['cross_origin_isolated']}"
    return _result("wllama", r, len(prompt), n_gen, peak_mb, adapter, notes)


def _wllama3_device(r: dict) -> str:
    """What wllama 3 really ran on, from llama.cpp's load log: WebGPU prints `ggml_webgpu: adapter_info ...` and
    assigns layers to its device; otherwise every layer is "assigned to device CPU" (wasm)."""
    import re

    lines = r["device_log"]
    layers = [m.group(1) for line in lines if (m := re.search(r"assigned to device (\S+?),", line))]
    info = next((line.split("adapter_info:", 1)[1].strip() for line in lines if "adapter_info:" in line), None)
    gpu_layers = sum(dev != "CPU" for dev in layers)
    cpu = f"{_threads(r)}, llama.cpp {r['libllama']}"
    if gpu_layers or info:
        m = re.search(r"name: ([^|]*)", info or "")
        name = (m.group(1).strip() if m else info) or "unnamed"
        return f"WebGPU ({name}; {gpu_layers}/{len(layers)} layers), {cpu}"
    page = r["adapter"]
    why = ("no WebGPU adapter" if page is None else "adapter lacks shader-f16" if not page["shader_f16"]
           else "llama.cpp's WebGPU backend did not take the adapter")  # fmt: skip
    if not layers:
        raise Unavailable("wllama 3's log names no device for its layers (no 'assigned to device' line)")
    return f"wasm CPU (WebGPU backend not used: {why}), {cpu}"


def wllama3(gguf: str, prompt: list[int], n_gen: int, *, chromium: str = "/usr/bin/chromium") -> dict:
    """wllama 3.x (llama.cpp's server loop in wasm, with its WebGPU backend, os.cpu_count() threads) in headless
    Chromium: loadModelFromUrl from the local server with every layer asked on WebGPU (n_gpu_layers), then one
    streamed greedy completion (EOS ignored) of a text that the model's tokenizer turns into exactly len(prompt)
    tokens (3.x takes text only; the count is checked against llama.cpp's), timed on the page
    (benchmarks/web/wllama3_bench.js). "adapter" says the device it really used, read from llama.cpp's log."""
    from realm_web.gguf import open_gguf
    from realm_web.tokenizer import Tokenizer

    n_prompt, n_ctx = len(prompt), n_ctx_for(len(prompt), n_gen)
    tokenize = Tokenizer.from_gguf(open_gguf(gguf)).tokenize
    try:
        text, warmup = bench_text(n_prompt, tokenize), bench_text(min(8, n_prompt), tokenize)
    except ValueError as e:
        raise Unavailable(f"wllama 3 takes text only: {e} by {Path(gguf).name}'s tokenizer") from None
    args = {"prompt": text, "warmup": warmup, "nPrompt": n_prompt, "nGen": n_gen, "nCtx": n_ctx}
    r, peak_mb, version = _run_wllama("wllama 3", WLLAMA3_PKG, "/wllama3_bench.js", gguf, args, chromium)
    t = r["timings"]
    if r["usage"]["prompt_tokens"] != n_prompt or t["prompt_n"] != n_prompt or t["cache_n"]:
        raise Unavailable(f"wllama 3 prefilled {t['prompt_n']} of {r['usage']['prompt_tokens']} prompt tokens "
                          f"({t['cache_n']} cached), not the {n_prompt} realm_web's tokenizer counts")  # fmt: skip
    if r["n_tokens"] != n_gen + 1:
        raise Unavailable(f"wllama 3 produced {r['n_tokens']} tokens, not {n_gen + 1}")
    steps = n_gen + 1 - r["first_n"]
    if steps < 1:
        raise Unavailable(f"wllama 3 streamed all {r['n_tokens']} tokens at once: no decode step could be timed")
    r["decode_s"] *= n_gen / steps  # per-step time × n_gen where the first chunk carried more than one token
    adapter = _wllama3_device(r)
    page = r["adapter"]
    own = (f"llama.cpp's own timings: prompt {t['prompt_n']} tok in {t['prompt_ms'] / 1e3:.2f} s "
           f"({t['prompt_per_second']:.1f} tok/s), {t['predicted_n']} generated in {t['predicted_ms'] / 1e3:.2f} s "
           f"({t['predicted_per_second']:.2f} tok/s)")  # fmt: skip
    notes = (f"wllama {version}, n_gpu_layers 99999, n_ctx {r['n_ctx']}, cross-origin isolated: "
             f"{r['cross_origin_isolated']}, isSupportWebGPU(): {r['is_support_webgpu']}; text prompt of {n_prompt} "
             f"tokens (bench_text; llama.cpp counted {r['usage']['prompt_tokens']}), not the id prompt; "
             f"streamed completion, ttft to the first token chunk, decode over {steps} step(s); {own}")  # fmt: skip
    out = _result("wllama 3.x", r, n_prompt, n_gen, peak_mb, adapter, notes)
    out["shader_f16"] = None if page is None else page["shader_f16"]
    out["webgpu_adapter"] = (
        None if page is None else f"{page['description']} ({page['vendor']}), fallback: {page['fallback']}"
    )
    out["device_log"] = r["device_log"]
    return out


def main(argv: list[str] | None = None) -> int:
    from realm_web.cli import bundled_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=bundled_model())
    ap.add_argument("--prompt", type=int, default=64, help="prompt length in tokens (common.bench_prompt)")
    ap.add_argument("--gen", type=int, default=32, help="decode steps after the first token")
    ap.add_argument("--chromium", default=os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--engines", default="realm_browser,wllama,wllama3", help="comma-separated, in this order")
    a = ap.parse_args(argv)
    info = _read_model(a.model)
    prompt = bench_prompt(a.prompt, info["n_vocab"], info["bos"])
    out = {}
    engines = {"realm_browser": realm_browser, "wllama": wllama, "wllama3": wllama3}
    for name in a.engines.split(","):
        fn = engines[name]
        t0 = time.perf_counter()
        try:
            out[name] = fn(a.model, prompt, a.gen, chromium=a.chromium)
        except Unavailable as e:
            out[name] = {"unavailable": str(e)}
        out[name]["wall_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
