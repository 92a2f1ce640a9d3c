"""LoRA throughput: aggregate decode tokens/s of 8 concurrent greedy streams with no adapter, one adapter for all,
and 4 different adapters mixed in the batch, on the same loaded weights, natively and in headless Chromium.

    .venv/bin/python benchmarks/lora.py [--rows bundled,125m] [--browser] [--streams 8] [--gen 32] [--reps 3]

Rows (each in its own child process; `realm_web.bench.bench_batched`, the three settings interleaved --reps
times, medians reported):
- bundled: the bundled model (Q8_0, 2 layers, hidden 256) with the four trained adapters of
  scripts/make_lora.py (fiction r8 on all 7 projections; islands r4 on q,v; rivers r16 on o,gate,up,down;
  planets r8 on q,k,v,o).
- 125m: the 125M Q4_K_M bench model (benchmarks/models.py) with four random rank-16 adapters on all 7
  projections of every layer (written here with gguf-py into build/bench-models/).
- --browser: the bundled row in Chromium through the SDK (`engine.loadLora(id)` per adapter,
  `engine.benchmark({ nStreams, lora })`).
Results: build/bench-results/lora-*.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_child, save_results  # noqa: E402

BENCH = ROOT / "build" / "bench-models"
FIXTURES = ROOT / "tests" / "fixtures" / "lora"
SETTINGS = ("none", "one", "mixed")


def _bundled_adapters() -> list[Path]:
    from realm_web.cli import bundled_lora

    return [Path(bundled_lora())] + [FIXTURES / f"{n}-F16.gguf" for n in ("islands", "rivers", "planets")]


def _random_adapters(base: Path, n: int = 4, rank: int = 16) -> list[Path]:
    """`n` random rank-`rank` F16 adapters on every block projection of `base` (made once, kept in BENCH)."""
    import gguf
    import numpy as np

    out = [BENCH / f"{base.stem}-lora{i}-r{rank}.gguf" for i in range(n)]
    if all(p.is_file() for p in out):
        return out
    r = gguf.GGUFReader(str(base))
    shapes = {
        t.name: (int(t.shape[0]), int(t.shape[1])) for t in r.tensors if len(t.shape) == 2 and t.name.startswith("blk.")
    }
    for i, path in enumerate(out):
        rng = np.random.default_rng(100 + i)
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_type("adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", float(rank))
        for name, (K, N) in shapes.items():
            w.add_tensor(name + ".lora_a", (rng.standard_normal((rank, K)) * 0.02).astype(np.float16))
            w.add_tensor(name + ".lora_b", (rng.standard_normal((N, rank)) * 0.02).astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _row(row: str) -> tuple[str, list[Path]]:
    from realm_web.cli import bundled_model

    if row == "bundled":
        return bundled_model(), _bundled_adapters()
    base = BENCH / f"realm-bench-{row}-q4_k_m.gguf"
    if not base.is_file():
        from benchmarks.models import ensure_models

        ensure_models(sizes=(row,), mixes=("q4_k_m",))
    return str(base), _random_adapters(base)


def _choices(names: list[str]) -> dict[str, list[dict] | None]:
    return {"none": [{}], "one": [{names[0]: 1.0}], "mixed": [{n: 1.0} for n in names]}


def native(row: str, n_streams: int, n_gen: int, reps: int) -> dict:
    import realm_web
    from realm_web.bench import bench_batched

    base, adapters = _row(row)
    model = realm_web.load(base, n_ctx=512, n_parallel=n_streams, max_loras=len(adapters))
    names = [model.load_lora(str(p), p.stem) for p in adapters]
    choices = _choices(names)
    runs: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for _ in range(reps):
        for k in SETTINGS:
            runs[k].append(bench_batched(model, n_streams, 16, n_gen, lora=choices[k])["decode_tok_s"])
    info = model.device.info.name
    model.close()
    return {"adapter": info, "adapters": {n: model_rank(p) for n, p in zip(names, adapters, strict=True)}, "runs": runs}


def model_rank(path: Path) -> int:
    from realm_web.gguf import open_gguf

    with open_gguf(path) as gf:
        return max(t.shape[1] for t in gf.tensors if t.name.endswith(".lora_a"))


_BROWSER_JS = """async ([ids, nStreams, nGen, reps]) => {
    const sdk = await import('/js/index.js');
    const models = await (await fetch('/models/registry.json')).json();  // the served adapters' records
    const engine = await sdk.createEngine('realm-tiny-facts', { nParallel: nStreams, appConfig: { models } });
    const names = [];
    for (const id of ids) names.push(await engine.loadLora(id, { name: id }));
    const choices = { none: [[]], one: [[{ id: names[0], scale: 1 }]], mixed: names.map((n) => [{ id: n, scale: 1 }]) };
    const runs = { none: [], one: [], mixed: [] };
    for (let r = 0; r < reps; r++) {
        for (const k of ['none', 'one', 'mixed']) {
            const got = await engine.benchmark({ nStreams, nPrompt: 16, nGen, lora: choices[k] });
            runs[k].push(got.decode_tok_s);
        }
    }
    const adapter = engine.modelInfo.adapter;
    await engine.unload();
    return { adapter, runs };
}"""


def browser(n_streams: int, n_gen: int, reps: int) -> dict:
    from benchmarks.browser_peers import _Browser
    from realm_web.server import make_server

    adapters = _bundled_adapters()
    srv = make_server("127.0.0.1", 0, api=False, models=adapters[1:]).start()  # the bundled one is built in
    try:
        with _Browser("/usr/bin/chromium") as b:
            b.page.goto(srv.url + "runtime/manifest.json")
            return b.evaluate("realm_web", _BROWSER_JS, [[p.stem for p in adapters], n_streams, n_gen, reps])
    finally:
        srv.shutdown()


def child(row: str, a: argparse.Namespace) -> dict:
    flags = ["--streams", str(a.streams), "--gen", str(a.gen), "--reps", str(a.reps)]
    return run_child(__file__, ["--child", row, *flags])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="bundled,125m")
    ap.add_argument("--browser", action="store_true", help="also the bundled row in headless Chromium")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        out = browser(a.streams, a.gen, a.reps) if a.child == "browser" else native(a.child, a.streams, a.gen, a.reps)
        print(json.dumps(out))
        return 0
    rows = a.rows.split(",") + (["browser"] if a.browser else [])
    results = {}
    print(
        f"| row | where | no adapter tok/s | one adapter tok/s (ratio) | 4 mixed tok/s (ratio) |  ({a.streams} streams)"
    )
    print("|---|---|---:|---:|---:|")
    for row in rows:
        got = child(row, a)
        results[row] = got
        if "error" in got:
            print(f"| {row} | unavailable: {got['error']} | | | |", flush=True)
            continue
        med = {k: statistics.median(v) for k, v in got["runs"].items()}
        where = f"Chromium (SDK), {got['adapter']}" if row == "browser" else f"native, {got['adapter']}"
        print(f"| {row} | {where} | {med['none']:.1f} | {med['one']:.1f} ({med['one'] / med['none']:.2f}) | "
              f"{med['mixed']:.1f} ({med['mixed'] / med['none']:.2f}) |", flush=True)  # fmt: skip
    out = save_results("lora", results)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
