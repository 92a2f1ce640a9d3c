"""Where a decode step's time goes (`realm-web bench --profile`): GPU time per kernel from WebGPU timestamp
queries, the whole step's GPU time, and the host's share of the wall time. Pure Python: runs in the browser too.

A decode step is what the engine replays per token of a lone sequence: write the id, position and slot, submit
the recorded one-token step plus the sampler, read the 4-byte id back. Three ways of running it are measured
over the same positions:
- plain, as the engine runs it: wall time, split at the return of the submit into host time
  (checks, packing, encoding, submission) and the wait for the id;
- one compute pass with a timestamp at its beginning and end: the GPU time of the step as generation runs it;
- one pass per dispatch, each with its timestamps: GPU time per kernel. Pass boundaries cost time of their
  own (barriers, timestamp writes), so these add up to more than the one-pass step; both totals are shown.
"""

from __future__ import annotations

import statistics
import struct
import time
from typing import Any

from realm_web.bench import copy_bandwidth, decode_bytes
from realm_web.sampling import SamplingParams, sample_row

SLOT = 0  # the sequence slot the profiler uses (the engine is idle: exclusive())


def _decode_plain(model: Any, pos: int, tok: int) -> tuple[float, float, int]:
    """One decode step as the engine runs it for one sequence: (seconds until the submission returned, seconds
    waiting for the id, the id)."""
    e = model.engine
    t0 = time.perf_counter()
    e.t.run([tok], [pos], [SLOT], [0], [e.sampler.dispatch(1)])
    t1 = time.perf_counter()
    nxt = e.sampler.read(1)[0]
    return t1 - t0, time.perf_counter() - t1, nxt


def _decode_timed(model: Any, pos: int, tok: int, per_dispatch: bool) -> list[int] | None:
    """One decode step with GPU timestamps (see Device.timed_submit)."""
    e, dev = model.engine, model.device
    dev.write(e.t.ids, struct.pack("<I", tok))  # as Transformer.run packs a one-token step
    dev.write(e.t.tok, struct.pack("<2I", pos, SLOT))
    dev.write(e.t.out_rows, struct.pack("<I", 0))
    return dev.timed_submit(e.t.step(1, 1).dispatches + [e.sampler.dispatch(1)], per_dispatch=per_dispatch)


def profile_decode(model: Any, n_steps: int = 16, n_prompt: int = 32, warmup: int = 2) -> dict:
    """Profile `n_steps` decode steps after an `n_prompt`-token prompt (BOS and a fixed spread of ids, greedy).
    Each way of running the step (see the module docstring) runs over the same positions after `warmup` steps.
    Step figures are medians over the steps; per-kernel figures are means (so that they add up). Times in µs.
    The engine must be idle; its blocks are returned afterwards."""
    with model.engine.exclusive():
        return _profile(model, n_steps, n_prompt, warmup)


def _profile(model: Any, n_steps: int, n_prompt: int, warmup: int) -> dict:
    e, cfg = model.engine, model.config
    t = e.t
    n_steps = max(1, n_steps)
    n_prompt = max(1, min(n_prompt, model.n_ctx - n_steps - warmup - 1))
    bos = model.tokenizer.bos_id or 0
    prompt = [bos] + [(7 * i + 11) % cfg.n_vocab for i in range(n_prompt - 1)]
    blocks = e.kv.manager
    table, _ = blocks.allocate([0] * (n_prompt + warmup + n_steps), use_cache=False)
    try:
        e.kv.write_row(SLOT, table.blocks)
        sp = SamplingParams(temperature=0)
        e.sampler.reset_slot(SLOT, sp)
        e.sampler.set_rows([sample_row(SLOT, sp)])
        for s0 in range(0, n_prompt, t.max_batch):
            chunk = prompt[s0 : s0 + t.max_batch]
            last = s0 + len(chunk) == n_prompt
            t.run(chunk, list(range(s0, s0 + len(chunk))), [SLOT] * len(chunk), [len(chunk) - 1] if last else [],
                  [e.sampler.dispatch(1)] if last else [])  # fmt: skip
        tok = e.sampler.read(1)[0]
        return _measure(model, n_prompt, warmup, n_steps, tok)
    finally:
        blocks.free_table(table)


