"""KV-cache writes and causal flash attention against float64 numpy: decode, prefill, grouped-query heads,
several sequences in one step, every rendered head dim."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import read_f32, upload_array

from realm_web.kernels.attention import flash_attn, kv_write

HEAD_DIMS = (32, 64, 80, 96, 112, 128, 256)  # every flash_attn variant codegen/variants.py renders

# Error of out[t, h, d] relative to the softmax-weighted mean of |V[j, d]| (the scale of the terms summed):
# each accumulator adds ≤ n_keys (≤ 320) rescaled products sequentially, ≤ 320 · 2^-24 ≈ 1.9e-5 worst case
# and ~sqrt(320) · 2^-24 ≈ 1e-6 typically; scores are f32 dot products of ≤ 256 terms of O(1) size times
# 1/sqrt(D), whose error (~1e-6 absolute) moves the softmax weights by the same relative amount.
# Measured worst: 6e-7.
TOL = 1e-5


def reference(q, k_cache, v_cache, tok, n_head, n_head_kv, scale):
    """(out, scale of out) in float64. Caches [n_seq, n_ctx, n_head_kv, D], q [n_tok, n_head, D]."""
    g = n_head // n_head_kv
    out = np.zeros(q.shape)
    mag = np.zeros(q.shape)
    for t, (pos, seq) in enumerate(tok):
        for h in range(n_head):
            k = k_cache[seq, : pos + 1, h // g].astype(np.float64)
            v = v_cache[seq, : pos + 1, h // g].astype(np.float64)
            s = scale * (k @ q[t, h].astype(np.float64))
            p = np.exp(s - s.max())
            out[t, h] = p @ v / p.sum()
            mag[t, h] = p @ np.abs(v) / p.sum()
    return out, mag


def run_attn(dev, q, k_cache, v_cache, tok, n_head, n_head_kv, scale=None):
    n_tok, _, hd = q.shape
    n_ctx = k_cache.shape[1]
    scale = hd**-0.5 if scale is None else scale
    ob = dev.create_buffer(q.nbytes, "out")
    bufs = [upload_array(dev, a) for a in (q, k_cache, v_cache, tok)]
    dev.submit([flash_attn(dev, *bufs, ob, n_tok, n_head, n_head_kv, hd, n_ctx, scale)])
    return read_f32(dev, ob, q.size).reshape(q.shape)


def check(dev, rng, tok, n_seq, n_ctx, n_head, n_head_kv, hd, scale=None):
    tok = np.asarray(tok, dtype=np.uint32)
    q = rng.standard_normal((len(tok), n_head, hd)).astype(np.float32)
    k_cache = rng.standard_normal((n_seq, n_ctx, n_head_kv, hd)).astype(np.float32)
    v_cache = rng.standard_normal((n_seq, n_ctx, n_head_kv, hd)).astype(np.float32)
    got = run_attn(dev, q, k_cache, v_cache, tok, n_head, n_head_kv, scale)
    ref, mag = reference(q, k_cache, v_cache, tok, n_head, n_head_kv, hd**-0.5 if scale is None else scale)
    err = np.abs(got - ref)
    assert (err <= TOL * mag).all(), f"hd {hd}: max err/bound {np.max(err / (TOL * mag)):.3g}"


@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_decode(dev, rng, hd):
    """One token at position 299 of a 320-slot cache: five tiles of 64 keys, the last partial."""
    check(dev, rng, [(299, 0)], n_seq=1, n_ctx=320, n_head=4, n_head_kv=4, hd=hd)


@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_prefill(dev, rng, hd):
    """Nine tokens of one sequence at positions 60..68 (a chunk after a cached prefix): each sees a
    different number of keys, across the 64-key tile boundary."""
    check(dev, rng, [(p, 0) for p in range(60, 69)], n_seq=1, n_ctx=80, n_head=3, n_head_kv=3, hd=hd)


@pytest.mark.parametrize("hd", [64, 128])
def test_prefill_from_zero(dev, rng, hd):
    """A prompt from position 0: the first token attends to itself only."""
    check(dev, rng, [(p, 0) for p in range(7)], n_seq=1, n_ctx=16, n_head=2, n_head_kv=1, hd=hd)


@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_gqa_two_sequences(dev, rng, hd):
    """8 query heads over 2 KV heads; one step mixing two sequences' tokens at unrelated positions."""
    tok = [(5, 1), (130, 0), (131, 0), (6, 1), (0, 2)]
    check(dev, rng, tok, n_seq=3, n_ctx=160, n_head=8, n_head_kv=2, hd=hd)


@pytest.mark.parametrize("hd", HEAD_DIMS)
def test_every_head_dim(dev, rng, hd):
    """Every rendered variant compiles and is right on a small GQA case spanning two tiles."""
    check(dev, rng, [(0, 0), (70, 1), (33, 0)], n_seq=2, n_ctx=72, n_head=4, n_head_kv=2, hd=hd, scale=0.3)


def test_large_scores(dev, rng):
    """Scores in the hundreds: exp without the running max would overflow f32."""
    check(dev, rng, [(150, 0), (3, 0)], n_seq=1, n_ctx=160, n_head=2, n_head_kv=1, hd=64, scale=4.0)


