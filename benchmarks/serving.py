"""Serving under load: two OpenAI-compatible servers on the same model and machine, C concurrent streaming
clients each.

    .venv/bin/python benchmarks/serving.py [--model PATH] [--servers realm,llama.cpp] [--concurrency 1,8,32]
                                           [--max-tokens 32] [--n-parallel 8] [--requests-per-client N]
                                           [--endpoint auto|chat|completions]

Servers (one at a time, each a child process in its own process group, killed at the end):
- realm: `realm-web serve -m MODEL --port P --n-parallel N -c N_CTX` (continuous batching of up to N sequences);
  ready when `GET /health` answers 200.
- llama.cpp: llama-cpp-python's server, `python -m llama_cpp.server --model MODEL --model_alias STEM --n_ctx ...`
  with threads = cores and `--interrupt_requests False` (its default cancels a running stream whenever another
  request arrives). It holds one `Llama` behind a lock, so it serves one request at a time; the others wait.
  Ready when `GET /v1/models` answers 200. Needs the `[server]` extras (fastapi, sse-starlette,
  starlette-context, pydantic-settings, uvicorn).
Both serve the model under its file's stem (checked against `/v1/models`).

Load: at each concurrency C, C asyncio clients (httpx) each send R requests back to back; R is
--requests-per-client, or by default min(4, 64 // C), at least 1 (4 at C=1 and 8, 2 at C=32), so a level sends
at most 64 requests. Each request is a streaming `POST /v1/chat/completions` (or `/v1/completions`) with
`stream: true`, `stream_options: {include_usage: true}`, `temperature: 0` and a fixed `max_tokens`; every prompt
is distinct (a short question about a country; the same sequence of prompts for both servers). EOS is not
ignored (the API has no such option), so requests may stop early: the table says how many tokens a request got.
`--endpoint auto` (the default) uses chat when the GGUF has a chat template, else completions (the bench models of
build/bench-models/ have none), and falls back to completions for every server if a server refuses chat.
Before the levels, `--warmup` requests (not measured) pay each server's first-use costs.

Per request: TTFT (request sent to the first SSE chunk that carries text), the gaps between successive text
chunks (inter-token latency, ITL), completion tokens (the usage chunk's `completion_tokens`; a server that sends no
usage chunk, such as llama-cpp-python 0.3, is counted one token per text chunk, and the results say which), and
errors (a non-200 status, a broken stream, no text at all). Per server and level: requests/s and generated
tokens/s over the level's wall time (first request sent to last one done), p50/p99 of TTFT and of the pooled ITLs,
and the p50 of TPOT (a request's time per output token after the first: last text chunk minus first over tokens - 1).
Both are times at the client: when a server produces tokens faster than the client reads them (the bundled 2M model),
chunks arrive together and ITL (and, if the whole reply comes in one read, TPOT) come out near zero.
The load generator runs on the same machine as the server and takes some of its CPU.
Results go to build/bench-results/serving-*.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "build" / "bench-results"
BIN = Path(sys.executable).parent

COUNTRIES = [
    "France", "Germany", "Italy", "Spain", "Portugal", "Greece", "Sweden", "Norway", "Finland", "Denmark",
    "Poland", "Austria", "Ireland", "Hungary", "Belgium", "the Netherlands", "Switzerland", "Iceland", "Romania",
    "Ukraine", "Russia", "Japan", "China", "India", "South Korea", "Thailand", "Vietnam", "Indonesia",
    "the Philippines", "Turkey", "Iran", "Egypt", "Kenya", "Morocco", "Ethiopia", "Nigeria", "Canada", "Mexico",
    "Cuba", "Brazil", "Argentina", "Peru", "Chile", "Colombia", "Australia", "New Zealand",
]  # fmt: skip
QUESTIONS = [
    "What is the capital of {}?", "Which city is the capital of {}?", "Capital of {}?",
    "Tell me the capital of {}.", "Do you know the capital of {}?", "What city is the capital of {}?",
    "Name the capital of {}.",
]  # fmt: skip
OPENINGS = [
    "The capital of {} is", "People in {} speak", "{} is a country in", "A famous city in {} is",
    "The largest city of {} is", "In {} the weather is",
]  # fmt: skip


def prompt(i: int, endpoint: str) -> str:
    """The i-th prompt: all distinct (a country times a phrasing, then numbered rounds)."""
    forms = QUESTIONS if endpoint == "chat" else OPENINGS
    n = len(COUNTRIES) * len(forms)
    text = forms[(i // len(COUNTRIES)) % len(forms)].format(COUNTRIES[i % len(COUNTRIES)])
    text = text[0].upper() + text[1:]
    return text if i < n else f"({i // n + 1}) {text}"


# ---- the servers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def realm_command(model: Path, port: int, a: argparse.Namespace) -> tuple[list[str], str]:
    exe = BIN / "realm-web"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "realm_web.cli"]
    args = ["serve", "-m", str(model), "--port", str(port), "--n-parallel", str(a.n_parallel), "-c", str(a.n_ctx)]
    return cmd + args, "/health"


def llama_command(model: Path, port: int, a: argparse.Namespace) -> tuple[list[str], str]:
    threads = str(os.cpu_count() or 1)
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", model.stem,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(a.n_ctx), "--n_threads", threads,
            "--n_threads_batch", threads, "--interrupt_requests", "False", "--use_mlock", "False",
            "--logits_all", "False", "--verbose", "False"], "/v1/models"  # fmt: skip


SERVERS = {"realm": realm_command, "llama.cpp": llama_command}


class ServerFailed(Exception):
    """A server that did not start or stopped: why, and the tail of its output."""

    def __init__(self, why: str, tail: str = ""):
        super().__init__(why, tail)
        self.why, self.tail = why, tail

    def __str__(self) -> str:
        return f"{self.why}; its output ends:\n{self.tail}" if self.tail else self.why


class Server:
    """A server as a child process in its own process group, its stdout and stderr in a temporary file."""

    def __init__(self, cmd: list[str], ready_path: str, port: int, timeout: float):
        self.cmd, self.ready_path, self.url, self.timeout = cmd, ready_path, f"http://127.0.0.1:{port}", timeout
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__, or by __enter__ when it fails)
        self.proc: subprocess.Popen | None = None

    def tail(self, n: int = 30) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-n:])

    def __enter__(self) -> Server:
        env = dict(os.environ)
        if "XDG_RUNTIME_DIR" not in env:  # wgpu's adapter wants one
            env["XDG_RUNTIME_DIR"] = "/tmp/xdg"
            os.makedirs(env["XDG_RUNTIME_DIR"], exist_ok=True)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, env=env, start_new_session=True)  # fmt: skip
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerFailed(f"exited with status {self.proc.returncode} before it was ready")
                if time.perf_counter() - t0 > self.timeout:
                    raise ServerFailed(f"not ready after {self.timeout:.0f} s")
                try:
                    if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        except BaseException as e:
            self.stop()
            tail = self.tail()
            self.log.close()
            if isinstance(e, ServerFailed):
                raise ServerFailed(e.why, tail) from None
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()


# ---- the load --------------------------------------------------------------------------------------------


async def one_request(client: httpx.AsyncClient, url: str, model_id: str, text: str, a: argparse.Namespace) -> dict:
    body: dict = {"model": model_id, "stream": True, "stream_options": {"include_usage": True},
                  "temperature": 0, "max_tokens": a.max_tokens}  # fmt: skip
    if a.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    path = "/v1/chat/completions" if a.endpoint == "chat" else "/v1/completions"
    r: dict = {"prompt": text, "ttft_s": None, "itl_s": [], "n_tokens": 0, "tokens_from": "chunks", "error": None}
    stamps: list[float] = []
    pieces: list[str] = []
    done = False
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url + path, json=body) as resp:
            if resp.status_code != 200:
                r["error"] = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    r["error"] = f"error event: {json.dumps(chunk['error'])[:300]}"
                    return r
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if a.endpoint == "chat" else choice.get("text")
                    if piece:
                        stamps.append(time.perf_counter())
                        pieces.append(piece)
                    if choice.get("finish_reason"):
                        r["finish_reason"] = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    r["n_tokens"], r["tokens_from"] = usage["completion_tokens"], "usage"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        r["error"] = f"{type(e).__name__}: {e}"
    r["latency_s"] = time.perf_counter() - t0
    r["n_chunks"], r["text"] = len(stamps), "".join(pieces)
    if stamps:
        r["ttft_s"] = stamps[0] - t0
        r["itl_s"] = [t1 - t0_ for t0_, t1 in zip(stamps, stamps[1:], strict=False)]
    if r["tokens_from"] == "chunks":
        r["n_tokens"] = len(stamps)
    r["tpot_s"] = (stamps[-1] - stamps[0]) / (r["n_tokens"] - 1) if len(stamps) > 1 and r["n_tokens"] > 1 else None
    if r["error"] is None and not done:
        r["error"] = "stream ended without [DONE]"
    elif r["error"] is None and not stamps:
        r["error"] = "no text in the stream"
    return r


async def run_level(url: str, model_id: str, c: int, n_req: int, first: int, a: argparse.Namespace) -> dict:
    """c clients, n_req requests each back to back; prompts first, first + 1, ..."""
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(a.timeout, connect=30), limits=limits) as client:

        async def one_client(k: int) -> list[dict]:
            return [await one_request(client, url, model_id, prompt(first + k * n_req + j, a.endpoint), a)
                    for j in range(n_req)]  # fmt: skip

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(one_client(k) for k in range(c)))
        wall = time.perf_counter() - t0
    return summarize(c, n_req, wall, [r for rs in per_client for r in rs])


def pct(xs: list[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(c: int, n_req: int, wall: float, reqs: list[dict]) -> dict:
    ok = [r for r in reqs if r["error"] is None]
    ttft = [r["ttft_s"] for r in ok]
    itl = [g for r in ok for g in r["itl_s"]]
    tpot = [r["tpot_s"] for r in ok if r["tpot_s"] is not None]
    tokens = sum(r["n_tokens"] for r in ok)
    errors = [r["error"] for r in reqs if r["error"] is not None]
    return {
        "concurrency": c, "requests_per_client": n_req, "n_requests": len(reqs), "n_ok": len(ok),
        "n_errors": len(errors), "errors": sorted(set(errors))[:5], "wall_s": wall, "req_s": len(ok) / wall,
        "gen_tok_s": tokens / wall, "gen_tokens": tokens, "tokens_per_req": tokens / len(ok) if ok else 0,
        "tokens_from": sorted({r["tokens_from"] for r in ok}),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "itl_p50_s": pct(itl, 50), "itl_p99_s": pct(itl, 99),
        "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
        "requests": reqs,
    }  # fmt: skip


def requests_per_client(c: int, a: argparse.Namespace) -> int:
    return a.requests_per_client or max(1, min(4, 64 // c))


class ChatRefused(Exception):
    """The warm-up chat request failed (a model without a chat template): fall back to completions."""


def bench_server(name: str, model: Path, levels: list[int], a: argparse.Namespace) -> dict:
    port = free_port()
    cmd, ready = SERVERS[name](model, port, a)
    print(f"{name}: starting {' '.join(cmd)}", file=sys.stderr, flush=True)
    out: dict = {"command": cmd}
    try:
        with Server(cmd, ready, port, a.startup_timeout) as srv:
            out["startup_s"] = srv.startup_s
            models = httpx.get(srv.url + "/v1/models", timeout=10).json().get("data", [])
            ids = [m.get("id") for m in models]
            model_id = model.stem if model.stem in ids or not ids else ids[0]
            out["model_id"], out["listed_models"] = model_id, ids
            first = 0
            if a.warmup:
                warm = asyncio.run(run_level(srv.url, model_id, 1, a.warmup, first, a))
                first += a.warmup
                if warm["n_errors"]:
                    if a.endpoint_auto and a.endpoint == "chat":
                        raise ChatRefused(f"{name}: {warm['errors'][0]}")
                    out["warmup_errors"] = warm["errors"]
            out["levels"] = []
            for c in levels:
                n_req = requests_per_client(c, a)
                print(f"{name}: concurrency {c}, {n_req} requests each ...", file=sys.stderr, flush=True)
                out["levels"].append(asyncio.run(run_level(srv.url, model_id, c, n_req, first, a)))
                first += c * n_req
                if srv.proc.poll() is not None:
                    raise ServerFailed(f"exited with status {srv.proc.returncode} during the run", srv.tail())
            if any(lv["n_errors"] for lv in out["levels"]):
                out["log_tail"] = srv.tail()
    except ServerFailed as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        last = e.tail.strip().splitlines()[-1:] if e.tail.strip() else []
        out["error"] = e.why + "".join(f" ({line.strip()})" for line in last)
        out["log_tail"] = e.tail
    return out


# ---- the report ------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.2f}" if x < 0.01 else f"{x * 1e3:.1f}"


def _ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}×" if x and y else ""


def table(res: dict) -> str:
    servers = res["servers"]
    both = all(servers.get(n, {}).get("levels") for n in ("realm", "llama.cpp"))
    head = ["C", "server", "requests", "req/s", "gen tok/s", "tok/req", "TTFT p50 ms", "TTFT p99 ms",
            "ITL p50 ms", "ITL p99 ms", "TPOT p50 ms", "errors"]  # fmt: skip
    if both:
        head += ["tok/s realm÷llama.cpp", "TTFT p50 realm÷llama.cpp", "TPOT p50 realm÷llama.cpp"]
    lines = [f"### {res['model_id']} ({res['endpoint']}, max_tokens {res['max_tokens']}, "
             f"realm n_parallel {res['n_parallel']})", "",
             "| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]  # fmt: skip
    by_c: dict[int, dict[str, dict]] = {}
    for name, s in servers.items():
        for lv in s.get("levels", []):
            by_c.setdefault(lv["concurrency"], {})[name] = lv
    for c in sorted(by_c):
        for name, lv in by_c[c].items():
            cells = [str(c), name, str(lv["n_requests"]), f"{lv['req_s']:.2f}", f"{lv['gen_tok_s']:.1f}",
                     f"{lv['tokens_per_req']:.1f}", _ms(lv["ttft_p50_s"]), _ms(lv["ttft_p99_s"]),
                     _ms(lv["itl_p50_s"]), _ms(lv["itl_p99_s"]), _ms(lv["tpot_p50_s"]),
                     str(lv["n_errors"])]  # fmt: skip
            if both:
                other = by_c[c].get("llama.cpp") if name == "realm" else None
                cells += ["", "", ""] if other is None else [
                    _ratio(lv["gen_tok_s"], other["gen_tok_s"]), _ratio(lv["ttft_p50_s"], other["ttft_p50_s"]),
                    _ratio(lv["tpot_p50_s"], other["tpot_p50_s"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, s in servers.items():
        if "error" in s:
            lines.append(f"- {name}: unavailable: {s['error']}")
            continue
        counted = sorted({f for lv in s.get("levels", []) for f in lv["tokens_from"]})
        errs = sorted({e for lv in s.get("levels", []) for e in lv["errors"]})
        lines.append(f"- {name}: ready in {s['startup_s']:.1f} s; tokens counted from {' and '.join(counted) or '-'}"
                     + (f"; errors: {' | '.join(errs[:3])}" if errs else ""))  # fmt: skip
    if both:
        levels = zip(servers["realm"]["levels"], servers["llama.cpp"]["levels"], strict=False)
        pairs = [(x, y) for lr, ll in levels for x, y in zip(lr["requests"], ll["requests"], strict=False)
                 if x["error"] is None and y["error"] is None]  # fmt: skip
        same = sum(x["text"] == y["text"] for x, y in pairs)
        lines.append(f"- same reply from both servers (greedy) for {same} of {len(pairs)} prompts")
    return "\n".join(lines) + "\n"


def gguf_info(model: Path) -> tuple[bool, int]:
    """(has a chat template, training context length) from the GGUF header."""
    sys.path.insert(0, str(ROOT))
    from realm_web.gguf import open_gguf

    with open_gguf(model) as g:
        meta = g.metadata
        arch = meta.get("general.architecture", "llama")
        return "tokenizer.chat_template" in meta, int(meta.get(f"{arch}.context_length", 2048))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a .gguf file (default: the bundled model)")
    ap.add_argument("--servers", default="realm,llama.cpp", help=f"comma-separated, of {', '.join(SERVERS)}")
    ap.add_argument("--concurrency", default="1,8,32", help="concurrent clients per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n-parallel", type=int, default=8, help="realm-web serve --n-parallel")
    ap.add_argument("--requests-per-client", type=int, help="default min(4, 64 // C), at least 1")
    ap.add_argument("--endpoint", choices=["auto", "chat", "completions"], default="auto")
    ap.add_argument("--n-ctx", type=int, help="context per sequence, both servers (default: the model's, at most 2048)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests before the levels")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--startup-timeout", type=float, default=300, help="seconds for a server to become ready")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers' `finally` runs
    if a.model:
        model = Path(a.model).resolve()
    else:
        sys.path.insert(0, str(ROOT))
        from realm_web.cli import bundled_model

        model = Path(bundled_model())
    if not model.is_file():
        ap.error(f"no such model: {model}")
    names = a.servers.split(",")
    if unknown := [n for n in names if n not in SERVERS]:
        ap.error(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    levels = [int(c) for c in a.concurrency.split(",")]
    has_template, n_ctx_train = gguf_info(model)
    a.n_ctx = a.n_ctx or min(n_ctx_train, 2048)
    a.endpoint_auto = a.endpoint == "auto"
    if a.endpoint_auto:
        a.endpoint = "chat" if has_template else "completions"
    while True:
        res = {"model": str(model), "model_id": model.stem, "endpoint": a.endpoint, "max_tokens": a.max_tokens,
               "n_parallel": a.n_parallel, "n_ctx": a.n_ctx, "cpu_count": os.cpu_count(), "levels": levels,
               "time": time.strftime("%Y-%m-%d %H:%M:%S"), "servers": {}}  # fmt: skip
        try:
            for name in names:
                res["servers"][name] = bench_server(name, model, levels, a)
        except ChatRefused as e:
            print(f"chat failed ({e}); falling back to /v1/completions for every server", file=sys.stderr)
            a.endpoint, a.endpoint_auto = "completions", False
            continue
        break
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"raw results: {out}", file=sys.stderr)
    return 0 if all("error" not in s for s in res["servers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
