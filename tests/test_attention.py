"""Paged KV-cache writes and causal flash attention against float64 numpy: decode, prefill, grouped-query heads,
several sequences in one step, every rendered head dim, f32 and f16 caches, split-KV chunks. Each sequence's cache
is scattered over a shuffled pool of blocks through a block table, so a kernel that ignored the table would read
the wrong keys. The f16 references use the very halves the kernel reads (exact in f32), so f16 runs are held to the
same tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import read_f32, upload_array

from realm_web.kernels import attention
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


def paginate(caches: list[np.ndarray], bs: int, rng, fill=np.nan):
    """Logical caches [n_seq, n_ctx, ...] as shuffled pools [n_blocks, bs, ...] (one spare block, never
    referenced, holds `fill`) and their shared block table [n_seq, max_blocks] (u32)."""
    n_seq, n_ctx = caches[0].shape[:2]
    mb = -(-n_ctx // bs)
    perm = rng.permutation(n_seq * mb + 1)
    table = perm[: n_seq * mb].reshape(n_seq, mb).astype(np.uint32)
    pools = []
    for cache in caches:
        padded = np.full((n_seq, mb * bs, *cache.shape[2:]), fill, cache.dtype)
        padded[:, :n_ctx] = cache
        pool = np.full((n_seq * mb + 1, bs, *cache.shape[2:]), fill, cache.dtype)
        pool[table.reshape(-1)] = padded.reshape(n_seq * mb, bs, *cache.shape[2:])
        pools.append(pool)
    return pools, table


def cache_values(rng, shape, kv_type):
    """Random cache contents as the kernel will read them: float16 for an f16 cache."""
    with np.errstate(under="ignore"):  # values below the f16 range round to (sub)normal halves
        return rng.standard_normal(shape).astype(np.float16 if kv_type == "f16" else np.float32)


def run_attn(dev, rng, q, k_cache, v_cache, tok, n_head, n_head_kv, scale=None, bs=16, chunk=None, group=None):
    """flash_attn over the caches (float16 arrays: an f16 cache) scattered into a shuffled pool."""
    n_tok, _, hd = q.shape
    scale = hd**-0.5 if scale is None else scale
    (kp, vp), table = paginate([k_cache, v_cache], bs, rng)
    ob = dev.create_buffer(q.nbytes, "out")
    bufs = [upload_array(dev, a) for a in (q, kp, vp, tok, table)]
    kv_type = "f16" if k_cache.dtype == np.float16 else "f32"
    dev.submit(flash_attn(dev, *bufs, ob, n_tok, n_head, n_head_kv, hd, bs, table.shape[1], scale, kv_type=kv_type,
                          chunk=chunk, group=group))  # fmt: skip
    return read_f32(dev, ob, q.size).reshape(q.shape)


def check(dev, rng, tok, n_seq, n_ctx, n_head, n_head_kv, hd, scale=None, kv_type="f32", chunk=None, group=None):
    tok = np.asarray(tok, dtype=np.uint32)
    q = rng.standard_normal((len(tok), n_head, hd)).astype(np.float32)
    k_cache, v_cache = (cache_values(rng, (n_seq, n_ctx, n_head_kv, hd), kv_type) for _ in range(2))
    got = run_attn(dev, rng, q, k_cache, v_cache, tok, n_head, n_head_kv, scale, chunk=chunk, group=group)
    ref, mag = reference(q, k_cache, v_cache, tok, n_head, n_head_kv, hd**-0.5 if scale is None else scale)
    err = np.abs(got - ref)
    assert (err <= TOL * mag).all(), f"hd {hd}: max err/bound {np.max(err / (TOL * mag)):.3g}"
    return got


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


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize(("hd", "group"), [(hd, g) for hd in HEAD_DIMS for g in attention.attn_groups(hd)])
def test_every_head_dim(dev, rng, hd, kv_type, group):
    """Every rendered variant (head dim, cache type, query heads per invocation) compiles and is right on a small
    GQA case (two KV heads), split in chunks of 32 keys."""
    tok = [(0, 0), (70, 1), (33, 0)]
    n_head = 2 * group * (2 if group < 4 else 1)
    check(dev, rng, tok, n_seq=2, n_ctx=72, n_head=n_head, n_head_kv=2, hd=hd, scale=0.3, kv_type=kv_type, chunk=32,
          group=group)  # fmt: skip


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("chunk", [4, 12, 64, 256])
def test_split_kv(dev, rng, chunk, kv_type):
    """Split-KV: chunks of every size from 4 keys (most chunks, the last one partial) to one chunk for all; decode
    and prefill tokens of two sequences in one step."""
    tok = [(299, 0), (0, 1), (3, 1), (130, 1), (131, 1), (64, 0)]
    check(dev, rng, tok, n_seq=2, n_ctx=300, n_head=4, n_head_kv=2, hd=64, kv_type=kv_type, chunk=chunk)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_split_kv_is_batch_independent(dev, rng, kv_type, monkeypatch):
    """A token's result is bit for bit the same alone (every chunk side by side), in a step that runs its chunks
    a few at a time, and in one that runs them one after the other (SIDE_BY_SIDE forced to 1)."""
    tok = np.array([(299, 0)] + [(p, 1) for p in range(200, 240)], np.uint32)
    q = rng.standard_normal((len(tok), 4, 64)).astype(np.float32)
    kc, vc = (cache_values(rng, (2, 300, 2, 64), kv_type) for _ in range(2))
    alone = run_attn(dev, np.random.default_rng(5), q[:1], kc, vc, tok[:1], 4, 2, chunk=8)
    batched = run_attn(dev, np.random.default_rng(5), q, kc, vc, tok, 4, 2, chunk=8)
    monkeypatch.setattr(attention, "SIDE_BY_SIDE", 1)
    serial = run_attn(dev, np.random.default_rng(5), q, kc, vc, tok, 4, 2, chunk=8)
    np.testing.assert_array_equal(batched[:1], alone)
    np.testing.assert_array_equal(serial, batched)


def test_large_scores(dev, rng):
    """Scores in the hundreds: exp without the running max would overflow f32."""
    check(dev, rng, [(150, 0), (3, 0)], n_seq=1, n_ctx=160, n_head=2, n_head_kv=1, hd=64, scale=4.0)


PAD = 0xFFFFFFFF  # position of a padding token


def test_kv_write(dev, rng):
    """Rows land at (block table[seq, pos // bs], pos % bs); every other pool element is left as it was;
    padding tokens and positions past the table write nothing."""
    n_seq, n_ctx, n_head_kv, hd, bs = 3, 50, 2, 40, 16  # kv_dim 80: not a multiple of the workgroup
    kv_dim = n_head_kv * hd
    tok = np.array([(0, 2), (49, 0), (7, 1), (8, 1), (70, 0), (PAD, 1)], dtype=np.uint32)  # 70: past the table
    k = rng.standard_normal((len(tok), kv_dim)).astype(np.float32)
    v = rng.standard_normal((len(tok), kv_dim)).astype(np.float32)
    k_init = rng.standard_normal((n_seq, n_ctx, kv_dim)).astype(np.float32)
    v_init = rng.standard_normal((n_seq, n_ctx, kv_dim)).astype(np.float32)
    (kp, vp), table = paginate([k_init, v_init], bs, rng, fill=0.5)
    kc, vc = upload_array(dev, kp), upload_array(dev, vp)
    dev.submit([kv_write(dev, upload_array(dev, k), upload_array(dev, v), upload_array(dev, tok),
                         upload_array(dev, table), kc, vc, len(tok), n_head_kv, hd, bs, table.shape[1])])  # fmt: skip
    k_ref, v_ref = kp.copy(), vp.copy()
    for t, (pos, seq) in enumerate(tok):
        if pos < table.shape[1] * bs:
            blk = table[seq, pos // bs]
            k_ref[blk, pos % bs], v_ref[blk, pos % bs] = k[t], v[t]
    np.testing.assert_array_equal(read_f32(dev, kc, kp.size).reshape(kp.shape), k_ref)
    np.testing.assert_array_equal(read_f32(dev, vc, vp.size).reshape(vp.shape), v_ref)


def test_kv_write_f16(dev, rng):
    """f16 cache rows: each value rounded to one of its two neighbouring halves (WGSL leaves the rounding direction
    to the implementation), at (block table[seq, pos // bs], pos % bs); beyond ±65504 clamped; padding dropped."""
    n_head_kv, hd, bs = 2, 40, 4
    kv_dim = n_head_kv * hd
    tok = np.array([(0, 1), (5, 0), (PAD, 0), (6, 0)], dtype=np.uint32)
    k = (rng.standard_normal((len(tok), kv_dim)) * 10.0 ** rng.integers(-6, 4, (len(tok), kv_dim))).astype(np.float32)
    v = rng.standard_normal((len(tok), kv_dim)).astype(np.float32)
    k[0, :3] = [1e6, -7e4, 65504.0]
    table = np.array([[2, 0], [1, 3]], dtype=np.uint32)
    kc, vc = dev.create_buffer(2 * 4 * bs * kv_dim, "k"), dev.create_buffer(2 * 4 * bs * kv_dim, "v")
    dev.submit([kv_write(dev, upload_array(dev, k), upload_array(dev, v), upload_array(dev, tok),
                         upload_array(dev, table), kc, vc, len(tok), n_head_kv, hd, bs, 2, kv_type="f16")])  # fmt: skip
    k_got = np.frombuffer(dev.read(kc), np.float16).reshape(4 * bs, kv_dim).astype(np.float64)
    v_got = np.frombuffer(dev.read(vc), np.float16).reshape(4 * bs, kv_dim).astype(np.float64)
    rows = {0: 1 * bs + 0, 1: 0 * bs + 1, 3: 0 * bs + 2}  # token -> pool row
    for got, src in ((k_got, k), (v_got, v)):
        want = np.clip(src.astype(np.float64), -65504, 65504)
        for t, r in rows.items():  # within one half-precision step (2^-10 relative; 2^-24 among subnormals)
            assert (np.abs(got[r] - want[t]) <= np.maximum(np.abs(want[t]) * 2.0**-10, 2.0**-24)).all()
        assert not np.delete(got, list(rows.values()), axis=0).any()
    assert k_got[rows[0], :3].tolist() == [65504.0, -65504.0, 65504.0]


def test_kv_write_fused_rows(dev, rng):
    """k and v taken from one fused QKV buffer by offsets and strides."""
    n_tok, n_head, n_head_kv, hd, bs = 3, 4, 2, 32, 4
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    width = q_dim + 2 * kv_dim
    qkv = rng.standard_normal((n_tok, width)).astype(np.float32)
    tok = np.array([(2, 0), (3, 0), (4, 0)], dtype=np.uint32)
    table = np.array([[1, 0]], dtype=np.uint32)  # positions 0..3 in block 1, 4..7 in block 0
    b = upload_array(dev, qkv)
    kc, vc = dev.create_buffer(4 * 2 * bs * kv_dim, "k"), dev.create_buffer(4 * 2 * bs * kv_dim, "v")
    dev.submit([kv_write(dev, b, b, upload_array(dev, tok), upload_array(dev, table), kc, vc, n_tok, n_head_kv, hd,
                         bs, 2, k_stride=width, v_stride=width, k_offset=q_dim, v_offset=q_dim + kv_dim)])  # fmt: skip
    k_got = read_f32(dev, kc, 2 * bs * kv_dim).reshape(2 * bs, kv_dim)
    v_got = read_f32(dev, vc, 2 * bs * kv_dim).reshape(2 * bs, kv_dim)
    rows = [bs + 2, bs + 3, 0]  # pool rows of positions 2, 3, 4
    np.testing.assert_array_equal(k_got[rows], qkv[:, q_dim : q_dim + kv_dim])
    np.testing.assert_array_equal(v_got[rows], qkv[:, q_dim + kv_dim :])
    assert not np.delete(k_got, rows, axis=0).any()  # fresh WebGPU buffers are zero


def test_padding_tokens_read_nothing(dev, rng):
    """A padding token (position 0xffffffff) in a step gets zeros and leaves the other tokens' results alone."""
    tok = [(5, 0), (PAD, 0), (3, 1)]
    q = rng.standard_normal((3, 2, 64)).astype(np.float32)
    kc = rng.standard_normal((2, 8, 1, 64)).astype(np.float32)
    vc = rng.standard_normal((2, 8, 1, 64)).astype(np.float32)
    got = run_attn(dev, rng, q, kc, vc, np.array(tok, np.uint32), 2, 1)
    assert not got[1].any()
    alone = run_attn(dev, rng, q[[0, 2]], kc, vc, np.array([tok[0], tok[2]], np.uint32), 2, 1)
    np.testing.assert_array_equal(got[[0, 2]], alone)


@pytest.mark.parametrize("hd", [80, 128])
def test_steps_through_kv_write(dev, rng, hd):
    """A prompt step then a decode step for two sequences, through kv_write into a shuffled pool filled with
    NaN: any read of a row not yet written (past a token's position, or the other sequence's) would show."""
    n_seq, n_ctx, n_head, n_head_kv, bs = 2, 40, 4, 2, 8
    kv_dim = n_head_kv * hd
    (kp, vp), table = paginate([np.full((n_seq, n_ctx, kv_dim), np.nan, np.float32)] * 2, bs, rng)
    kc, vc, tb_buf = upload_array(dev, kp), upload_array(dev, vp), upload_array(dev, table)
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
        mb = table.shape[1]
        dev.submit([
            kv_write(dev, upload_array(dev, k), upload_array(dev, v), tb, tb_buf, kc, vc, n_tok, n_head_kv, hd, bs, mb),
            *flash_attn(dev, upload_array(dev, q), kc, vc, tb, tb_buf, ob, n_tok, n_head, n_head_kv, hd, bs, mb,
                        hd**-0.5),
        ])  # fmt: skip
        got = read_f32(dev, ob, q.size).reshape(q.shape)
        ref, mag = reference(q, k_all, v_all, tok, n_head, n_head_kv, hd**-0.5)
        assert (np.abs(got - ref) <= TOL * mag).all()
