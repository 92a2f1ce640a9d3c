"""Attention over a paged KV cache shared by several sequences (continuous batching).

Host side of shaders/kv_write.wgsl.j2 and flash_attn.wgsl.j2. Token metadata is one u32 buffer `tok` with
tok[2t] = position of token t in its sequence and tok[2t+1] = its sequence slot. Each layer's cache is two
f32 buffers K and V holding one pool of blocks [n_blocks][block_size][n_head_kv][head_dim]; the u32 block table
[n_slots][max_blocks] maps a slot's logical block to a pool block (realm_web.kv_cache owns both). A step first
writes its keys and values (`kv_write`), then attends (`flash_attn`), so a token sees itself and everything
before it in its sequence.
"""

from __future__ import annotations

import struct

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most, u32s, wgsl


def kv_write_params(
    kv_dim: int,
    block_size: int,
    max_blocks: int,
    k_stride: int,
    v_stride: int,
    k_offset: int,
    v_offset: int,
    groups_x: int,
) -> bytes:
    """Params of kv_write.wgsl.j2."""
    return u32s(kv_dim, block_size, max_blocks, k_stride, v_stride, k_offset, v_offset, groups_x)


def kv_write(
    dev: Device,
    k: Buffer,
    v: Buffer,
    tok: Buffer,
    table: Buffer,
    k_cache: Buffer,
    v_cache: Buffer,
    n_tok: int,
    n_head_kv: int,
    head_dim: int,
    block_size: int,
    max_blocks: int,
    *,
    k_stride: int | None = None,
    v_stride: int | None = None,
    k_offset: int = 0,
    v_offset: int = 0,
) -> Dispatch:
    """cache[table[s, pos // block_size], pos % block_size, :] = row t of k (and v) for t < n_tok, where
    (pos, s) = tok[t]; rows are n_head_kv * head_dim f32. Padding tokens (pos 0xffffffff) write nothing.

    k and v may be one buffer (a fused QKV output) told apart by offsets and strides, in f32 elements.
    """
    kv_dim = n_head_kv * head_dim
    k_stride = kv_dim if k_stride is None else k_stride
    v_stride = kv_dim if v_stride is None else v_stride
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(-(-kv_dim // wg), dev.info.max_workgroups_per_dim)
    params = kv_write_params(kv_dim, block_size, max_blocks, k_stride, v_stride, k_offset, v_offset, gx)
    return build(dev, "kv_write", params, [tok, table, k, v, k_cache, v_cache], (gx, gy, n_tok), {"WG": wg})


def flash_attn_params(
    n_tok: int,
    n_head: int,
    n_head_kv: int,
    block_size: int,
    max_blocks: int,
    q_stride: int,
    out_stride: int,
    groups_x: int,
    scale: float,
) -> bytes:
    """Params of flash_attn.wgsl.j2."""
    return struct.pack("<8If", n_tok, n_head, n_head_kv, block_size, max_blocks, q_stride, out_stride, groups_x,
                       scale)  # fmt: skip


def flash_attn(
    dev: Device,
    q: Buffer,
    k_cache: Buffer,
    v_cache: Buffer,
    tok: Buffer,
    table: Buffer,
    out: Buffer,
    n_tok: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    block_size: int,
    max_blocks: int,
    scale: float,
    *,
    q_stride: int | None = None,
    out_stride: int | None = None,
) -> Dispatch:
    """out[t, h, :] = softmax_j(scale · q[t, h] · K[s, j, h // g]) · V[s, j, h // g] over j <= pos, keys read
    through the block table (K[s, j] is row j % block_size of block table[s, j // block_size]).

    (pos, s) = tok[t], g = n_head // n_head_kv; q and out are [n_tok, n_head, head_dim] f32 (q_stride, a
    multiple of 4, and out_stride in f32 elements between tokens). Padding tokens (pos 0xffffffff) get zeros.
    """
    name = f"flash_attn_hd{head_dim}_causal"
    try:
        wgsl(name)
    except FileNotFoundError:
        raise ValueError(f"no flash_attn kernel for head_dim {head_dim} (codegen/variants.py HEAD_DIMS)") from None
    if n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} is not a multiple of n_head_kv={n_head_kv}")
    q_stride = n_head * head_dim if q_stride is None else q_stride
    out_stride = n_head * head_dim if out_stride is None else out_stride
    if q_stride % 4:
        raise ValueError(f"q_stride={q_stride} must be a multiple of 4 (q is read as vec4)")
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(n_tok * n_head, dev.info.max_workgroups_per_dim)
    params = flash_attn_params(n_tok, n_head, n_head_kv, block_size, max_blocks, q_stride, out_stride, gx, scale)
    return build(dev, name, params, [q, k_cache, v_cache, tok, table, out], (gx, gy, 1), {"WG": wg})
