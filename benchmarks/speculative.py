"""Speculative decoding, with and without drafts on the same loaded weights: decode tokens/s, the speedup, the
acceptance rate (accepted ÷ drafted tokens) and the mean accepted length (accepted tokens per verifying step),
greedy and sampled (temperature 0.8), natively and in headless Chromium.

    .venv/bin/python benchmarks/speculative.py [--rows bundled-draft,bundled-lookup,125m-lookup,1b-lookup]
                                               [--browser] [--gen 48]

Rows (each in its own child process, `realm_web.bench.bench_speculative`: one request at a time, replies up to
--gen tokens, to their end):
- bundled-draft: the bundled model with its bundled draft (realm-tiny-facts-draft: 1 layer, 9 % of the
  target's parameters, same tokenizer), chat questions the models were trained on; also with `draft_greedy`
  (llama.cpp's greedy drafting, accepted on equality) for the sampled acceptance rate.
- bundled-lookup: the bundled model with n-gram prompt lookup (no draft model).
- 125m-lookup / 1b-lookup: the Q4_K_M bench models (benchmarks/models.py, random weights: their greedy text
  falls into loops, which lookup drafts) with n-gram lookup; completion prompts.
- 1b-draft-125m: the 1B bench model with the 125M one as its draft (same vocabulary; random weights, so the
  draft rarely agrees: what drafting costs when it fails).
- --browser: bundled-draft in Chromium through the SDK (`createEngine(id, { draftModel })`,
  `engine.benchmark({ speculative })`).
Results: build/bench-results/speculative-*.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_child, save_results  # noqa: E402

BENCH = ROOT / "build" / "bench-models"
ROWS = {
    "bundled-draft": ("bundled", {"draft_model": "bundled-draft"}),
    "bundled-draft-greedy": ("bundled", {"draft_model": "bundled-draft", "draft_greedy": True}),
    "bundled-lookup": ("bundled", {"speculative": "ngram"}),
    "125m-lookup": ("125m-q4_k_m", {"speculative": "ngram"}),
    "1b-lookup": ("1b-q4_k_m", {"speculative": "ngram"}),
    "1b-draft-125m": ("1b-q4_k_m", {"draft_model": "125m-q4_k_m"}),
}


def _path(name: str) -> str:
    from realm_web.cli import bundled_draft, bundled_model

    if name == "bundled":
        return bundled_model()
    if name == "bundled-draft":
        return bundled_draft()
    path = BENCH / f"realm-bench-{name}.gguf"
    if not path.is_file():
        from benchmarks.models import ensure_models

        size, mix = name.split("-")
        ensure_models(sizes=(size,), mixes=(mix,))
    return str(path)


def native(row: str, n_gen: int) -> list[dict]:
    import realm_web
    from realm_web.bench import bench_speculative

    model_name, opts = ROWS[row]
    opts = {k: (_path(v) if k == "draft_model" else v) for k, v in opts.items()}
    model = realm_web.load(_path(model_name), n_ctx=512, **opts)
    temps = (0.0, 0.8) if "greedy" not in row else (0.8,)
    return [bench_speculative(model, n_gen=n_gen, temperature=t) for t in temps]


_BROWSER_JS = """async ([nGen]) => {
    const sdk = await import('/js/index.js');
    const engine = await sdk.createEngine('realm-tiny-facts', { draftModel: 'realm-tiny-facts-draft' });
    const rows = [];
    for (const temperature of [0, 0.8]) rows.push(await engine.benchmark({ nGen, speculative: { temperature } }));
    await engine.unload();
    return rows;
}"""


def browser(n_gen: int) -> list[dict]:
    from benchmarks.browser_peers import _Browser
    from realm_web.server import make_server

    srv = make_server("127.0.0.1", 0, api=False).start()
    try:
        with _Browser("/usr/bin/chromium") as b:
            b.page.goto(srv.url + "runtime/manifest.json")
            return b.evaluate("realm_web", _BROWSER_JS, [n_gen])
    finally:
        srv.shutdown()


def child(row: str, n_gen: int) -> list[dict] | dict:
    return run_child(__file__, ["--child", row, "--gen", str(n_gen)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="bundled-draft,bundled-draft-greedy,bundled-lookup,125m-lookup,1b-lookup")
    ap.add_argument("--browser", action="store_true", help="also the bundled pair in headless Chromium")
    ap.add_argument("--gen", type=int, default=48)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        out = browser(a.gen) if a.child == "browser" else native(a.child, a.gen)
        print(json.dumps(out))
        return 0
    rows = a.rows.split(",") + (["browser"] if a.browser else [])
    results = {}
    print("| row | where | T | plain tok/s | speculative tok/s | speedup | acceptance | mean accepted |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        got = child(row, a.gen)
        results[row] = got
        if isinstance(got, dict):
            print(f"| {row} | unavailable: {got['error']} | | | | | | |", flush=True)
            continue
        for r in got:
            where = "Chromium (SDK)" if row == "browser" else "native"
            print(f"| {row} | {where}, {r['adapter']} | {r['temperature']:.1f} | {r['plain_decode_tok_s']:.1f} | "
                  f"{r['speculative_decode_tok_s']:.1f} | {r['speedup']:.2f}x | {r['acceptance_rate']:.0%} | "
                  f"{r['mean_accepted']:.2f} |", flush=True)  # fmt: skip
    out = save_results("speculative", results)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
