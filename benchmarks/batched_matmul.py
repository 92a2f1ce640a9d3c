"""The batch matrix kernel against the decode kernel run once per token, on the native adapter:

    .venv/bin/python benchmarks/batched_matmul.py [--types Q4_K,Q6_K,Q8_0,Q4_0,Q5_K] [--n 1,2,4,8,16,32,64]
                                                  [--rows 4096] [--k 4096] [--reps 10] [--rounds 2]
                                                  [--no-subgroups]

For each weight type (random blocks in the file's layout, rows × k) and batch size n: milliseconds per call of
`matmul_batch` (on a CPU adapter: matmul_rows, each weight block read once for a tile of tokens) and of
`matvec(..., n_vec=n, rows=True)` (matvec_rows, the decode kernel, once per token: how a CPU adapter ran batches
before), each submitted `--reps` times in one submission and waited for by reading a buffer back (wgpu 0.32's
on_submitted_work_done_sync is broken); the two alternate, best of `--rounds`. Prints a Markdown table.
--no-subgroups opens the device without optional features: matmul_rows' fallback that loads x per lane.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realm_web.bench import random_weight_bytes  # noqa: E402
from realm_web.device.native import NativeDevice  # noqa: E402
from realm_web.kernels.matmul import matmul_batch, matvec, token_tiles  # noqa: E402
from realm_web.quants import BY_NAME  # noqa: E402
from realm_web.weights import upload_bytes  # noqa: E402


def _ms(dev, dispatches: list, sync, reps: int) -> float:
    """Milliseconds per repetition: `reps` repetitions in one submission, waited for by a read-back."""
    dev.submit(dispatches)
    dev.read(sync, 0, 4)
    t0 = time.perf_counter()
    dev.submit(dispatches * reps)
    dev.read(sync, 0, 4)
    return (time.perf_counter() - t0) / reps * 1e3


def bench_type(dev, type_name: str, n_rows: int, k: int, sizes: list[int], reps: int, rounds: int) -> list[dict]:
    w = upload_bytes(dev, "w", BY_NAME[type_name], (k, n_rows), random_weight_bytes(type_name, n_rows, k))
    n_max = max(sizes)
    x, y = dev.create_buffer(4 * k * n_max, "x"), dev.create_buffer(4 * n_rows * n_max, "y")
    dev.write(x, random_weight_bytes("F32", n_max, k, seed=1))
    rows = []
    for n in sizes:
        batch, per_token = matmul_batch(dev, w, x, y, n), matvec(dev, w, x, y, n_vec=n, rows=True)
        tb = tv = float("inf")
        for _ in range(rounds):
            tb = min(tb, _ms(dev, batch, y, reps))
            tv = min(tv, _ms(dev, per_token, y, reps))
        kernels = " + ".join(f"{d.name}×{d.groups[2]}" for d in batch[: len(token_tiles(n))])
        rows.append({"type": type_name, "n": n, "batch_ms": tb, "matvec_ms": tv, "kernels": kernels})
        print(f"  {type_name} n={n}: batch {tb:.2f} ms, matvec_rows ×{n} {tv:.2f} ms", file=sys.stderr, flush=True)
    for p in w.parts:
        dev.destroy(p.buffer)
    dev.destroy(x)
    dev.destroy(y)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| type | n_tok | matmul_batch ms | ms / token | n × matvec_rows ms | speedup | kernels (× token tiles) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['type']} | {r['n']} | {r['batch_ms']:.2f} | {r['batch_ms'] / r['n']:.2f} | {r['matvec_ms']:.2f} "
            f"| {r['matvec_ms'] / r['batch_ms']:.2f}× | {r['kernels']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="Q4_K,Q6_K,Q8_0,Q4_0,Q5_K")
    ap.add_argument("--n", default="1,2,4,8,16,32,64", help="batch sizes (tokens)")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=10, help="repetitions per submission")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many submissions")
    ap.add_argument("--no-subgroups", action="store_true", help="a device without optional features")
    args = ap.parse_args(argv)
    dev = NativeDevice.create(features=()) if args.no_subgroups else NativeDevice.create()
    sizes = [int(v) for v in args.n.split(",")]
    i = dev.info
    print(f"adapter {i.name} ({i.backend}, {i.adapter_type}, subgroups {'on' if i.subgroups else 'off'}); "
          f"{args.rows}x{args.k} weights; {datetime.datetime.now():%Y-%m-%d %H:%M}\n")  # fmt: skip
    rows = []
    for t in args.types.split(","):
        rows += bench_type(dev, t, args.rows, args.k, sizes, args.reps, args.rounds)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
