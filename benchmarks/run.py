"""realm_web beside its peers, in one run on the same GGUF files and the same prompt:

    .venv/bin/python benchmarks/run.py [--sizes 125m,1b] [--types q4_k_m,q8_0] [--prompt 32] [--gen 16]
                                       [--baseline REV] [--no-browser] [--out build/bench-results]

For every benchmark model (benchmarks/models.py makes the missing ones: Llama shapes of ~125M and ~1.1B
parameters, random weights, Q4_K_M and Q8_0), each engine in its own process:
  native:  realm_web on wgpu-py's adapter (lavapipe without a GPU)
           vs llama.cpp's Vulkan backend on the same adapter (all layers offloaded; its log must name the device:
              benchmarks/peer_install.py builds it on first use, ~20 min)
           and llama.cpp's CPU code (llama-cpp-python, threads = cores), an extra row
  browser: realm_web in headless Chromium (WebGPU)
           vs wllama 3.x (llama.cpp with its WebGPU backend; the device it really used is read from its log: WebGPU
              needs shader-f16, else it runs its wasm CPU code) and wllama 2.3.7 (wasm CPU), in the same Chromium
measured as benchmarks/common.py defines: load time, time to first token, prefill and decode tokens/s, peak
memory; then realm_web ÷ peer for each figure. wllama 3.x takes text only: it gets a text of the same token count.
`--baseline REV` adds realm_web native at another commit (a git worktree under build/bench-baseline/), so a
kernel change is measured before and after in the same run. A peer that cannot run here is listed with the
reason. The roofline line gives realm_web native's decode bandwidth (bytes a decode step reads × decode tok/s)
as a fraction of the same adapter's copy bandwidth, measured in the same child process.
Prints Markdown tables (pasted into BENCHMARKS.md) and writes the raw results as JSON under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Unavailable, bench_prompt  # noqa: E402
from benchmarks.models import N_VOCAB, ensure_models  # noqa: E402

CHROMIUM = os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def _engines(browser: bool, baseline: Path | None = None):
    """(label, peer-of label or None, function(gguf, prompt, n_gen) -> dict) in the order they run."""
    from benchmarks import native_peers

    def browser_fn(name: str):
        def run(gguf, prompt, n_gen):
            try:
                from benchmarks import browser_peers
            except ImportError as e:
                raise Unavailable(f"the browser harness cannot be imported ({e})") from e
            return getattr(browser_peers, name)(gguf, prompt, n_gen, chromium=CHROMIUM)

        return run

    out = [("realm_web native", None, native_peers.realm_native)]
    if baseline is not None:
        out.append((f"realm_web native @{baseline.name}", "realm_web native", _baseline_fn(baseline)))
    out += [
        ("llama.cpp-Vulkan", "realm_web native", native_peers.llama_cpp_vulkan),
        ("llama.cpp", "realm_web native", native_peers.llama_cpp),
    ]
    if browser:
        out += [
            ("realm_web browser", None, browser_fn("realm_browser")),
            ("wllama 3.x", "realm_web browser", browser_fn("wllama3")),
            ("wllama", "realm_web browser", browser_fn("wllama")),
        ]
    return out


def baseline_checkout(rev: str) -> Path:
    """A detached git worktree of `rev` under build/bench-baseline/<short sha> (made once, reused)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True)
    path = ROOT / "build" / "bench-baseline" / sha.stdout.strip()
    if not (path / "realm_web").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
    return path


def _baseline_fn(root: Path):
    """realm_web native as the checkout at `root` runs it: that checkout's own benchmarks/native_peers.py, so its
    realm_web and its kernels (realm_web/wgsl) are the ones imported."""

    def run(gguf, prompt, n_gen):
        from benchmarks import native_peers

        return native_peers.realm_native(gguf, prompt, n_gen, script=root / "benchmarks" / "native_peers.py")

    return run


def run_model(gguf: Path, n_prompt: int, n_gen: int, browser: bool, log=print, baseline: Path | None = None
              ) -> list[dict]:  # fmt: skip
    prompt = bench_prompt(n_prompt, N_VOCAB)
    results = []
    for label, peer_of, fn in _engines(browser, baseline):
        log(f"  {label} ...")
        t0 = time.perf_counter()
        try:
            r = {**fn(str(gguf), prompt, n_gen), "engine": label}
        except Unavailable as e:
            r = {"engine": label, "unavailable": str(e)}
        r["peer_of"], r["wall_s"] = peer_of, time.perf_counter() - t0
        results.append(r)
        log(f"    {_summary(r)}")
    return results


