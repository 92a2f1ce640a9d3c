"""GPU timestamps (Device.timed_submit) and the decode-step profile (`realm-web bench --profile`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import realm_web
from realm_web.cli import bundled_model
from realm_web.kernels import build, fold, u32s
from realm_web.profile import format_profile, profile_decode

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def tdev(dev):
    """The test device, which must have timestamps: lavapipe has them, so CI fails rather than skips."""
    if not dev.info.timestamps:
        if CI:
            pytest.fail("CI's adapter (lavapipe) must have 'timestamp-query'")
        pytest.skip("adapter without 'timestamp-query'")
    return dev


def copy_dispatch(dev, nbytes: int):
    """The vec4 copy kernel over `nbytes` (as realm_web.bench.copy_bandwidth builds it)."""
    src, dst = dev.create_buffer(nbytes, "copy.src"), dev.create_buffer(nbytes, "copy.dst")
    n4 = nbytes // 16
    gx, gy = fold(-(-n4 // 64), dev.info.max_workgroups_per_dim)
    return build(dev, "copy", u32s(n4, gx, 0, 0), [src, dst], (gx, gy, 1), {"WG": 64})


def test_timed_submit_measures_each_dispatch(tdev):
    small, big = copy_dispatch(tdev, 1 << 20), copy_dispatch(tdev, 64 << 20)
    tdev.timed_submit([small, big])  # warm-up: first touch of the buffers
    ns = tdev.timed_submit([small, big, small])
    assert len(ns) == 3 and all(t > 0 for t in ns)
    assert ns[1] > 8 * max(ns[0], ns[2])  # 64× the bytes; 8× leaves room for fixed costs and noise
    (whole,) = tdev.timed_submit([small, big, small], per_dispatch=False)
    assert 0.5 * ns[1] < whole < 2 * sum(ns)


def test_timed_submit_spans_several_query_sets(tdev):
    """More passes than one query set of 4096 timestamps holds: every pass still gets a sane duration."""
    d = copy_dispatch(tdev, 4096)
    ns = tdev.timed_submit([d] * 2100)
    assert len(ns) == 2100 and all(0 <= t < 10**9 for t in ns) and sum(ns[2048:]) > 0


def test_timed_submit_without_timestamps_is_none(dev_plain):
    assert not dev_plain.info.timestamps
    assert dev_plain.timed_submit([copy_dispatch(dev_plain, 4096)]) is None


def expected_calls(m: realm_web.Model) -> dict[str, int]:
    """Dispatches per decode step by kernel family, from the model's structure (weights are not split)."""
    c = m.config
    biases = sum(k.endswith(("attn_q.bias", "attn_k.bias", "attn_v.bias")) for k in m.transformer.vec)
    # get_rows twice: the embedding, and the gather of the rows whose logits are wanted
    # the residual adds and SwiGLU run inside the attn_output / ffn_down / ffn_up products (their epilogues); rope:
    # RoPE of q and k fused with the KV-cache write (rope_*_kv_write); flash_attn: one chunk at n_ctx 128
    calls = {"matmul": 7 * c.n_layer + 1, "rms_norm": 2 * c.n_layer + 1, "rope": c.n_layer,
             "flash_attn": c.n_layer, "add": biases, "get_rows": 2, "sample": 1}  # fmt: skip
    return {k: n for k, n in calls.items() if n}


def test_profile_lists_every_kernel_of_the_step(tdev):
    m = realm_web.load(bundled_model(), device=tdev, n_ctx=128)
    assert all(len(w.parts) == 1 for w in m.transformer.w.values())
    r = profile_decode(m, n_steps=4, n_prompt=16)
    assert r["timestamps"] and r["n_layer"] == m.config.n_layer
    calls = {}
    for k in r["kernels"]:
        family = next(f for f in expected_calls(m) if k["name"].startswith(f))
        calls[family] = calls.get(family, 0) + k["calls"]
        assert k["us"] > 0
    assert calls == expected_calls(m)
    assert r["dispatches_per_step"] == sum(calls.values()) == len(m.transformer.step(1, 1).dispatches) + 1
    assert abs(sum(k["pct"] for k in r["kernels"]) - 100) < 1e-6
    assert r["gpu_step_us"] > 0 and r["gpu_split_us"] > 0 and r["wall_us"] > 0 and r["host_submit_us"] > 0
    assert r["host_outside_gpu_us"] == pytest.approx(r["wall_us"] - r["gpu_step_us"])
    assert r["decode_bytes"] > sum(w.n_bytes for w in m.transformer.w.values()) // 2 and r["copy_gbps"] > 0
    text = format_profile(r)
    assert "host time outside the GPU" in text and r["kernels"][0]["name"] in text and "of copy" in text
    # the model is still good for generation afterwards
    assert next(m.generate("The capital of France is", max_tokens=2, temperature=0)) == " Paris"


def test_profile_without_timestamps_reports_host_times(dev_plain):
    m = realm_web.load(bundled_model(), device=dev_plain, n_ctx=64)
    r = profile_decode(m, n_steps=2, n_prompt=8, warmup=1)
    assert not r["timestamps"] and r["gpu_step_us"] is None and r["wall_us"] > 0
    assert all(k["us"] is None and k["calls"] > 0 for k in r["kernels"])
    assert "no GPU timestamps" in format_profile(r)


def test_cli_bench_profile_json(tdev):
    args = ["bench", "--profile", "--json", "--steps", "3", "--prompt-tokens", "8"]
    r = subprocess.run([sys.executable, "-m", "realm_web.cli", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_steps"] == 3 and out["gpu_step_us"] > 0 and out["kernels"]
