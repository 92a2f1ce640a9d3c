"""The `realm-web` command."""

from __future__ import annotations

import argparse
import json
import sys

from realm_web.errors import RealmError


def _bench(args: argparse.Namespace) -> int:
    from realm_web.bench import bench_kernels, format_kernel_table
    from realm_web.device import get_device

    dev = get_device()
    if not args.kernels:
        print("realm-web bench: give --kernels (model benchmarks come with model loading)", file=sys.stderr)
        return 2
    types = args.types.upper().split(",") if args.types else None
    report = bench_kernels(dev, args.rows, args.cols, **({"types": types} if types else {}))
    if args.json:
        out = {
            "adapter": dev.info.name,
            "copy_gbps": report["copy_gbps"],
            "matvec": [{"type": r.type, "bytes": r.weight_bytes, "seconds": r.seconds, "gbps": r.gbps}
                       for r in report["results"]],
        }  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        print(format_kernel_table(dev, report))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="realm-web", description="LLM inference on WebGPU")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="benchmarks")
    b.add_argument("--kernels", action="store_true", help="decode matvec GB/s per quant type vs copy bandwidth")
    b.add_argument("--rows", type=int, default=4096, help="weight rows (default 4096)")
    b.add_argument("--cols", type=int, default=4096, help="weight columns (default 4096)")
    b.add_argument("--types", help="comma-separated quant types (default: all)")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=_bench)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except RealmError as e:
        print(f"realm-web: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
