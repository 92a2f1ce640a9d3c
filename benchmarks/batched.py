"""Continuous batching, side by side: aggregate decode tokens/s at 1, 2, 4, 8, 16 concurrent streams, and the
time to first token of a 256-token prompt with and without a prefix-cache hit.

    .venv/bin/python benchmarks/batched.py [--models 125m-q4_k_m,1b-q4_k_m] [--streams 1,2,4,8,16]
                                           [--engines realm,llama.cpp,browser] [--gen 32] [--prompt 16]

Engines (each in its own child process, one model at a time):
- realm_web natively (wgpu-py; lavapipe here): N greedy streams submitted at once to one engine
  (`realm_web.bench.bench_batched`: each stream its own prompt, no shared prefix, EOS ignored). Decode is timed
  from the moment every stream has its first token to the last token.
- llama.cpp (llama-cpp-python's low-level API, threads = cores): one llama_batch holding the N prompts (one
  sequence id each), then one llama_batch of N tokens per step, greedy = argmax of each sequence's logits on
  the host; decode timed over the n_gen steps after the prompts.
- realm_web in headless Chromium (SwiftShader here) through the SDK: `engine.benchmark({nStreams})` runs the
  same bench_batched inside the worker (125M only: SwiftShader decodes the 1B model at < 1 tok/s).
Models come from benchmarks/models.py (build/bench-models/, made on demand). Results go to
build/bench-results/batched-*.json and a Markdown table on stdout.
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

MODELS = ROOT / "build" / "bench-models"
RESULTS = ROOT / "build" / "bench-results"


def realm_native(gguf: str, streams: list[int], n_prompt: int, n_gen: int) -> dict:
    import realm_web
    from realm_web.bench import bench_batched, bench_prefix_cache

    n_max = max(streams)
    t0 = time.perf_counter()
    m = realm_web.load(gguf, n_ctx=512, n_parallel=n_max, kv_cache_tokens=max(n_max * (n_prompt + n_gen + 16), 512))
    load_s = time.perf_counter() - t0
    rows = [bench_batched(m, n, n_prompt, n_gen) for n in streams]
    prefix = bench_prefix_cache(m, 256)
    return {"adapter": m.device.info.name, "load_s": load_s, "rows": rows, "prefix": prefix}


def llama_cpp_batched(gguf: str, streams: list[int], n_prompt: int, n_gen: int) -> dict:
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        raise Unavailable(f"llama-cpp-python is not installed ({e}); see benchmarks/native_peers.py") from None
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), mp)
    if not model:
        raise Unavailable(f"llama.cpp could not load {gguf}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    bos = llama_cpp.llama_vocab_bos(vocab)
    threads = os.cpu_count() or 1
    _llama_streams(llama_cpp, np, model, 1, n_vocab, bos, threads, n_prompt, 4)  # warm-up: first-use costs
    rows = [_llama_streams(llama_cpp, np, model, n, n_vocab, bos, threads, n_prompt, n_gen) for n in streams]
    llama_cpp.llama_model_free(model)
    return {"adapter": f"CPU, {threads} threads (llama-cpp-python {llama_cpp.__version__})", "rows": rows}


def _fill(batch, items) -> None:
    """A llama_batch of (token, position, sequence id, want logits)."""
    batch.n_tokens = 0
    for tok, pos, seq, want in items:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, want
        batch.seq_id[i][0] = seq
        batch.n_tokens += 1


def _llama_streams(llama_cpp, np, model, n, n_vocab, bos, threads, n_prompt, n_gen) -> dict:
    """n sequences in one llama.cpp context: the prompts in one batch, then n tokens per decode step."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n * (n_prompt + n_gen + 8)
    cp.n_batch = cp.n_ubatch = max(n * n_prompt, 64)
    cp.n_seq_max = n
    cp.n_threads = cp.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cp)
    batch = llama_cpp.llama_batch_init(max(n * n_prompt, n), 0, n)

    def argmax(i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))

    try:
        prompts = [[bos] + [(7 * i + 11 + 131 * s) % n_vocab for i in range(n_prompt - 1)] for s in range(n)]
        t0 = time.perf_counter()
        _fill(batch, [(t, p, s, p == n_prompt - 1) for s in range(n) for p, t in enumerate(prompts[s])])
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise Unavailable("llama_decode failed on the prompts")
        toks = [argmax(s * n_prompt + n_prompt - 1) for s in range(n)]
        t1 = time.perf_counter()
        for step in range(n_gen):
            _fill(batch, [(toks[s], n_prompt + step, s, True) for s in range(n)])
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise Unavailable("llama_decode failed while decoding")
            toks = [argmax(s) for s in range(n)]
        t2 = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return {"n_streams": n, "n_prompt": n_prompt, "n_gen": n_gen, "ttft_s": t1 - t0,
            "decode_tok_s": n * n_gen / (t2 - t1), "per_stream_tok_s": n_gen / (t2 - t1)}  # fmt: skip


