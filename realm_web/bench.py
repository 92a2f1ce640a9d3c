"""Benchmarks. `realm-web bench`: a model's prefill and decode tokens/s (also run in the browser, through
realm_web.web, so both homes are measured the same way). `realm-web bench --kernels`: decode matvec bandwidth
per quant type beside the same adapter's plain copy bandwidth, measured in one run (native: random weights
come from numpy, imported where they are made)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from realm_web.device import Device
from realm_web.kernels import build, fold, u32s
from realm_web.kernels.attention import kv_type_bytes
from realm_web.kernels.matmul import matvec
from realm_web.quants import BY_NAME, COMPUTE_TYPES, SCALE_FIELDS
from realm_web.weights import upload_bytes


def random_weight_bytes(
    type_name: str, n_rows: int, k: int, seed: int = 0, scale: tuple[float, float] = (0.002, 0.05)
) -> bytes:
    """Valid random data of a GGUF type: random quants, finite f16 scales drawn from `scale` (keep them normal
    f16, ≥ 6.1e-5: denormals and NaNs would distort timings on CPU adapters); float types are N(0, 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = BY_NAME[type_name]
    if t.block_elems == 1:
        vals = rng.standard_normal(n_rows * k).astype(np.float32)
        if type_name == "F16":
            return vals.astype(np.float16).tobytes()
        if type_name == "BF16":
            return (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return vals.tobytes()
    n_blocks = n_rows * k // t.block_elems
    raw = rng.integers(0, 256, size=(n_blocks, t.block_bytes), dtype=np.uint8)
    for off in SCALE_FIELDS[type_name]:
        raw[:, off : off + 2] = rng.uniform(*scale, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def _time(dev: Device, dispatches: list, sync_buf, reps: int) -> float:
    """Seconds per repetition of `dispatches`, all repetitions in one submission, waited for by a read."""
    dev.submit(dispatches)
    dev.read(sync_buf, 0, 4)
    t0 = time.perf_counter()
    dev.submit(dispatches * reps)
    dev.read(sync_buf, 0, 4)
    return (time.perf_counter() - t0) / reps


def copy_bandwidth(dev: Device, nbytes: int = 64 << 20, rounds: int = 3) -> float:
    """Bytes moved per second (read + written) by a plain vec4 copy kernel: best of `rounds`."""
    nbytes = min(nbytes, dev.info.max_storage_binding) & ~15
    src, dst = dev.create_buffer(nbytes, "copy.src"), dev.create_buffer(nbytes, "copy.dst")
    wg = 64
    n4 = nbytes // 16
    gx, gy = fold(-(-n4 // wg), dev.info.max_workgroups_per_dim)
    d = build(dev, "copy", u32s(n4, gx, 0, 0), [src, dst], (gx, gy, 1), {"WG": wg})
    best = min(_time(dev, [d], dst, 8) for _ in range(rounds))
    dev.destroy(src)
    dev.destroy(dst)
    return 2 * nbytes / best


@dataclass
class KernelResult:
    type: str
    weight_bytes: int
    seconds: float

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.seconds / 1e9


def matvec_bandwidth(dev: Device, type_name: str, n_rows: int = 4096, k: int = 4096, rounds: int = 3) -> KernelResult:
    """Decode matvec of an n_rows × k weight: seconds per product, best of `rounds`."""
    data = random_weight_bytes(type_name, n_rows, k)
    w = upload_bytes(dev, "bench", BY_NAME[type_name], (k, n_rows), data)
    x, y = dev.create_buffer(4 * k, "x"), dev.create_buffer(4 * n_rows, "y")
    dev.write(x, random_weight_bytes("F32", 1, k, seed=1))
    ds = matvec(dev, w, x, y)
    reps = max(3, min(200, int(1.5e9 / 3e9 * 3e9 / max(len(data), 1) / 4)))
    best = min(_time(dev, ds, y, reps) for _ in range(rounds))
    for p in w.parts:
        dev.destroy(p.buffer)
    return KernelResult(type_name, len(data), best)


def bench_kernels(dev: Device, n_rows: int = 4096, k: int = 4096, types=COMPUTE_TYPES) -> dict:
    copy_before = copy_bandwidth(dev)
    results = [matvec_bandwidth(dev, t, n_rows, k) for t in types]
    copy_after = copy_bandwidth(dev)
    return {"copy_gbps": max(copy_before, copy_after) / 1e9, "results": results, "shape": (n_rows, k)}


def format_kernel_table(dev: Device, report: dict) -> str:
    i = dev.info
    n_rows, k = report["shape"]
    copy = report["copy_gbps"]
    lines = [
        f"adapter: {i.name} ({i.backend}, {i.adapter_type}); subgroups: {i.subgroups}",
        f"decode matvec, {n_rows}x{k} weight, one f32 vector; copy bandwidth {copy:.2f} GB/s (read + write)",
        "",
        "| type | weight MiB | us / matvec | GB/s (weights) | ÷ copy GB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r.type} | {r.weight_bytes / 2**20:.1f} | {r.seconds * 1e6:.0f} | {r.gbps:.2f} | {r.gbps / copy:.2f} |"
        )
    return "\n".join(lines)


def bench_model(model, n_prompt: int = 64, n_gen: int = 64, load_s: float = 0.0, prompt=None) -> dict:
    """Prefill and decode tokens/s of a loaded model through its engine, greedy, EOS ignored, one request.
    `prompt`: token ids (default: BOS then a fixed spread of ids, `n_prompt` long). ttft_s: from the request's
    submission to the first new token on the host (prefill, no prefix-cache hit); decode: the `n_gen` tokens
    after it."""
    if prompt is None:
        n_prompt = min(n_prompt, model.n_ctx - n_gen - 1)
        bos = model.tokenizer.bos_id or 0
        prompt = [bos] + [(7 * i + 11) % model.config.n_vocab for i in range(n_prompt - 1)]
    prompt = model._check_prompt(prompt, n_gen + 1)
    opts = {"temperature": 0, "ignore_eos": True, "cache_salt": f"bench-{time.perf_counter_ns()}"}
    # warm-up: pipelines and the recorded steps of this prompt's shape and of decode are built here
    list(model.generate(prompt, max_tokens=2, **{**opts, "cache_salt": opts["cache_salt"] + "-warm"}).ids())
    t0 = time.perf_counter()
    it = model.generate(prompt, max_tokens=n_gen + 1, **opts).ids()
    next(it)
    t1 = time.perf_counter()
    n = sum(1 for _ in it)
    t2 = time.perf_counter()
    return {
        "model": model.gguf.metadata.get("general.name") or "?",
        "adapter": model.device.info.name,
        "load_s": load_s,
        "n_prompt": len(prompt),
        "ttft_s": t1 - t0,
        "prefill_tok_s": len(prompt) / (t1 - t0),
        "n_gen": n,
        "decode_tok_s": n / (t2 - t1),
    }


def decode_bytes(model, pos: int) -> int:
    """Bytes a decode step at position `pos` must read: every weight matrix once (the embedding table only
    its one row, unless it is also the output head), norms and biases, and the K and V caches up to `pos` (at
    the cache's element size). Decode tok/s × this is the achieved bandwidth the roofline compares with copy
    bandwidth."""
    t, c = model.transformer, model.config
    total = 0
    for name, w in t.w.items():
        embd_only = name == "token_embd.weight" and not c.tied_output
        total += w.row_bytes if embd_only else w.row_bytes * w.n_rows
    total += sum(b.size for b in t.vec.values())
    return total + 2 * c.n_layer * (pos + 1) * c.kv_dim * kv_type_bytes(model.engine.kv.kv_type)


def bench_batched(model, n_streams: int, n_prompt: int = 16, n_gen: int = 32, lora: list | None = None) -> dict:
    """Aggregate decode tokens/s of `n_streams` concurrent greedy streams (EOS ignored) through the engine: each
    stream has its own prompt of `n_prompt` ids (no shared prefix), all submitted at once. Decode is timed from
    the moment every stream has its first token to the last token, counting the tokens produced in between.
    Runs natively (the engine thread) and in the browser (this call drives the steps). `lora`: each stream's
    adapters ({name: scale}; stream i takes lora[i % len(lora)]), default: the model's defaults."""
    import threading

    from realm_web.sampling import SamplingParams
    from realm_web.sequence import Sequence

    eng, vocab = model.engine, model.config.n_vocab
    bos = model.tokenizer.bos_id or 0
    salt = f"bench-batched-{time.perf_counter_ns()}"

    def run(max_tokens: int) -> tuple[list[list[float]], float]:
        stamps: list[list[float]] = [[] for _ in range(n_streams)]
        left = [n_streams]
        done = threading.Event()

        def emit(i: int):
            def on_event(ev) -> None:
                if ev.token is not None:
                    stamps[i].append(time.perf_counter())
                if ev.finished:
                    left[0] -= 1
                    if ev.error is not None or left[0] == 0:
                        done.set()

            return on_event

        t0 = time.perf_counter()
        for s in range(n_streams):
            ids = [bos] + [(7 * i + 11 + 131 * s + max_tokens) % vocab for i in range(n_prompt - 1)]
            seq = Sequence(ids, SamplingParams(temperature=0), max_tokens, emit(s), cache_salt=salt, ignore_eos=True)
            model.submit(seq, lora[s % len(lora)] if lora else None)
        if eng._thread is None:
            eng.run_until(done.is_set)
        done.wait()
        return stamps, t0

    run(3)  # warm-up: the recorded step shapes of this batch
    stamps, t0 = run(n_gen + 1)
    if any(len(s) != n_gen + 1 for s in stamps):
        raise RuntimeError(f"a stream ended early: {[len(s) for s in stamps]} tokens")
    start = max(s[0] for s in stamps)
    end = max(s[-1] for s in stamps)
    n = sum(1 for s in stamps for t in s if t > start)
    return {
        "n_streams": n_streams,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "ttft_s": sum(s[0] - t0 for s in stamps) / n_streams,
        "decode_tok_s": n / (end - start) if end > start else 0.0,
        "per_stream_tok_s": n / (end - start) / n_streams if end > start else 0.0,
    }


def bench_prefix_cache(model, n_prompt: int = 256) -> dict:
    """Time to first token of an `n_prompt`-token prompt without, then with, a prefix-cache hit (same prompt,
    same fresh cache_salt)."""
    vocab, bos = model.config.n_vocab, model.tokenizer.bos_id or 0
    n_prompt = min(n_prompt, model.n_ctx - 2)
    ids = [bos] + [(13 * i + 5) % vocab for i in range(n_prompt - 1)]
    salt = f"bench-prefix-{time.perf_counter_ns()}"
    out = {"n_prompt": n_prompt}
    list(model.generate(ids, max_tokens=1, temperature=0, ignore_eos=True, cache_salt=salt + "-warm"))
    for key in ("miss", "hit"):
        t0 = time.perf_counter()
        g = model.generate(ids, max_tokens=1, temperature=0, ignore_eos=True, cache_salt=salt)
        next(g.ids())
        out[f"ttft_{key}_s"] = time.perf_counter() - t0
        out[f"cached_tokens_{key}"] = g.usage["cached_prompt_tokens"]
        g.close()
    return out


def speculative_prompts(model, n: int = 8) -> list[list[int]]:
    """Prompts for `bench_speculative`: chat questions when the model has a chat template in its file (the
    bundled model answers them), else completion openings."""
    countries = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Peru", "Canada", "Kenya", "Chile"]
    if model.gguf.metadata.get("tokenizer.chat_template"):
        return [model.chat_ids([{"role": "user", "content": f"What is the capital of {c}?"}]) for c in countries[:n]]
    return [model.tokenize(f"The capital of {c} is") for c in countries[:n]]


def bench_speculative(model, prompts: list[list[int]] | None = None, n_gen: int = 64, temperature: float = 0.0,
                      seed: int = 0, ignore_eos: bool = False) -> dict:  # fmt: skip
    """Decode tokens/s of a speculative model with its drafts and without (the same loaded weights: requests
    opt out with speculative=False), one request at a time, each reply up to `n_gen` tokens (to its end unless
    `ignore_eos`); the acceptance rate (accepted ÷ drafted tokens) and the mean accepted length (accepted tokens
    per step that verified a draft). Decode is timed from each request's first token to its last."""
    if model.speculative is None:
        raise ValueError("bench_speculative needs a model loaded with draft_model= or speculative='ngram'")
    prompts = prompts or speculative_prompts(model)
    opts = {"temperature": temperature, "ignore_eos": ignore_eos, "seed": seed}
    list(model.generate(prompts[0], max_tokens=4, **opts).ids())  # warm-up: pipelines, recorded steps
    list(model.generate(prompts[0], max_tokens=4, speculative=False, **opts).ids())
    out: dict = {"adapter": model.device.info.name, "mode": model.speculative.mode, "temperature": temperature,
                 "n_prompts": len(prompts), "n_gen": n_gen, "draft_max": model.speculative.draft_max}  # fmt: skip
    for name, spec in (("plain", False), ("speculative", True)):
        tokens = secs = drafted = accepted = rounds = 0
        for i, ids in enumerate(prompts):
            g = model.generate(ids, max_tokens=n_gen + 1, speculative=spec, cache_salt=f"spec-{name}-{i}", **opts)
            it = g.ids()
            next(it)
            t0 = time.perf_counter()
            tokens += sum(1 for _ in it)
            secs += time.perf_counter() - t0
            drafted += g.usage["draft_tokens"]
            accepted += g.usage["accepted_draft_tokens"]
            rounds += g.usage["draft_rounds"]
        out[f"{name}_decode_tok_s"] = tokens / secs
        if spec:
            out["drafted"], out["accepted"], out["rounds"] = drafted, accepted, rounds
            out["acceptance_rate"] = accepted / drafted if drafted else 0.0
            out["mean_accepted"] = accepted / rounds if rounds else 0.0
    out["speedup"] = out["speculative_decode_tok_s"] / out["plain_decode_tok_s"]
    return out
