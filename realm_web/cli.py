"""The `realm-web` command: run, chat, bench, models. With no --model, every command uses the bundled model."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata, resources
from pathlib import Path

from realm_web.errors import RealmError

BUNDLED = "realm-tiny-facts.gguf"
BUNDLED_DRAFT = "realm-tiny-facts-draft.gguf"
BUNDLED_LORA = "realm-tiny-facts-lora-fiction.gguf"
# What the native path imports beyond the pure-Python core (pyproject's dependencies outside Pyodide).
_NATIVE_DEPS = {
    "wgpu": "wgpu>=0.32,<0.33",
    "numpy": "numpy>=1.26",
    "starlette": "starlette>=0.40",
    "uvicorn": "uvicorn>=0.30",
    "prometheus_client": "prometheus-client>=0.20",
}


def _version() -> str:
    try:
        return metadata.version("realm_web")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        from realm_web import __version__

        return __version__


def bundled_model() -> str:
    """Path of the small model shipped inside the package."""
    return str(resources.files("realm_web") / "models" / BUNDLED)


def bundled_lora() -> str:
    """Path of the bundled model's demo LoRA adapter (teaches it capitals of made-up countries)."""
    return os.path.join(os.path.dirname(bundled_model()), BUNDLED_LORA)


def bundled_draft() -> str:
    """Path of the bundled model's draft model (speculative decoding: same vocabulary, much smaller)."""
    return str(resources.files("realm_web") / "models" / BUNDLED_DRAFT)


class ProgressBar:
    """A load progress bar on stderr (only when stderr is a terminal, or always with force=True)."""

    def __init__(self, label: str, force: bool = False):
        self.label, self.enabled, self.t0 = label, force or sys.stderr.isatty(), time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {done / 2**20:7.1f}/{total / 2**20:.1f} MiB")
        if done >= total:
            sys.stderr.write(f" {time.perf_counter() - self.t0:.1f}s\n")
        sys.stderr.flush()


def _load(args: argparse.Namespace):
    import realm_web

    path = args.model or bundled_model()
    opts = {"n_ctx": args.ctx} if getattr(args, "ctx", None) else {}
    if getattr(args, "kv_type", None):
        opts["kv_type"] = args.kv_type
    if getattr(args, "streams", None):  # bench --streams: room for the most streams at once
        opts["n_parallel"] = max(args.streams)
    if getattr(args, "chat_template", None):
        opts["chat_template"] = args.chat_template
    opts.update(_spec_options(args))
    lora = [(p, 1.0) for p in getattr(args, "lora", None) or []]
    lora += [(p, float(scale)) for p, scale in getattr(args, "lora_scaled", None) or []]
    if lora:
        opts["lora"] = lora
    return realm_web.load(path, progress=ProgressBar(f"loading {os.path.basename(path)}"), **opts)


def _spec_options(args: argparse.Namespace) -> dict:
    """realm_web.load's speculative-decoding options from --draft / --lookup and their settings."""
    draft, lookup = getattr(args, "draft", None), getattr(args, "lookup", False)
    if not draft and not lookup:
        return {}
    if draft and lookup:
        raise RealmError("give --draft or --lookup, not both")
    opts = {"draft_max": args.draft_max, "draft_min": args.draft_min, "draft_p_min": args.draft_p_min}
    if draft:
        opts["draft_model"] = draft
    else:
        opts.update(speculative="ngram", ngram_n=args.lookup_ngram)
    return opts


def _spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding (output exactly as without)")
    g.add_argument("--draft", "-md", "--model-draft", dest="draft", metavar="DRAFT.gguf",
                   help="draft model with the target's vocabulary (llama.cpp's -md)")  # fmt: skip
    g.add_argument("--lookup", action="store_true", help="draft from the sequence itself (prompt lookup, n-grams)")
    g.add_argument("--draft-max", type=int, default=16, help="most draft tokens per step (default 16)")
    g.add_argument("--draft-min", type=int, default=0, help="fewest draft tokens worth verifying (default 0)")
    g.add_argument("--draft-p-min", type=float, default=0.8,
                   help="stop drafting below this top probability (default 0.8)")  # fmt: skip
    g.add_argument("--lookup-ngram", type=int, default=3, help="--lookup: n-gram size matched (default 3)")


