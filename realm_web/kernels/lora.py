"""LoRA applied unmerged over a whole batch, every token with its own adapters (Punica's SGMV as two gathers).

Host side of shaders/lora.wgsl.j2: `lora_shrink` (t = A·x per token and selected adapter) then `lora_expand`
(y += scale · B·t). Both read the adapters' f32 matrices from one pool per target weight, indexed by the slot
each token's selection names, so one pair of dispatches serves a step whatever mix of adapters it holds.
"""

from __future__ import annotations

import struct

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most
from realm_web.kernels.matmul import BATCH_SMALL_WG


def lora_params(K: int, N: int, rank_cap: int, n_tok: int, n_sel: int, sel_offset: int, x_stride: int,
                y_stride: int, target: int, n_targets: int, groups_x: int) -> bytes:  # fmt: skip
    """Params of lora.wgsl.j2 (both stages)."""
    return struct.pack("<12I", K, N, rank_cap, n_tok, n_sel, sel_offset, x_stride, y_stride, target, n_targets,
                       groups_x, 0)  # fmt: skip


def lora_apply(
    dev: Device,
    a_pool: Buffer,
    b_pool: Buffer,
    ranks: Buffer,
    sel: Buffer,
    x: Buffer,
    t: Buffer,
    y: Buffer,
    *,
    K: int,
    N: int,
    rank_cap: int,
    n_tok: int,
    n_sel: int,
    target: int,
    n_targets: int,
    sel_offset: int = 0,
    x_stride: int | None = None,
    y_stride: int | None = None,
) -> list[Dispatch]:
    """y[n, :N] += Σ_j scale_j · alpha_j / rank_j · B_j (A_j x[n, :K]) for n < n_tok, j over token n's entries of
    `sel` (row sel_offset + n), as two dispatches: shrink into `t` [n_tok, n_sel, rank_cap], then expand.
    Pools as lora.wgsl.j2 says: A [slot][rank_cap][ceil4(K)], B [slot][N][rank_cap], zero past each adapter's
    rank; `rank_cap` and `x_stride` multiples of 4."""
    x_stride = (K + 3) & ~3 if x_stride is None else x_stride
    if rank_cap % 4 or x_stride % 4:
        raise ValueError(f"lora_apply: rank_cap {rank_cap} and x_stride {x_stride} must be multiples of 4")
    y_stride = N if y_stride is None else y_stride
    wg = pow2_at_most(64, dev.info.max_invocations)
    out = []
    for stage, n, pool, io in (("shrink", n_tok * n_sel * rank_cap // 4, a_pool, [x, t]),
                               ("expand", n_tok * -(-N // 4), b_pool, [t, y])):  # fmt: skip
        # CPU adapters hand whole workgroups to their threads: the shrink's few (long) invocations go in small
        # workgroups so they spread over the threads (as matmul_rows does for small weights)
        wg = min(wg, BATCH_SMALL_WG) if stage == "shrink" and dev.info.adapter_type == "CPU" else wg
        gx, gy = fold(-(-n // wg), dev.info.max_workgroups_per_dim)
        params = lora_params(K, N, rank_cap, n_tok, n_sel, sel_offset, x_stride, y_stride, target, n_targets, gx)
        out.append(build(dev, f"lora_{stage}", params, [pool, ranks, sel, *io], (gx, gy, 1), {"WG": wg}))
    return out
