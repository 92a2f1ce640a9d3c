"""Rotary position embedding (Su et al. 2021) in place on q or k, at each token's position in `tok`.

Host side of shaders/rope.wgsl.j2 and rope_kv_write.wgsl.j2 (RoPE of q and k fused with the KV-cache write, what
a transformer step runs): `rope_norm` is llama.cpp's mode 0 (LLaMA: pairs (2i, 2i+1)), `rope_neox` its mode 2
(GPT-NeoX, Qwen2, Phi: pairs (i, i + n_rot/2)). Linear position scaling only (freq_scale); YaRN and per-frequency
factors (llama 3.1's rope_freqs) are not implemented.
"""

from __future__ import annotations

import struct

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most


def rope_params(
    n_tok: int,
    n_head: int,
    head_dim: int,
    n_rot: int,
    x_stride: int,
    x_offset: int,
    groups_x: int,
    freq_base: float,
    freq_scale: float,
) -> bytes:
    """Params of rope.wgsl.j2."""
    return struct.pack("<7I2f3I", n_tok, n_head, head_dim, n_rot, x_stride, x_offset, groups_x,
                       freq_base, freq_scale, 0, 0, 0)  # fmt: skip


def rope(
    dev: Device,
    x: Buffer,
    tok: Buffer,
    n_tok: int,
    n_head: int,
    head_dim: int,
    *,
    n_rot: int | None = None,
    freq_base: float = 10000.0,
    freq_scale: float = 1.0,
    neox: bool = False,
    x_stride: int | None = None,
    x_offset: int = 0,
) -> Dispatch:
    """Rotate x[t, h, :n_rot] in place by pos_t · freq_scale · freq_base^(-2i/n_rot) per pair i.

    x is [n_tok, n_head, head_dim] f32 (token t at x_offset + t * x_stride elements); tok[2t] is token t's
    position. n_rot defaults to head_dim (GGUF {arch}.rope.dimension_count when smaller).
    """
    n_rot = head_dim if n_rot is None else n_rot
    if n_rot % 2 or not 0 < n_rot <= head_dim:
        raise ValueError(f"n_rot={n_rot} must be even and in 1..head_dim={head_dim}")
    x_stride = n_head * head_dim if x_stride is None else x_stride
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(-(-n_tok * n_head * (n_rot // 2) // wg), dev.info.max_workgroups_per_dim)
    params = rope_params(n_tok, n_head, head_dim, n_rot, x_stride, x_offset, gx, freq_base, freq_scale)
    name = "rope_neox" if neox else "rope_norm"
    return build(dev, name, params, [tok, x], (gx, gy, 1), {"WG": wg})


def rope_kv_write_params(
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_rot: int,
    q_stride: int,
    q_offset: int,
    k_stride: int,
    k_offset: int,
    v_stride: int,
    v_offset: int,
    block_size: int,
    max_blocks: int,
    groups_x: int,
    freq_base: float,
    freq_scale: float,
) -> bytes:
    """Params of rope_kv_write.wgsl.j2."""
    return struct.pack("<13I2fI", n_head, n_head_kv, head_dim, n_rot, q_stride, q_offset, k_stride, k_offset,
                       v_stride, v_offset, block_size, max_blocks, groups_x, freq_base, freq_scale, 0)  # fmt: skip


def rope_kv_write(
    dev: Device,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    tok: Buffer,
    table: Buffer,
    k_cache: Buffer,
    v_cache: Buffer,
    n_tok: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    block_size: int,
    max_blocks: int,
    *,
    n_rot: int | None = None,
    freq_base: float = 10000.0,
    freq_scale: float = 1.0,
    neox: bool = False,
    kv_type: str = "f32",
    q_stride: int | None = None,
    k_stride: int | None = None,
    v_stride: int | None = None,
    q_offset: int = 0,
    k_offset: int = 0,
    v_offset: int = 0,
) -> Dispatch:
    """One dispatch for rope(q), rope(k) and kv_write (kernels.attention): q rotated in place, k rotated into the
    cache rows of its tokens (k itself is left as it is), v copied there; the same values bit for bit as the three
    kernels. q must be another buffer than k and v (it is written); k and v may be one (a fused QKV output) told
    apart by offsets and strides, in f32 elements."""
    from realm_web.kernels.attention import kv_type_bytes  # (attention imports nothing from here)

    n_rot = head_dim if n_rot is None else n_rot
    if n_rot % 2 or not 0 < n_rot <= head_dim or head_dim % 2:
        raise ValueError(f"n_rot={n_rot} must be even and in 1..head_dim={head_dim} (even)")
    kv_dim = n_head_kv * head_dim
    q_stride = n_head * head_dim if q_stride is None else q_stride
    k_stride = kv_dim if k_stride is None else k_stride
    v_stride = kv_dim if v_stride is None else v_stride
    f16 = kv_type_bytes(kv_type) == 2
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(-(-(n_head * n_rot // 2 + kv_dim // 2) // wg), dev.info.max_workgroups_per_dim)
    params = rope_kv_write_params(n_head, n_head_kv, head_dim, n_rot, q_stride, q_offset, k_stride, k_offset,
                                  v_stride, v_offset, block_size, max_blocks, gx, freq_base, freq_scale)  # fmt: skip
    name = f"rope_{'neox' if neox else 'norm'}_kv_write" + ("_f16" if f16 else "")
    return build(dev, name, params, [tok, table, q, k, v, k_cache, v_cache], (gx, gy, n_tok), {"WG": wg})