def _lora_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRA adapters (llama.cpp's GGUF adapters, applied unmerged)")
    g.add_argument("--lora", action="append", metavar="ADAPTER.gguf", help="apply an adapter at scale 1 (repeatable)")
    g.add_argument("--lora-scaled", nargs=2, action="append", metavar=("ADAPTER.gguf", "SCALE"),
                   help="apply an adapter at SCALE (repeatable)")  # fmt: skip


def _sampling(args: argparse.Namespace) -> dict:
    return {"max_tokens": args.n, "temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p,
            "min_p": args.min_p, "repeat_penalty": args.repeat_penalty, "repeat_last_n": args.repeat_last_n,
            "seed": args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little"),
            "stop": args.stop or ()}  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    model = _load(args)
    if args.chat:
        return _chat_loop(model, args)
    prompt = args.prompt if args.prompt is not None else "The capital of France is"
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for piece in model.generate(prompt, **_sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _chat_loop(model, args: argparse.Namespace) -> int:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt:
        messages.append({"role": "user", "content": args.prompt})
    interactive = sys.stdin.isatty()
    while True:
        if not messages or messages[-1]["role"] != "user":
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                return 0
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = []
        for piece in model.chat(messages, **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def _bench(args: argparse.Namespace) -> int:
    from realm_web.device import get_device

    if args.kernels:
        from realm_web.bench import bench_kernels, format_kernel_table

        dev = get_device()
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
    if args.profile:
        from realm_web.profile import format_profile, profile_decode

        r = profile_decode(_load(args), n_steps=args.steps, n_prompt=args.prompt_tokens)
        print(json.dumps(r, indent=2) if args.json else format_profile(r))
        return 0
    if getattr(args, "draft", None) or args.lookup:
        from realm_web.bench import bench_speculative

        model = _load(args)
        rows = [bench_speculative(model, n_gen=args.gen_tokens, temperature=t) for t in (0.0, 0.8)]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            what = f"draft {os.path.basename(args.draft)}" if args.draft else f"lookup (n-gram {args.lookup_ngram})"
            print(f"speculative decoding with {what}, draft_max {args.draft_max}, on {model.device.info.name}")
            for r in rows:
                print(f"temperature {r['temperature']:.1f}: decode {r['plain_decode_tok_s']:.1f} -> "
                      f"{r['speculative_decode_tok_s']:.1f} tok/s ({r['speedup']:.2f}x), acceptance "
                      f"{r['acceptance_rate']:.0%}, mean accepted {r['mean_accepted']:.2f} per step")  # fmt: skip
        return 0
    if args.streams:
        from realm_web.bench import bench_batched

        model = _load(args)
        rows = [bench_batched(model, n, n_prompt=min(args.prompt_tokens, 64), n_gen=args.gen_tokens)
                for n in args.streams]  # fmt: skip
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"aggregate decode of concurrent greedy streams on {model.device.info.name}")
            for r in rows:
                print(f"{r['n_streams']:>3} streams  {r['decode_tok_s']:8.1f} tok/s  "
                      f"({r['per_stream_tok_s']:.1f} per stream, {r['decode_tok_s'] / rows[0]['decode_tok_s']:.2f}x "
                      f"the first row)")  # fmt: skip
        return 0
    from realm_web.bench import bench_model

    t0 = time.perf_counter()
    model = _load(args)
    load_s = time.perf_counter() - t0
    r = bench_model(model, n_prompt=args.prompt_tokens, n_gen=args.gen_tokens, load_s=load_s)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"model {r['model']} on {r['adapter']}")
        print(f"load      {r['load_s']:.2f} s")
        print(f"prefill   {r['prefill_tok_s']:.1f} tok/s ({r['n_prompt']} tokens)")
        print(f"decode    {r['decode_tok_s']:.1f} tok/s ({r['n_gen']} tokens)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from realm_web.inventory import describe, find_models

    dirs = args.dirs or [str(Path(bundled_model()).parent), "."]
    rows = [describe(p) for p in find_models(dirs)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no .gguf files found under " + ", ".join(dirs))
        return 0
    print(f"{'file':<40} {'arch':<8} {'params':>8} {'size':>9} {'ctx':>6}  quant mix")
    for r in rows:
        if "error" in r:
            print(f"{r['path']:<40} unreadable: {r['error']}")
            continue
        mix = ", ".join(f"{t}×{n}" for t, n in r["quant_mix"].items())
        ctx = r["context_length"] or ("LoRA" if r.get("type") == "lora" else "?")
        print(f"{r['path']:<40} {r['arch']:<8} {r['params'] / 1e6:7.1f}M {r['size'] / 2**20:7.1f}Mi "
              f"{ctx:>6}  {mix}")  # fmt: skip
    return 0


def _serve(args: argparse.Namespace) -> int:
    from realm_web.server import serve

    keys = list(args.api_key or [])
    env_keys = os.environ.get("REALM_WEB_API_KEYS", "")
    keys += [k for k in env_keys.split(",") if k.strip()]
    options = {"n_parallel": args.n_parallel, "api_keys": keys, "rate_limit": args.rate_limit,
               "max_concurrent": args.max_concurrent, "max_body": args.max_body,
               "cors_origins": args.cors_origin or []}  # fmt: skip
    if args.ctx:
        options["n_ctx"] = args.ctx
    if args.kv_cache_tokens:
        options["kv_cache_tokens"] = args.kv_cache_tokens
    if args.kv_type:
        options["kv_type"] = args.kv_type
    options.update(_spec_options(args))
    loras = []
    for spec in args.lora or []:
        name, sep, path = spec.partition("=")
        loras.append((name, path) if sep and name and path else (os.path.splitext(os.path.basename(spec))[0], spec))
    return serve(args.host, args.port, args.model or [], open_browser=args.open, loras=loras, **options)


def _kv_type_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-type", choices=["f16", "f32"],
                   help="KV cache element type (default f16: half the memory; f32: exact keys and values)")  # fmt: skip


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", dest="n", type=int, default=128, help="max new tokens (default 128)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("-s", "--seed", type=int, help="RNG seed (default: random)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="realm-web", description="GGUF language models on WebGPU")
    ap.add_argument("--version", action="version", version=f"realm-web {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="stream a continuation of a prompt, or --chat")
    r.add_argument("prompt", nargs="?", help='prompt text (default: "The capital of France is")')
    r.add_argument("-p", "--prompt", dest="prompt_opt", metavar="PROMPT", help="the prompt, as llama.cpp takes it")
    r.add_argument("-m", "--model", help="GGUF path or URL (default: the bundled model)")
    r.add_argument("--chat", action="store_true", help="chat: reads user turns from stdin")
    r.add_argument("--system", help="system message for --chat")
    r.add_argument("--chat-template", help="built-in template name (chatml, llama2, llama3, alpaca) or Jinja text")
    r.add_argument("-c", "--ctx", "--ctx-size", dest="ctx", type=int,
                   help="context length (default: the model's, at most 4096)")  # fmt: skip
    _kv_type_flag(r)
    _sampling_flags(r)
    _spec_flags(r)
    _lora_flags(r)
    r.set_defaults(func=_run)

    b = sub.add_parser("bench", help="model speed (load, prefill, decode), --kernels or --profile")
    b.add_argument("-m", "--model", help="GGUF path or URL (default: the bundled model)")
    b.add_argument("--prompt-tokens", type=int, default=64)
    b.add_argument("--gen-tokens", type=int, default=64)
    b.add_argument("--kernels", action="store_true", help="decode matvec GB/s per quant type vs copy bandwidth")
    b.add_argument("--rows", type=int, default=4096, help="--kernels: weight rows (default 4096)")
    b.add_argument("--cols", type=int, default=4096, help="--kernels: weight columns (default 4096)")
    b.add_argument("--types", help="--kernels: comma-separated quant types (default: all)")
    b.add_argument("--profile", action="store_true", help="GPU time per kernel of a decode step, and host time")
    b.add_argument("--steps", type=int, default=16, help="--profile: decode steps measured (default 16)")
    b.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], metavar="N,N,...",
                   help="aggregate decode tok/s of N concurrent streams (batched), e.g. 1,2,4,8")  # fmt: skip
    b.add_argument("--json", action="store_true", help="machine-readable output")
    _kv_type_flag(b)
    _spec_flags(b)  # with --draft or --lookup: decode with and without drafts, acceptance
    _lora_flags(b)
    b.set_defaults(func=_bench)

    m = sub.add_parser("models", help="list GGUF files under folders")
    m.add_argument("dirs", nargs="*", help="folders to search (default: the bundled models and .)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_models)

    s = sub.add_parser("serve", help="an OpenAI-compatible API, the demo page and the SDK over HTTP")
    s.add_argument("-m", "--model", action="append", metavar="PATH",
                   help="GGUF file to serve, routed by its file stem as `model` (repeatable; default: the bundled "
                        "model). Each is loaded for the API and offered to the demo page")  # fmt: skip
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--api-key", action="append", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/ (repeatable; "
                        "also REALM_WEB_API_KEYS=k1,k2)")  # fmt: skip
    s.add_argument("--n-parallel", "-np", type=int, default=8, help="sequences decoded together per model (default 8)")
    s.add_argument("-c", "--ctx-size", dest="ctx", type=int, help="context length (default: the model's, at most 4096)")
    s.add_argument("--kv-cache-tokens", type=int, help="paged KV pool size in tokens (default: n-parallel contexts)")
    _kv_type_flag(s)
    s.add_argument("--rate-limit", type=int, metavar="RPM", help="requests per minute per key (default: no limit)")
    s.add_argument("--max-concurrent", type=int, metavar="N", help="requests in flight per key (default: no limit)")
    s.add_argument("--max-body", type=int, default=4 << 20, metavar="BYTES", help="request body limit (default 4 MiB)")
    s.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN ('*' for any; repeatable; default: none)")  # fmt: skip
    s.add_argument("--open", action="store_true", help="open the page in the default browser")
    _spec_flags(s)
    s.add_argument("--lora", action="append", metavar="[NAME=]ADAPTER.gguf",
                   help="serve a LoRA adapter over the model it fits as the model id NAME (default: the file stem); "
                        "requests may also pick adapters with a 'lora' field (repeatable)")  # fmt: skip
    s.set_defaults(func=_serve)

    args = ap.parse_args(argv)
    if args.cmd == "run" and args.prompt_opt is not None:  # llama.cpp's spelling of the prompt
        if args.prompt is not None:
            r.error("give the prompt once: as an argument or with -p/--prompt")
        args.prompt = args.prompt_opt
    try:
        return args.func(args)
    except RealmError as e:
        print(f"realm-web: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in _NATIVE_DEPS:
            raise
        print(f"realm-web: error: the native runtime needs {e.name}, which is not installed: "
              f"pip install {' '.join(map(repr, _NATIVE_DEPS.values()))}", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