def _measure(model: Any, n_prompt: int, warmup: int, n_steps: int, tok: int) -> dict:
    dev, t, cfg = model.device, model.engine.t, model.config
    first = n_prompt + warmup
    positions = range(first, first + n_steps)
    for pos in range(n_prompt, first):  # pipelines, the recorded step, query sets
        _decode_plain(model, pos, tok)
        _decode_timed(model, pos, tok, False)
        _decode_timed(model, pos, tok, True)

    host, wait = [], []
    for pos in positions:
        h, w, tok = _decode_plain(model, pos, tok)
        host.append(h)
        wait.append(w)
    wall = [h + w for h, w in zip(host, wait, strict=True)]

    names = [d.name for d in t.step(1, 1).dispatches] + [model.engine.sampler.dispatch(1).name]
    calls: dict[str, int] = {}
    for n in names:
        calls[n] = calls.get(n, 0) + 1

    gpu_step: float | None = None
    per_kernel: dict[str, float] = {}
    if dev.info.timestamps:
        gpu_step = statistics.median(_decode_timed(model, pos, tok, False)[0] for pos in positions) / 1e3
        sums = dict.fromkeys(calls, 0)
        for pos in positions:
            for n, ns in zip(names, _decode_timed(model, pos, tok, True), strict=True):
                sums[n] += ns
        per_kernel = {n: s / n_steps / 1e3 for n, s in sums.items()}
    split_total = sum(per_kernel.values()) if per_kernel else None

    kernels = [
        {"name": n, "calls": c, "us": per_kernel.get(n),
         "pct": 100 * per_kernel[n] / split_total if split_total else None}
        for n, c in calls.items()
    ]  # fmt: skip
    kernels.sort(key=lambda k: (-(k["us"] or 0), -k["calls"], k["name"]))
    wall_us = statistics.median(wall) * 1e6
    i = dev.info
    return {
        "model": model.gguf.metadata.get("general.name") or "?",
        "adapter": i.name,
        "backend": i.backend,
        "adapter_type": i.adapter_type,
        "timestamps": i.timestamps,
        "n_layer": cfg.n_layer,
        "n_prompt": n_prompt,
        "n_steps": n_steps,
        "positions": [positions[0], positions[-1]],
        "dispatches_per_step": len(names),
        "wall_us": wall_us,  # plain step, as generation runs it
        "host_submit_us": statistics.median(host) * 1e6,  # step start until the submission returned
        "wait_us": statistics.median(wait) * 1e6,  # submission returned until the id was on the host
        "gpu_step_us": gpu_step,  # the step as one compute pass
        "gpu_split_us": split_total,  # sum of the per-dispatch times (one pass each)
        "host_outside_gpu_us": None if gpu_step is None else wall_us - gpu_step,  # wall − one-pass GPU step
        "kernels": kernels,
        # the roofline: what the step must read, and what this adapter's plain copy kernel moves (read + write)
        "decode_bytes": decode_bytes(model, positions[len(positions) // 2]),
        "copy_gbps": copy_bandwidth(dev) / 1e9,
    }


def format_profile(r: dict) -> str:
    """A text table of profile_decode's report."""
    lines = [
        f"adapter  {r['adapter']} ({r['backend']}, {r['adapter_type']})",
        f"model    {r['model']}: {r['n_layer']} layers; {r['dispatches_per_step']} dispatches per decode step; "
        f"{r['n_steps']} steps at positions {r['positions'][0]}..{r['positions'][1]}",
        "",
    ]
    ts = r["timestamps"]
    if ts:
        lines.append("GPU time per decode step by kernel, each dispatch timed in its own compute pass (means):")
    else:
        lines.append("no GPU timestamps: the adapter lacks 'timestamp-query' (only wall and host times below)")
    lines.append(f"{'kernel':<28} {'calls':>6} {'us/step':>10} {'%':>6}")
    for k in r["kernels"]:
        us = f"{k['us']:10.1f}" if k["us"] is not None else f"{'-':>10}"
        pct = f"{k['pct']:6.1f}" if k["pct"] is not None else f"{'-':>6}"
        lines.append(f"{k['name']:<28} {k['calls']:>6} {us} {pct}")
    split = f"{r['gpu_split_us']:10.1f} {100.0:6.1f}" if ts else f"{'-':>10} {'-':>6}"
    lines.append(f"{'total, one pass per dispatch':<28} {r['dispatches_per_step']:>6} {split}")
    lines += [
        "",
        "per decode step (medians):",
        f"  wall, as generation runs it       {r['wall_us']:10.1f} us",
        f"    host until submit returned      {r['host_submit_us']:10.1f} us  (checks, packing, encode, submit)",
        f"    wait for the sampled id         {r['wait_us']:10.1f} us",
    ]
    if ts:
        lines += [
            f"  GPU, the step as one pass         {r['gpu_step_us']:10.1f} us",
            f"  host time outside the GPU         {r['host_outside_gpu_us']:10.1f} us  (wall − one-pass GPU time)",
            f"  pass-per-dispatch overhead        {r['gpu_split_us'] - r['gpu_step_us']:10.1f} us  "
            "(per-kernel total − one-pass time)",
        ]
    else:
        lines.append("  GPU time and host time outside the GPU: not measurable without timestamps")
    step_s = (r["gpu_step_us"] if ts else r["wall_us"]) / 1e6
    achieved = r["decode_bytes"] / step_s / 1e9
    lines += [
        "",
        f"roofline: a step reads {r['decode_bytes'] / 2**20:.1f} MiB → {achieved:.2f} GB/s over the "
        f"{'one-pass GPU' if ts else 'wall'} step time; this adapter's copy kernel moves {r['copy_gbps']:.2f} GB/s "
        f"(read + write) → {achieved / r['copy_gbps']:.0%} of copy",
    ]
    return "\n".join(lines)
