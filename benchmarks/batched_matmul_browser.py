"""The batch matrix kernel against the decode kernel run once per token, in headless Chromium (WebGPU; SwiftShader
without a GPU):

    .venv/bin/python benchmarks/batched_matmul_browser.py [--types Q4_K,Q6_K,Q8_0] [--n 1,2,4,8,16,32]
        [--shapes 768x768,2048x768,768x2048,32000x768] [--caps 1,2,4,8] [--subgroups both|on|off]
        [--target-ms 150] [--rounds 2] [--chromium PATH] [--json OUT.json]

Shapes are rows x k (the 125M bench model's: attention 768x768, FFN up/gate 2048x768, down 768x2048, output
32000x768). For each weight type, shape, subgroup setting and batch size n: milliseconds per call of
`matmul_batch` as realm_web would dispatch it on this adapter (on a CPU adapter: matmul_rows, each weight block
read once for a tile of tokens), of `matvec(..., n_vec=n, rows=True)` (matvec_rows, the decode kernel, once per
token), and, with --caps, of matmul_batch with its token tiles capped at each size (`tn_max`: tiles of at most
that many tokens), which shows what each tile size costs on this adapter.

How: the dispatches are built in Python (here, natively) by the real host code (realm_web.kernels.matmul) on a
recording device whose DeviceInfo is the browser adapter's, as realm_web.device.browser fills it in (backend
"browser", adapter_type "CPU" for a fallback adapter). The page (raw WebGPU, no Pyodide) loads the rendered
kernels from realm_web/wgsl/, the recorded buffer contents (random weights in the type's layout, random x) and
params, and times each dispatch list: `reps` copies in one compute pass and one submission, waited for with
queue.onSubmittedWorkDone(), `reps` chosen so one submission takes about --target-ms; the lists of one case
alternate, best of --rounds. So all figures of one row are taken side by side, under the same machine load.
Prints a Markdown table (and writes the rows as JSON with --json).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.browser_peers import _Browser  # noqa: E402
from benchmarks.common import Unavailable  # noqa: E402
from realm_web.bench import random_weight_bytes  # noqa: E402
from realm_web.device import DeviceInfo  # noqa: E402
from realm_web.kernels.matmul import matmul_batch, matvec  # noqa: E402
from realm_web.quants import BY_NAME  # noqa: E402
from realm_web.weights import upload_bytes  # noqa: E402

INLINE = 1 << 16  # buffer contents up to this size travel in the plan; bigger ones as files the page fetches
# what realm_web.device.browser requests (all the adapter allows)
LIMITS = ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize",
          "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX", "maxStorageBuffersPerShaderStage",
          "maxComputeWorkgroupsPerDimension"]  # fmt: skip


@dataclass
class _Buf:
    id: int
    size: int
    label: str
    uniform: bool
    data: bytearray | None = None


@dataclass
class _Disp:
    name: str
    groups: tuple[int, int, int]
    constants: dict
    buffers: list[int] = field(default_factory=list)


class Recorder:
    """A Device that records buffers, their contents and dispatches instead of running them."""

    def __init__(self, info: DeviceInfo):
        self.info = info
        self.buffers: list[_Buf] = []

    def create_buffer(self, size: int, label: str = "", *, uniform: bool = False) -> _Buf:
        b = _Buf(len(self.buffers), max(16, (size + 3) & ~3), label, uniform)
        self.buffers.append(b)
        return b

    def write(self, buf: _Buf, data, offset: int = 0) -> None:
        if buf.data is None:
            buf.data = bytearray(buf.size)
        mv = memoryview(data).cast("B")
        buf.data[offset : offset + len(mv)] = mv

    def dispatch(self, name: str, wgsl: str, constants: dict, buffers: list, groups: tuple[int, int, int]) -> _Disp:
        return _Disp(name, tuple(groups), dict(constants), [b.id for b in buffers])

    def destroy(self, buf: _Buf) -> None:
        pass


def device_info(a: dict, subgroups: bool) -> DeviceInfo:
    """The DeviceInfo realm_web.device.browser makes for this adapter (`a`: what the page's open() returned)."""
    lim = a["limits"]
    feats = [f for f in a["features"] if subgroups or f != "subgroups"]
    return DeviceInfo(
        name=a["name"],
        backend="browser",
        adapter_type="CPU" if a["fallback"] else "GPU",
        features=frozenset(feats),
        max_storage_binding=int(lim["maxStorageBufferBindingSize"]),
        max_buffer=int(lim["maxBufferSize"]),
        max_workgroup_storage=int(lim["maxComputeWorkgroupStorageSize"]),
        max_invocations=int(lim["maxComputeInvocationsPerWorkgroup"]),
        max_workgroups_per_dim=int(lim["maxComputeWorkgroupsPerDimension"]),
        max_storage_buffers_per_stage=int(lim["maxStorageBuffersPerShaderStage"]),
    )


_JS = r"""
window.B = {
  async open(limitNames) {
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw new Error("no WebGPU adapter");
    const features = ["subgroups", "timestamp-query"].filter((f) => adapter.features.has(f));
    const requiredLimits = {};
    for (const k of limitNames) requiredLimits[k] = adapter.limits[k];
    B.device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
    B.device.onuncapturederror = (ev) => { B.errors.push(ev.error.message); };
    B.errors = [];
    B.pipes = new Map();
    const i = adapter.info || {};
    return { name: i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(" ") || "WebGPU",
             fallback: !!(i.isFallbackAdapter ?? adapter.isFallbackAdapter), features, limits: requiredLimits };
  },
  async pipeline(name, constants) {
    const key = name + JSON.stringify(constants);
    if (!B.pipes.has(key)) {
      const code = await (await fetch(`/wgsl/${name}.wgsl`)).text();
      const module = B.device.createShaderModule({ code, label: name });
      const t0 = performance.now();
      const p = await B.device.createComputePipelineAsync({ layout: "auto", label: name,
                                                           compute: { module, entryPoint: "main", constants } });
      B.pipes.set(key, p);
      B.compileMs[name] = performance.now() - t0;
    }
    return B.pipes.get(key);
  },
  compileMs: {},
  async time(list, reps) {
    const enc = B.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let r = 0; r < reps; r++)
      for (const d of list) {
        pass.setPipeline(d.pipe);
        pass.setBindGroup(0, d.bg);
        pass.dispatchWorkgroups(...d.groups);
      }
    pass.end();
    const cmd = enc.finish();
    const t0 = performance.now();
    B.device.queue.submit([cmd]);
    await B.device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / reps;
  },
  // One weight (type, shape): make its buffers, then time every case; free them.
  async run(plan, targetMs, rounds) {
    const d = B.device, U = GPUBufferUsage;
    const bufs = [];
    for (const b of plan.buffers) {
      const buf = d.createBuffer({ size: b.size, label: b.label,
                                   usage: b.uniform ? U.UNIFORM | U.COPY_DST : U.STORAGE | U.COPY_SRC | U.COPY_DST });
      let data = null;
      if (b.b64) data = Uint8Array.from(atob(b.b64), (c) => c.charCodeAt(0));
      else if (b.url) data = new Uint8Array(await (await fetch(b.url)).arrayBuffer());
      if (data) d.queue.writeBuffer(buf, 0, data);
      bufs.push(buf);
    }
    const out = [];
    for (const c of plan.cases) {
      const lists = {};
      for (const [key, disps] of Object.entries(c.lists)) {
        lists[key] = [];
        for (const x of disps) {
          const pipe = await B.pipeline(x.name, x.constants);
          const entries = x.buffers.map((id, i) => ({ binding: i, resource: { buffer: bufs[id] } }));
          const bg = d.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
          lists[key].push({ pipe, bg, groups: x.groups });
        }
      }
      const reps = {}, best = {};
      for (const k of Object.keys(lists)) {
        await B.time(lists[k], 1);  // warm-up (first use of each pipeline)
        const t = await B.time(lists[k], 1);
        reps[k] = Math.max(1, Math.min(200, Math.round(targetMs / Math.max(t, 1e-3))));
        best[k] = Infinity;
      }
      for (let r = 0; r < rounds; r++)
        for (const k of Object.keys(lists)) best[k] = Math.min(best[k], await B.time(lists[k], reps[k]));
      if (B.errors.length) throw new Error(B.errors.join("; "));
      out.push({ ...c.meta, ms: best, reps });
    }
    for (const b of bufs) b.destroy();
    return out;
  },
};
"""


def _list(dispatches: list[_Disp]) -> list[dict]:
    return [{"name": d.name, "groups": list(d.groups), "constants": d.constants, "buffers": d.buffers}
            for d in dispatches]  # fmt: skip


def _key(dispatches: list[_Disp]) -> tuple:
    """Equal for the same kernels on the same grids (the params then differ only in their buffer)."""
    return tuple((d.name, d.groups) for d in dispatches)


def plan_weight(adapter: dict, type_name: str, n_rows: int, k: int, sizes: list[int], sgs: list[bool],
                caps: list[int], files: Path, wgs: list[int] = ()) -> dict:  # fmt: skip
    """The buffers and, per (subgroups, n), the dispatch lists of one weight: `batch` (matmul_batch as shipped),
    `matvec` (matvec_rows once per token), `cap{T}` (matmul_batch with tiles of at most T tokens) and `wg{W}`
    (matmul_batch with W invocations per workgroup)."""
    rec = Recorder(device_info(adapter, subgroups=False))
    w = upload_bytes(rec, "w", BY_NAME[type_name], (k, n_rows), random_weight_bytes(type_name, n_rows, k))
    n_max = max(sizes)
    x, y = rec.create_buffer(4 * k * n_max, "x"), rec.create_buffer(4 * n_rows * n_max, "y")
    rec.write(x, random_weight_bytes("F32", n_max, k, seed=1))
    cases = []
    for sg in sgs:
        rec.info = device_info(adapter, subgroups=sg)
        if sg and not rec.info.subgroups:
            continue
        for n in sizes:
            lists = {"batch": matmul_batch(rec, w, x, y, n), "matvec": matvec(rec, w, x, y, n_vec=n, rows=True)}
            seen = {_key(lists["batch"])}
            for cap in caps:
                if cap > n * 2 - 1 and cap != min(c for c in caps if c >= n):
                    continue  # a tile bigger than the batch pads it: only the smallest such cap is of interest
                d = matmul_batch(rec, w, x, y, n, tn_max=cap)
                if _key(d) not in seen:
                    seen.add(_key(d))
                    lists[f"cap{cap}"] = d
            for g in wgs:
                d = matmul_batch(rec, w, x, y, n, wg=g)
                if _key(d) not in seen:
                    seen.add(_key(d))
                    lists[f"wg{g}"] = d
            kernels = " + ".join(f"{d.name.removeprefix('matmul_rows_')}×{d.groups[2]}" for d in lists["batch"])
            meta = {"type": type_name, "shape": f"{n_rows}x{k}", "sg": sg, "n": n, "kernels": kernels}
            cases.append({"meta": meta, "lists": {key: _list(v) for key, v in lists.items()}})
    buffers = []
    for b in rec.buffers:
        e: dict = {"size": b.size, "label": b.label, "uniform": b.uniform}
        if b.data is not None and len(b.data) <= INLINE:
            e["b64"] = base64.b64encode(bytes(b.data)).decode()
        elif b.data is not None:
            name = f"b{type_name}_{n_rows}x{k}_{b.id}.bin"
            (files / name).write_bytes(bytes(b.data))
            e["url"] = f"/{name}"
        buffers.append(e)
    return {"buffers": buffers, "cases": cases}


def table(rows: list[dict]) -> str:
    """A row per case; the columns after `speedup` are the other lists timed (absent: same as matmul_batch)."""
    extra = list(dict.fromkeys(k for r in rows for k in r["ms"] if k not in ("batch", "matvec")))
    names = {"cap": "tiles ≤ {} ms", "wg": "WG {} ms"}
    head = ["type", "shape", "sg", "n", "matmul_batch ms", "n × matvec_rows ms", "speedup"]
    for k in extra:
        p = k.rstrip("0123456789")
        head.append(names[p].format(k[len(p) :]))
    out = ["| " + " | ".join(head + ["kernels (× token tiles)"]) + " |",
           "|" + "---|" * 3 + "---:|" * (4 + len(extra)) + "---|"]  # fmt: skip
    for r in rows:
        ms = r["ms"]
        cols = [f"{ms[k]:.2f}" if k in ms else "=" for k in extra]
        out.append("| " + " | ".join([r["type"], r["shape"], "on" if r["sg"] else "off", str(r["n"]),
                                      f"{ms['batch']:.2f}", f"{ms['matvec']:.2f}",
                                      f"{ms['matvec'] / ms['batch']:.2f}×", *cols, r["kernels"]]) + " |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="Q4_K,Q6_K,Q8_0")
    ap.add_argument("--shapes", default="768x768,2048x768,768x2048,32000x768", help="rows x k")
    ap.add_argument("--n", default="1,2,4,8,16,32", help="batch sizes (tokens)")
    ap.add_argument("--caps", default="1,2,4,8", help="also time matmul_batch with tiles of at most these many "
                    "tokens ('' for none); '=' in the table: the same dispatches as matmul_batch")  # fmt: skip
    ap.add_argument("--wg", default="", help="also time matmul_batch with these workgroup sizes")
    ap.add_argument("--subgroups", choices=("both", "on", "off"), default="both")
    ap.add_argument("--target-ms", type=float, default=150, help="length of one timed submission")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many submissions, alternating")
    ap.add_argument("--chromium", default=os.environ.get("REALM_WEB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    from realm_web.server import file_server

    sizes = [int(v) for v in a.n.split(",")]
    caps = [int(v) for v in a.caps.split(",") if v]
    wgs = [int(v) for v in a.wg.split(",") if v]
    sgs = {"both": [False, True], "on": [True], "off": [False]}[a.subgroups]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="realm-bmm-") as tmp:
        files = Path(tmp)
        (files / "index.html").write_text("<!doctype html><title>batched matmul</title>\n")
        mounts = {"/": files, "/wgsl": (ROOT / "realm_web" / "wgsl").resolve()}
        srv = file_server(mounts).start()
        try:
            with _Browser(a.chromium) as b:
                b.page.goto(srv.url)
                b.evaluate("setup", f"() => {{ {_JS} }}", None)
                adapter = b.evaluate("opening the adapter", "(l) => B.open(l)", LIMITS)
                print(f"adapter {adapter['name']} (fallback {adapter['fallback']}, features "
                      f"{','.join(adapter['features'])}); {datetime.datetime.now():%Y-%m-%d %H:%M}; "
                      f"{os.cpu_count()} cores\n", flush=True)  # fmt: skip
                for t in a.types.split(","):
                    for shape in a.shapes.split(","):
                        n_rows, k = (int(v) for v in shape.split("x"))
                        t0 = time.perf_counter()
                        plan = plan_weight(adapter, t, n_rows, k, sizes, sgs, caps, files, wgs)
                        got = b.evaluate(f"{t} {shape}", "([p, t, r]) => B.run(p, t, r)", [plan, a.target_ms, a.rounds])
                        for f in files.glob("b*.bin"):
                            f.unlink()
                        for r in got:
                            ms = r["ms"]
                            extra = " ".join(f"{k} {v:.2f}" for k, v in ms.items() if k not in ("batch", "matvec"))
                            sg = "on" if r["sg"] else "off"
                            print(f"  {t} {shape} sg={sg} n={r['n']}: batch {ms['batch']:.2f} ms, matvec_rows ×n "
                                  f"{ms['matvec']:.2f} ms {extra}", file=sys.stderr, flush=True)  # fmt: skip
                        rows += got
                        print(f"  ({t} {shape}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
                compile_ms = b.evaluate("compile times", "() => B.compileMs", None)
        except Unavailable as e:
            print(f"unavailable: {e}", file=sys.stderr)
            return 1
        finally:
            srv.shutdown()
    print(table(rows))
    print("\npipeline compile ms: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(compile_ms.items())))
    if a.json:
        Path(a.json).write_text(json.dumps({"adapter": adapter, "rows": rows, "compile_ms": compile_ms}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
