"""Attention over a paged KV cache shared by several sequences (continuous batching).

Host side of shaders/kv_write.wgsl.j2, flash_attn.wgsl.j2 and flash_attn_combine.wgsl.j2. Token metadata is one
u32 buffer `tok` with tok[2t] = position of token t in its sequence and tok[2t+1] = its sequence slot. Each
layer's cache is two buffers K and V holding one pool of blocks [n_blocks][block_size][n_head_kv][head_dim], of f32
or of IEEE halves packed two to a u32 (`kv_type` "f16": half the memory and half the bytes attention reads; no
shader-f16 needed); the u32 block table [n_slots][max_blocks] maps a slot's logical block to a pool block
(realm_web.kv_cache owns both). A step first writes its keys and values (`kv_write`), then attends (`flash_attn`),
so a token sees itself and everything before it in its sequence.
"""

from __future__ import annotations

import struct

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most, u32s, wgsl

KV_TYPES = {"f32": 4, "f16": 2}  # KV cache element type -> bytes per element

# Split-KV: keys per chunk for a context of n_ctx positions is max(MIN_CHUNK, n_ctx / MAX_CHUNKS) (rounded up to
# CHUNK_ALIGN), so a (token, head) has at most MAX_CHUNKS partial records and a short context one chunk (no
# combine). Decode steps run every chunk of a (token, head) side by side; larger steps as many as keep the
# invocations of a dispatch within SIDE_BY_SIDE.
MIN_CHUNK = 256
MAX_CHUNKS = 16
CHUNK_ALIGN = 64
SIDE_BY_SIDE = 4096
# Query heads one flash_attn invocation attends for (all of one KV head): the variants rendered (codegen), those
# whose group holds at most GROUP_WIDTH query elements (lavapipe took 30-150 s to compile head_dim 256 in groups of
# 4 and 8, under a second for groups of GROUP_WIDTH).
ATTN_GROUPS = (1, 2, 3, 4, 8)
GROUP_WIDTH = 512


def attn_groups(head_dim: int) -> tuple[int, ...]:
    """The head groups flash_attn is rendered for at this head_dim."""
    return tuple(g for g in ATTN_GROUPS if g == 1 or g * head_dim <= GROUP_WIDTH)


def kv_type_bytes(kv_type: str) -> int:
    """Bytes per cached element of `kv_type` ("f32" or "f16"); ValueError for anything else."""
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    return KV_TYPES[kv_type]


