"""Dequantize + matrix products and embedding lookup, for every GGUF compute type.

Host side of shaders/matvec.wgsl.j2 (decode), matmul.wgsl.j2 (prefill, batches) and get_rows.wgsl.j2.
A weight split into parts (see realm_web.weights) gets one dispatch per part; parts write disjoint output
columns (matvec, matmul) or disjoint tokens (get_rows).
"""

from __future__ import annotations

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most, u32s
from realm_web.weights import Weight

UNIT = 32  # elements per dequantize_unit call (every type's snippet)
MATMUL_TN = 8  # tokens per matmul workgroup (const TN in matmul.wgsl.j2)
# rows per invocation of matvec_rows for types with a fused dot_block (const ROWS in their quant snippet)
ROWS_PER_INVOCATION = {"Q4_0": 4, "Q4_K": 4, "Q6_K": 4, "Q8_0": 4}
# ... whose dot_block reads block pairs, word-aligned only when K is a multiple of this (else: the workgroup kernel)
ROWS_K_MULTIPLE = {"Q4_0": 64, "Q8_0": 64}


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def _units(w: Weight) -> int:
    return -(-w.row_elems // UNIT)


def matvec(
    dev: Device,
    w: Weight,
    x: Buffer,
    y: Buffer,
    *,
    n_vec: int = 1,
    x_stride: int | None = None,
    y_stride: int | None = None,
    y_col: int = 0,
    x_offset: int = 0,
    rows: bool | None = None,
) -> list[Dispatch]:
    """y[v, y_col + r] = sum_k W[r, k] x[x_offset + v * x_stride + k] for v < n_vec. Strides and offsets in f32
    elements; input stride and offset must be multiples of 4 (x is read as vec4: activation rows are allocated
    with widths rounded up to 4). `rows`: one row per invocation (matvec_rows, no reduction), the default on
    CPU adapters; otherwise one row per workgroup."""
    x_stride = _ceil4(w.row_elems) if x_stride is None else x_stride
    if x_stride % 4 or x_offset % 4:
        raise ValueError(f"matvec input stride {x_stride} and offset {x_offset} must be multiples of 4")
    y_stride = w.n_rows if y_stride is None else y_stride
    rows = dev.info.adapter_type == "CPU" if rows is None else rows
    rows = rows and w.row_elems % ROWS_K_MULTIPLE.get(w.type.name, 1) == 0
    sg = dev.info.subgroups and not rows
    name = f"matvec{'_rows' if rows else ''}_{w.type.name.lower()}{'_sg' if sg else ''}"
    wg = pow2_at_most(64, dev.info.max_invocations)
    per_lane = ROWS_PER_INVOCATION.get(w.type.name, 1) if rows else 1
    out = []
    for part in w.parts:
        gx, gy = fold(-(-part.n_rows // (wg * per_lane)) if rows else part.n_rows, dev.info.max_workgroups_per_dim)
        params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), x_stride, y_stride,
                      y_col + part.row_begin, gx, x_offset)  # fmt: skip
        out.append(build(dev, name, params, [part.buffer, x, y], (gx, gy, n_vec), {"WG": wg}))
    return out


def matmul(
    dev: Device,
    w: Weight,
    x: Buffer,
    y: Buffer,
    n_tok: int,
    *,
    x_stride: int | None = None,
    y_stride: int | None = None,
    y_col: int = 0,
) -> list[Dispatch]:
    """Y[n, y_col + r] = sum_k W[r, k] X[n, k] for n < n_tok. Strides in f32 elements; the input stride must be
    a multiple of 4, as for matvec."""
    x_stride = _ceil4(w.row_elems) if x_stride is None else x_stride
    if x_stride % 4:
        raise ValueError(f"matmul input stride {x_stride} is not a multiple of 4")
    y_stride = w.n_rows if y_stride is None else y_stride
    name = f"matmul_{w.type.name.lower()}"
    wg = pow2_at_most(64, dev.info.max_invocations)
    out = []
    for part in w.parts:
        gx, gy = fold(-(-part.n_rows // wg), dev.info.max_workgroups_per_dim)
        params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), n_tok, x_stride, y_stride,
                      y_col + part.row_begin, gx)  # fmt: skip
        gz = -(-n_tok // MATMUL_TN)
        out.append(build(dev, name, params, [part.buffer, x, y], (gx, gy, gz), {"WG": wg}))
    return out


def get_rows(
    dev: Device, w: Weight, ids: Buffer, out: Buffer, n_tok: int, *, out_stride: int | None = None
) -> list[Dispatch]:
    """out[t, :] = dequantize(W[ids[t], :]) for t < n_tok (ids are u32, each < w.n_rows)."""
    out_stride = w.row_elems if out_stride is None else out_stride
    name = f"get_rows_{w.type.name.lower()}"
    wg = pow2_at_most(64, dev.info.max_invocations)
    res = []
    for part in w.parts:
        gx, gy = fold(-(-_units(w) // wg), dev.info.max_workgroups_per_dim)
        params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), part.row_begin, out_stride, gx, 0)
        res.append(build(dev, name, params, [part.buffer, ids, out], (gx, gy, n_tok), {"WG": wg}))
    return res