def test_kv_write(dev, rng):
    """Rows land at (sequence, position) from tok; every other cache element is left as it was."""
    n_seq, n_ctx, n_head_kv, hd = 3, 50, 2, 40  # kv_dim 80: not a multiple of the workgroup
    kv_dim = n_head_kv * hd
    tok = np.array([(0, 2), (49, 0), (7, 1), (8, 1), (60, 0)], dtype=np.uint32)  # pos 60 >= n_ctx: dropped
    k = rng.standard_normal((len(tok), kv_dim)).astype(np.float32)
    v = rng.standard_normal((len(tok), kv_dim)).astype(np.float32)
    k_init = rng.standard_normal((n_seq, n_ctx, kv_dim)).astype(np.float32)
    v_init = rng.standard_normal((n_seq, n_ctx, kv_dim)).astype(np.float32)
    kc, vc = upload_array(dev, k_init), upload_array(dev, v_init)
    dev.submit([kv_write(dev, upload_array(dev, k), upload_array(dev, v), upload_array(dev, tok), kc, vc,
                         len(tok), n_head_kv, hd, n_ctx)])  # fmt: skip
    k_ref, v_ref = k_init.copy(), v_init.copy()
    for t, (pos, seq) in enumerate(tok):
        if pos < n_ctx:
            k_ref[seq, pos], v_ref[seq, pos] = k[t], v[t]
    np.testing.assert_array_equal(read_f32(dev, kc, k_init.size).reshape(k_init.shape), k_ref)
    np.testing.assert_array_equal(read_f32(dev, vc, v_init.size).reshape(v_init.shape), v_ref)


def test_kv_write_fused_rows(dev, rng):
    """k and v taken from one fused QKV buffer by offsets and strides."""
    n_tok, n_head, n_head_kv, hd, n_ctx = 3, 4, 2, 32, 8
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    width = q_dim + 2 * kv_dim
    qkv = rng.standard_normal((n_tok, width)).astype(np.float32)
    tok = np.array([(2, 0), (3, 0), (4, 0)], dtype=np.uint32)
    b = upload_array(dev, qkv)
    kc, vc = dev.create_buffer(4 * n_ctx * kv_dim, "k"), dev.create_buffer(4 * n_ctx * kv_dim, "v")
    dev.submit([kv_write(dev, b, b, upload_array(dev, tok), kc, vc, n_tok, n_head_kv, hd, n_ctx,
                         k_stride=width, v_stride=width, k_offset=q_dim, v_offset=q_dim + kv_dim)])  # fmt: skip
    k_got = read_f32(dev, kc, n_ctx * kv_dim).reshape(n_ctx, kv_dim)
    v_got = read_f32(dev, vc, n_ctx * kv_dim).reshape(n_ctx, kv_dim)
    np.testing.assert_array_equal(k_got[2:5], qkv[:, q_dim : q_dim + kv_dim])
    np.testing.assert_array_equal(v_got[2:5], qkv[:, q_dim + kv_dim :])
    assert not k_got[:2].any() and not k_got[5:].any()  # fresh WebGPU buffers are zero


@pytest.mark.parametrize("hd", [80, 128])
def test_steps_through_kv_write(dev, rng, hd):
    """A prompt step then a decode step for two sequences, through kv_write into caches filled with NaN:
    any read of a slot not yet written (past a token's position, or the other sequence's) would show."""
    n_seq, n_ctx, n_head, n_head_kv = 2, 40, 4, 2
    kv_dim = n_head_kv * hd
    kc = upload_array(dev, np.full((n_seq, n_ctx, kv_dim), np.nan, dtype=np.float32))
    vc = upload_array(dev, np.full((n_seq, n_ctx, kv_dim), np.nan, dtype=np.float32))
    k_all = np.zeros((n_seq, n_ctx, n_head_kv, hd), np.float32)
    v_all = np.zeros((n_seq, n_ctx, n_head_kv, hd), np.float32)
    # step 1: sequence 0's 9-token prompt and sequence 1's 3-token prompt; step 2: one token each
    for tok in ([(p, 0) for p in range(9)] + [(p, 1) for p in range(3)], [(3, 1), (9, 0)]):
        tok = np.array(tok, dtype=np.uint32)
        n_tok = len(tok)
        q = rng.standard_normal((n_tok, n_head, hd)).astype(np.float32)
        k = rng.standard_normal((n_tok, n_head_kv, hd)).astype(np.float32)
        v = rng.standard_normal((n_tok, n_head_kv, hd)).astype(np.float32)
        for t, (pos, seq) in enumerate(tok):
            k_all[seq, pos], v_all[seq, pos] = k[t], v[t]
        tb, ob = upload_array(dev, tok), dev.create_buffer(q.nbytes, "out")
        dev.submit([
            kv_write(dev, upload_array(dev, k), upload_array(dev, v), tb, kc, vc, n_tok, n_head_kv, hd, n_ctx),
            flash_attn(dev, upload_array(dev, q), kc, vc, tb, ob, n_tok, n_head, n_head_kv, hd, n_ctx, hd**-0.5),
        ])  # fmt: skip
        got = read_f32(dev, ob, q.size).reshape(q.shape)
        ref, mag = reference(q, k_all, v_all, tok, n_head, n_head_kv, hd**-0.5)
        assert (np.abs(got - ref) <= TOL * mag).all()
