"""Rotary position embedding (Su et al. 2021) in place on q or k, at each token's position in `tok`.

Host side of shaders/rope.wgsl.j2: `rope_norm` is llama.cpp's mode 0 (LLaMA: pairs (2i, 2i+1)), `rope_neox`
its mode 2 (GPT-NeoX, Qwen2, Phi: pairs (i, i + n_rot/2)). Linear position scaling only (freq_scale);
YaRN and per-frequency factors (llama 3.1's rope_freqs) are not implemented.
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
