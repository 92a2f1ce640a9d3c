"""Dequantize + matrix products and embedding lookup, for every GGUF compute type.

Host side of shaders/matvec.wgsl.j2 (decode), matmul.wgsl.j2 (prefill, batches), matmul_rows.wgsl.j2 (batches
on CPU adapters; `matmul_batch` picks between the two) and get_rows.wgsl.j2.
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
ROWS_PER_INVOCATION = dict.fromkeys(
    ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"), 4
)
# ... whose dot_block reads block pairs (F16 / BF16: units of 32), word-aligned and whole only when K is a multiple of
# this (else: the workgroup kernel)
ROWS_K_MULTIPLE = {"F16": 32, "BF16": 32, "Q4_0": 64, "Q5_0": 64, "Q8_0": 64}
# matmul_rows, the batch kernel on CPU adapters (codegen/variants.py renders its variants from these): tokens per
# invocation (a batch is tiles of 8, then one tile of the smallest size that holds the rest); the types whose snippet
# has a fused dot_block_batch (Q4_0 / Q8_0 only when K % ROWS_K_MULTIPLE == 0, else their `_unit` variant); weight
# rows per invocation, measured on lavapipe: 8 where the fused form's weight loads are word-aligned, else 4 (the
# per-lane weight loads dominate, and compile time grows with them)
BATCH_TN = (1, 2, 4, 8)
BATCH_FUSED = ("Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
BATCH_ROWS_FUSED = {"Q4_0": 8, "Q4_1": 8, "Q8_0": 8, "Q2_K": 8, "Q4_K": 8, "Q5_K": 8}


# matmul_rows' workgroup size: 64, or BATCH_SMALL_WG where 64 would leave a weight fewer than BATCH_MIN_GROUPS
# workgroups. CPU adapters hand whole workgroups to their threads, so a small weight (k/v or 768-row projections
# of a small model: 1 or 2 workgroups of 64) ran on one or two threads; measured on lavapipe and on SwiftShader
# (benchmarks/batched_matmul_browser.py --wg): up to 2x faster with 8, no case slower. Not below 8: lavapipe's
# vectors have 8 lanes. Only two sizes, as each is its own pipeline to compile.
BATCH_MIN_GROUPS = 4
BATCH_SMALL_WG = 8


def batch_wg(n_rows: int, rb: int, max_invocations: int) -> int:
    """Invocations per workgroup of matmul_rows for a weight (part) of `n_rows` rows, `rb` rows per invocation."""
    wg = pow2_at_most(64, max_invocations)
    return wg if -(-n_rows // (wg * rb)) >= BATCH_MIN_GROUPS else min(wg, BATCH_SMALL_WG)


def batch_rows(type_name: str, fused: bool) -> int:
    """Weight rows per invocation of matmul_rows for `type_name` (fused form or dequant_unit)."""
    return BATCH_ROWS_FUSED.get(type_name, 4) if fused else 4


# how a product is written (shaders/epilogue.wgsl.j2's EPILOGUE): y = v; y += v (a residual); y = silu(aux) · v
EPILOGUES = {"store": 0, "add": 1, "swiglu": 2}


def _epilogue(dev: Device, epilogue: str, aux: Buffer | None) -> tuple[Buffer, int]:
    """The aux buffer to bind and the EPILOGUE constant: SwiGLU needs the gate product as aux; the others bind a
    16-byte stand-in (one per device)."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue {epilogue!r} is not one of {sorted(EPILOGUES)}")
    if (epilogue == "swiglu") != (aux is not None):
        raise ValueError("the swiglu epilogue takes the gate product as aux, and only it takes aux")
    if aux is None:
        aux = getattr(dev, "_epilogue_stand_in", None)
        if aux is None:
            aux = dev._epilogue_stand_in = dev.create_buffer(16, "epilogue.unused")
    return aux, EPILOGUES[epilogue]


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
    epilogue: str = "store",
    aux: Buffer | None = None,
) -> list[Dispatch]:
    """Y[n, y_col + r] = sum_k W[r, k] X[n, k] for n < n_tok. Strides in f32 elements; the input stride must be
    a multiple of 4, as for matvec. `epilogue`: "store" (Y = the product), "add" (Y += it: a residual) or
    "swiglu" (Y = silu(aux) · it, aux the gate product laid out like Y)."""
    x_stride = _ceil4(w.row_elems) if x_stride is None else x_stride
    if x_stride % 4:
        raise ValueError(f"matmul input stride {x_stride} is not a multiple of 4")
    y_stride = w.n_rows if y_stride is None else y_stride
    name = f"matmul_{w.type.name.lower()}"
    wg = pow2_at_most(64, dev.info.max_invocations)
    aux, epi = _epilogue(dev, epilogue, aux)
    out = []
    for part in w.parts:
        gx, gy = fold(-(-part.n_rows // wg), dev.info.max_workgroups_per_dim)
        params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), n_tok, x_stride, y_stride,
                      y_col + part.row_begin, gx)  # fmt: skip
        gz = -(-n_tok // MATMUL_TN)
        out.append(build(dev, name, params, [part.buffer, x, y, aux], (gx, gy, gz), {"WG": wg, "EPILOGUE": epi}))
    return out


def token_tiles(n_tok: int, tn_max: int = BATCH_TN[-1]) -> list[tuple[int, int, int]]:
    """How matmul_batch covers `n_tok` tokens: (tokens per tile, first token, tiles) per dispatch. Tiles of the
    largest size (at most `tn_max`), then one tile of the smallest size that holds the rest (every tile pays for
    reading and unpacking its weights, so one padded tile beats several smaller ones)."""
    big = max(t for t in BATCH_TN if t <= max(tn_max, BATCH_TN[0]))
    out = [(big, 0, n_tok // big)] if n_tok >= big else []
    rest = n_tok % big
    if rest:
        out.append((next(t for t in BATCH_TN if t >= rest), n_tok - rest, 1))
    return out


def matmul_batch(
    dev: Device,
    w: Weight,
    x: Buffer,
    y: Buffer,
    n_tok: int,
    *,
    x_stride: int | None = None,
    y_stride: int | None = None,
    y_col: int = 0,
    tn_max: int | None = None,
    wg: int | None = None,
    epilogue: str = "store",
    aux: Buffer | None = None,
) -> list[Dispatch]:
    """Y[n, y_col + r] = sum_k W[r, k] X[n, k] for n < n_tok, as `matmul` (same strides), for batches of any size.
    On CPU adapters: matmul_rows, which reads each weight block once for a tile of tokens. Either way a token's
    row of Y is bitwise the same whatever n_tok and wherever the token sits in the batch (each token's sums run
    in one fixed order, with no cross-token reduction), so a batched sequence reproduces its solo output.
    `epilogue` and `aux` as for `matmul`: a residual add or the SwiGLU gate in the same dispatch.
    `tn_max` (tiles of at most that many tokens) and `wg` (workgroup size) override matmul_rows' choices, for
    benchmarks: neither changes a result."""
    if dev.info.adapter_type != "CPU":
        return matmul(dev, w, x, y, n_tok, x_stride=x_stride, y_stride=y_stride, y_col=y_col, epilogue=epilogue,
                      aux=aux)  # fmt: skip
    x_stride = _ceil4(w.row_elems) if x_stride is None else x_stride
    if x_stride % 4:
        raise ValueError(f"matmul_batch input stride {x_stride} is not a multiple of 4")
    y_stride = w.n_rows if y_stride is None else y_stride
    t = w.type.name
    fused = t in BATCH_FUSED and w.row_elems % ROWS_K_MULTIPLE.get(t, 1) == 0
    unit = t in BATCH_FUSED and not fused
    sg = dev.info.subgroups
    rb = batch_rows(t, fused)
    aux, epi = _epilogue(dev, epilogue, aux)
    out = []
    for part in w.parts:
        g = batch_wg(part.n_rows, rb, dev.info.max_invocations) if wg is None else wg
        gx, gy = fold(-(-part.n_rows // (g * rb)), dev.info.max_workgroups_per_dim)
        for tn, tok0, n_tiles in token_tiles(n_tok, BATCH_TN[-1] if tn_max is None else tn_max):
            name = f"matmul_rows_{t.lower()}{'_unit' if unit else ''}_t{tn}{'_sg' if sg else ''}"
            params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), n_tok, x_stride, y_stride,
                          y_col + part.row_begin, gx, tok0)  # fmt: skip
            constants = {"WG": g, "EPILOGUE": epi}
            out.append(build(dev, name, params, [part.buffer, x, y, aux], (gx, gy, n_tiles), constants))
    return out


def get_rows(
    dev: Device,
    w: Weight,
    ids: Buffer,
    out: Buffer,
    n_tok: int,
    *,
    out_stride: int | None = None,
    out_offset: int = 0,
) -> list[Dispatch]:
    """out[out_offset + t * out_stride + :K] = dequantize(W[ids[t], :]) for t < n_tok (ids are u32, each
    < w.n_rows; stride and offset in f32 elements)."""
    out_stride = w.row_elems if out_stride is None else out_stride
    name = f"get_rows_{w.type.name.lower()}"
    wg = pow2_at_most(64, dev.info.max_invocations)
    res = []
    for part in w.parts:
        gx, gy = fold(-(-_units(w) // wg), dev.info.max_workgroups_per_dim)
        params = u32s(w.row_elems, part.n_rows, w.row_bytes, _units(w), part.row_begin, out_stride, gx, out_offset)
        res.append(build(dev, name, params, [part.buffer, ids, out], (gx, gy, n_tok), {"WG": wg}))
    return res