def _summary(r: dict) -> str:
    if "unavailable" in r:
        return f"cannot run here: {r['unavailable']}"
    return f"prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.2f} tok/s, load {r['load_s']:.1f} s"


def roofline(r: dict) -> dict | None:
    """Decode's achieved bandwidth ÷ copy bandwidth, for a realm_web native result."""
    if "decode_bytes" not in r:
        return None
    achieved = r["decode_bytes"] * r["decode_tok_s"] / 1e9
    return {"decode_gbps": achieved, "copy_gbps": r["copy_gbps"], "fraction": achieved / r["copy_gbps"]}


COLUMNS = (("load_s", "load s", ".2f"), ("ttft_s", "TTFT s", ".3f"), ("prefill_tok_s", "prefill tok/s", ".1f"),
           ("decode_tok_s", "decode tok/s", ".2f"), ("peak_rss_mb", "peak MiB", ".0f"))  # fmt: skip


def markdown(model: str, results: list[dict]) -> str:
    head = "| engine | adapter | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [f"**{model}**", "", head, "|---|---|" + "---:|" * len(COLUMNS)]
    by_label = {r["engine"]: r for r in results}
    for r in results:
        if "unavailable" in r:
            lines.append(f"| {r['engine']} | cannot run here: {r['unavailable']} |" + " |" * len(COLUMNS))
            continue
        cells = " | ".join(format(r[k], f) if r.get(k) is not None else "–" for k, _, f in COLUMNS)
        lines.append(f"| {r['engine']} | {r.get('adapter', '')} | {cells} |")
    for r in results:
        ours = by_label.get(r["peer_of"] or "")
        if ours is None or "unavailable" in r or "unavailable" in ours:
            continue
        cells = " | ".join(f"{ours[k] / r[k]:.2f}" if ours.get(k) and r.get(k) else "–" for k, _, _ in COLUMNS)
        lines.append(f"| **{ours['engine']} ÷ {r['engine']}** | | {cells} |")
    cpu = by_label.get("llama.cpp", {})
    for r in results:
        rf = roofline(r) if "unavailable" not in r else None
        if rf:
            lines += ["", f"roofline ({r['engine']}): decode reads {r['decode_bytes'] / 2**20:.1f} MiB per token → "
                      f"{rf['decode_gbps']:.2f} GB/s achieved; copy bandwidth {rf['copy_gbps']:.2f} GB/s (read + "
                      f"write) → **{rf['fraction']:.0%} of copy**"]  # fmt: skip
            if cpu.get("decode_tok_s"):  # what this adapter allows at best, against the CPU code
                ceiling = rf["copy_gbps"] * 1e9 / r["decode_bytes"]
                x_cpu = ceiling / cpu["decode_tok_s"]
                lines[-1] += f"; at 100 % of copy: {ceiling:.1f} tok/s = {x_cpu:.2f}× llama.cpp's CPU code (ceiling)"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="125m,1b")
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (the same ids for every engine)")
    ap.add_argument("--gen", type=int, default=16, help="decode steps after the first token")
    ap.add_argument("--baseline", metavar="REV", help="also run realm_web native at this commit (before/after)")
    ap.add_argument("--no-browser", action="store_true", help="native engines only (the browser ones are listed)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-results")
    a = ap.parse_args(argv)
    models = ensure_models(a.sizes.split(","), a.types.split(","))
    baseline = baseline_checkout(a.baseline) if a.baseline else None
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"date": date, "machine": _cpu(), "command": command.strip(), "prompt_tokens": a.prompt,
              "gen_tokens": a.gen, "models": {}}  # fmt: skip
    for path in models:
        print(f"{path.name}", flush=True)
        results = run_model(path, a.prompt, a.gen, not a.no_browser, log=lambda s: print(s, flush=True),
                            baseline=baseline)  # fmt: skip
        if a.no_browser:
            results += [{"engine": e, "peer_of": None, "unavailable": "not run (--no-browser)"}
                        for e in ("realm_web browser", "wllama 3.x", "wllama")]  # fmt: skip
        report["models"][path.name] = results
    print()
    print(f"{date} · {report['machine']} · `{report['command']}` · prompt {a.prompt} tokens, {a.gen} decode steps")
    print("ratios are realm_web ÷ peer: above 1 is faster for tok/s, below 1 is faster for times and memory\n")
    for name, results in report["models"].items():
        print(markdown(name, results) + "\n")
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
