"""Elementwise ops of a transformer block: the SwiGLU gate and additions (residuals, biases).

Host side of shaders/swiglu.wgsl.j2 and add.wgsl.j2, one invocation per element.
"""

from __future__ import annotations

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most, u32s


def _grid(dev: Device, n: int) -> tuple[int, int, int]:
    wg = pow2_at_most(64, dev.info.max_invocations)
    gx, gy = fold(-(-n // wg), dev.info.max_workgroups_per_dim)
    return wg, gx, gy


def swiglu_params(
    width: int,
    n_rows: int,
    gate_stride: int,
    up_stride: int,
    out_stride: int,
    gate_offset: int,
    up_offset: int,
    groups_x: int,
) -> bytes:
    """Params of swiglu.wgsl.j2."""
    return u32s(width, n_rows, gate_stride, up_stride, out_stride, gate_offset, up_offset, groups_x)


def swiglu(
    dev: Device,
    gate: Buffer,
    up: Buffer,
    out: Buffer,
    n_rows: int,
    width: int,
    *,
    gate_stride: int | None = None,
    up_stride: int | None = None,
    out_stride: int | None = None,
    gate_offset: int = 0,
    up_offset: int = 0,
) -> Dispatch:
    """out[r, c] = silu(gate[r, c]) * up[r, c] for r < n_rows, c < width (strides, offsets in f32 elements).

    gate and up may be the same buffer (a fused gate/up output); out must be another one.
    """
    gate_stride = width if gate_stride is None else gate_stride
    up_stride = width if up_stride is None else up_stride
    out_stride = width if out_stride is None else out_stride
    wg, gx, gy = _grid(dev, n_rows * width)
    params = swiglu_params(width, n_rows, gate_stride, up_stride, out_stride, gate_offset, up_offset, gx)
    return build(dev, "swiglu", params, [gate, up, out], (gx, gy, 1), {"WG": wg})


def add_params(n: int, width: int, groups_x: int) -> bytes:
    """Params of add.wgsl.j2."""
    return u32s(n, width, groups_x, 0)


def add(dev: Device, a: Buffer, b: Buffer, out: Buffer, n: int, *, width: int | None = None) -> Dispatch:
    """out[i] = a[i] + b[i] for i < n; with `width`, out[i] = a[i] + b[i % width] (b a bias of `width`).

    `out is a` adds in place (a residual stream, a bias after a matmul): WebGPU cannot bind one buffer as
    both input and output of a dispatch, so that is its own variant.
    """
    inplace = out is a
    name = "add" + ("_bcast" if width is not None else "") + ("_inplace" if inplace else "")
    wg, gx, gy = _grid(dev, n)
    params = add_params(n, 0 if width is None else width, gx)
    buffers = [a, b] if inplace else [a, b, out]
    return build(dev, name, params, buffers, (gx, gy, 1), {"WG": wg})