def attn_group(dev: Device, n_head: int, n_head_kv: int, head_dim: int) -> int:
    """Query heads per flash_attn invocation. On CPU adapters, whose lanes each gather their own key rows, the
    largest of attn_groups(head_dim) dividing n_head / n_head_kv: one read of a key or value row serves them all.
    On GPUs 1 (a group's queries and accumulators would crowd the registers)."""
    if dev.info.adapter_type != "CPU":
        return 1
    return max(g for g in attn_groups(head_dim) if (n_head // n_head_kv) % g == 0)


def split_chunk(n_ctx: int) -> int:
    """Keys per split-KV chunk for sequences of up to n_ctx positions (a multiple of CHUNK_ALIGN)."""
    want = max(MIN_CHUNK, -(-n_ctx // MAX_CHUNKS))
    return -(-want // CHUNK_ALIGN) * CHUNK_ALIGN


def partials_bytes(n_tok: int, n_head: int, head_dim: int, max_chunks: int) -> int:
    """Bytes of flash_attn's partial records for a step of n_tok tokens: [n_tok][n_head][max_chunks] records of
    (m, l, 0, 0) and head_dim f32 (none when max_chunks is 1: 16 bytes, a binding's minimum)."""
    return 4 * n_tok * n_head * max_chunks * (head_dim + 4) if max_chunks > 1 else 16


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
    kv_type: str = "f32",
) -> Dispatch:
    """cache[table[s, pos // block_size], pos % block_size, :] = row t of k (and v) for t < n_tok, where
    (pos, s) = tok[t]; rows are n_head_kv * head_dim f32, stored as `kv_type` (f16: rounded by pack2x16float,
    clamped to ±65504). Padding tokens (pos 0xffffffff) write nothing.

    k and v may be one buffer (a fused QKV output) told apart by offsets and strides, in f32 elements.
    """
    f16 = kv_type_bytes(kv_type) == 2
    if f16 and head_dim % 2:
        raise ValueError(f"an f16 KV cache needs an even head_dim, got {head_dim}")
    kv_dim = n_head_kv * head_dim
    k_stride = kv_dim if k_stride is None else k_stride
    v_stride = kv_dim if v_stride is None else v_stride
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(-(-(kv_dim // 2 if f16 else kv_dim) // wg), dev.info.max_workgroups_per_dim)
    params = kv_write_params(kv_dim, block_size, max_blocks, k_stride, v_stride, k_offset, v_offset, gx)
    name = "kv_write_f16" if f16 else "kv_write"
    return build(dev, name, params, [tok, table, k, v, k_cache, v_cache], (gx, gy, n_tok), {"WG": wg})


def flash_attn_params(
    n_tok: int,
    n_head: int,
    n_head_kv: int,
    block_size: int,
    max_blocks: int,
    q_stride: int,
    out_stride: int,
    chunk: int,
    max_chunks: int,
    slots: int,
    groups_x: int,
    scale: float,
) -> bytes:
    """Params of flash_attn.wgsl.j2."""
    return struct.pack("<11If", n_tok, n_head, n_head_kv, block_size, max_blocks, q_stride, out_stride, chunk,
                       max_chunks, slots, groups_x, scale)  # fmt: skip


def flash_attn_combine_params(
    n_tok: int, n_head: int, head_dim: int, chunk: int, max_chunks: int, out_stride: int, groups_x: int
) -> bytes:
    """Params of flash_attn_combine.wgsl.j2."""
    return u32s(n_tok, n_head, head_dim, chunk, max_chunks, out_stride, groups_x, 0)


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
    kv_type: str = "f32",
    chunk: int | None = None,
    part: Buffer | None = None,
    group: int | None = None,
    q_stride: int | None = None,
    out_stride: int | None = None,
) -> list[Dispatch]:
    """out[t, h, :] = softmax_j(scale · q[t, h] · K[s, j, h // g]) · V[s, j, h // g] over j <= pos, keys read
    through the block table (K[s, j] is row j % block_size of block table[s, j // block_size]).

    (pos, s) = tok[t], g = n_head // n_head_kv; q and out are [n_tok, n_head, head_dim] f32 (q_stride, a
    multiple of 4, and out_stride in f32 elements between tokens). Padding tokens (pos 0xffffffff) get zeros.

    Split-KV: a token's keys are cut into chunks of `chunk` keys (default split_chunk of the table's positions);
    a token with several chunks gets its chunks' partial results merged by a second dispatch (flash_attn_combine),
    through `part` (partials_bytes of this step; made here when not given: a step's dispatches may share one).
    How many chunks a token has depends on its position alone, never on the step, so its result is the same bit
    for bit whatever it is batched with; the step's shape only decides how many chunks run side by side.
    `group`: query heads per invocation (default attn_group's choice for the device).
    """
    kv_bytes = kv_type_bytes(kv_type)
    if n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} is not a multiple of n_head_kv={n_head_kv}")
    group = attn_group(dev, n_head, n_head_kv, head_dim) if group is None else group
    if group not in attn_groups(head_dim) or (n_head // n_head_kv) % group:
        raise ValueError(f"group={group} must be one of {attn_groups(head_dim)} and divide n_head / n_head_kv")
    name = f"flash_attn_hd{head_dim}_causal" + ("_f16" if kv_bytes == 2 else "") + (f"_g{group}" if group > 1 else "")
    try:
        wgsl(name)
    except FileNotFoundError:
        raise ValueError(f"no flash_attn kernel for head_dim {head_dim} (codegen/variants.py HEAD_DIMS)") from None
    q_stride = n_head * head_dim if q_stride is None else q_stride
    out_stride = n_head * head_dim if out_stride is None else out_stride
    if q_stride % 4:
        raise ValueError(f"q_stride={q_stride} must be a multiple of 4 (q is read as vec4)")
    chunk = split_chunk(max_blocks * block_size) if chunk is None else chunk
    if chunk < 4 or chunk % 4:
        raise ValueError(f"chunk={chunk} must be a positive multiple of 4")
    max_chunks = -(-max_blocks * block_size // chunk)
    need = partials_bytes(n_tok, n_head, head_dim, max_chunks)
    if part is None:
        part = dev.create_buffer(need, "attn.partials")
    elif part.size < need:
        raise ValueError(f"part holds {part.size} bytes, the step's partial records need {need}")
    slots = max(1, min(max_chunks, SIDE_BY_SIDE // (n_tok * n_head)))
    lanes = n_tok * n_head // group * slots
    # CPU adapters run a workgroup on one thread: small grids get small workgroups, so both cores get some
    wg = pow2_at_most(8 if dev.info.adapter_type == "CPU" and lanes < 64 * 16 else 64, dev.info.max_invocations)
    gx, gy = fold(-(-lanes // wg), dev.info.max_workgroups_per_dim)
    params = flash_attn_params(n_tok, n_head, n_head_kv, block_size, max_blocks, q_stride, out_stride, chunk,
                               max_chunks, slots, gx, scale)  # fmt: skip
    ds = [build(dev, name, params, [q, k_cache, v_cache, tok, table, out, part], (gx, gy, 1), {"WG": wg})]
    if max_chunks > 1:
        wg = pow2_at_most(64, dev.info.max_invocations)
        gx, gy = fold(-(-n_tok * n_head * (head_dim // 4) // wg), dev.info.max_workgroups_per_dim)
        params = flash_attn_combine_params(n_tok, n_head, head_dim, chunk, max_chunks, out_stride, gx)
        ds.append(build(dev, "flash_attn_combine", params, [tok, part, out], (gx, gy, 1), {"WG": wg}))
    return ds