_BROWSER_JS = """async ([id, streams, nPrompt, nGen]) => {
    const sdk = await import('/js/index.js');
    const models = await (await fetch('/models/registry.json')).json();
    const t0 = performance.now();
    const engine = await sdk.createEngine(id, { appConfig: { models, n_ctx: 512 }, nParallel: Math.max(...streams) });
    const load_s = (performance.now() - t0) / 1000;
    const rows = [];
    for (const n of streams) rows.push(await engine.benchmark({ nStreams: n, nPrompt, nGen }));
    const adapter = engine.modelInfo.adapter;
    await engine.unload();
    return { rows, load_s, adapter };
}"""


def realm_browser(gguf: str, streams: list[int], n_prompt: int, n_gen: int) -> dict:
    from benchmarks.browser_peers import _Browser
    from realm_web.server import make_server

    srv = make_server("127.0.0.1", 0, models=[gguf], bundled=False, api=False).start()
    try:
        with _Browser("/usr/bin/chromium") as b:
            b.page.goto(srv.url + "runtime/manifest.json")
            return b.evaluate("realm_web", _BROWSER_JS, [srv.registry[0]["id"], streams, n_prompt, n_gen])
    finally:
        srv.shutdown()


ENGINES = {"realm": realm_native, "llama.cpp": llama_cpp_batched, "browser": realm_browser}


def child(engine: str, gguf: str, streams: list[int], n_prompt: int, n_gen: int, timeout: float = 3600) -> dict:
    args = [sys.executable, __file__, "--child", engine, "--models", gguf, "--streams", ",".join(map(str, streams)),
            "--prompt", str(n_prompt), "--gen", str(n_gen)]  # fmt: skip
    try:
        p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])}
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = []
    for model, by_engine in results.items():
        streams = sorted({r["n_streams"] for e in by_engine.values() for r in e.get("rows", [])})
        lines += [f"### {model}", "", "| engine | adapter | " + " | ".join(f"{n} streams" for n in streams)
                  + " | N÷1 at the most streams |", "|---|---|" + "---:|" * (len(streams) + 1)]  # fmt: skip
        for engine, r in by_engine.items():
            if "error" in r:
                lines.append(f"| {engine} | unavailable: {r['error']} |" + " |" * (len(streams) + 1))
                continue
            tok = {x["n_streams"]: x["decode_tok_s"] for x in r["rows"]}
            cells = [f"{tok[n]:.1f}" if n in tok else "" for n in streams]
            scale = tok[max(tok)] / tok[min(tok)] if tok else 0
            lines.append(f"| {engine} | {r.get('adapter', '')} | " + " | ".join(cells) + f" | {scale:.2f}× |")
        pre = by_engine.get("realm", {}).get("prefix")
        if pre:
            lines += ["", f"realm_web TTFT of a {pre['n_prompt']}-token prompt: {pre['ttft_miss_s'] * 1e3:.0f} ms "
                      f"without a prefix-cache hit, {pre['ttft_hit_s'] * 1e3:.0f} ms with one "
                      f"({pre['cached_tokens_hit']} tokens cached)"]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="125m-q4_k_m,1b-q4_k_m", help="bench model names, or a .gguf (child)")
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--engines", default="realm,llama.cpp,browser")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--browser-max-streams", type=int, default=8)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    streams = [int(s) for s in a.streams.split(",")]
    if a.child:
        try:
            print(json.dumps(ENGINES[a.child](a.models, streams, a.prompt, a.gen)))
        except Unavailable as e:
            print(str(e), file=sys.stderr)
            return 3
        return 0
    results: dict = {}
    for name in a.models.split(","):
        path = MODELS / f"realm-bench-{name}.gguf"
        if not path.is_file():
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "models.py")], check=True, cwd=ROOT)
        results[name] = {}
        for engine in a.engines.split(","):
            st = streams
            if engine == "browser":
                if not name.startswith("125m"):
                    continue
                st = [n for n in streams if n <= a.browser_max_streams]
            print(f"{name}: {engine} ...", file=sys.stderr, flush=True)
            results[name][engine] = child(engine, str(path), st, a.prompt, a.gen)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"batched-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"raw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
