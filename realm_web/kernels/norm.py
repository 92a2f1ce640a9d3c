"""Row-wise normalizations: RMS norm (before attention and FFN) and softmax (sampling, diagnostics).

Host side of shaders/rms_norm.wgsl.j2 and softmax.wgsl.j2: one workgroup per row, the `_sg` variant where
the adapter has subgroups. Rows are f32 row-major; strides let a caller normalize per head (qk-norm) or
a slice of a wider row.
"""

from __future__ import annotations

import struct

from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels import build, fold, pow2_at_most


def _wg(dev: Device, width: int) -> int:
    # Long rows (hidden sizes, vocabularies) get the browser's maximum of 256 invocations; short ones
    # (per-head norms, small test models) 64 so fewer invocations idle.
    return pow2_at_most(256 if width >= 2048 else 64, dev.info.max_invocations)


def _variant(dev: Device, base: str) -> str:
    return base + ("_sg" if dev.info.subgroups else "")


def rms_norm_params(width: int, n_rows: int, x_stride: int, y_stride: int, groups_x: int, eps: float) -> bytes:
    """Params of rms_norm.wgsl.j2."""
    return struct.pack("<5If2I", width, n_rows, x_stride, y_stride, groups_x, eps, 0, 0)


def rms_norm(
    dev: Device,
    x: Buffer,
    weight: Buffer,
    y: Buffer,
    n_rows: int,
    width: int,
    eps: float,
    *,
    x_stride: int | None = None,
    y_stride: int | None = None,
) -> Dispatch:
    """y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * weight for r < n_rows (x and y distinct buffers)."""
    x_stride = width if x_stride is None else x_stride
    y_stride = width if y_stride is None else y_stride
    gx, gy = fold(n_rows, dev.info.max_workgroups_per_dim)
    params = rms_norm_params(width, n_rows, x_stride, y_stride, gx, eps)
    name = _variant(dev, "rms_norm")
    return build(dev, name, params, [x, weight, y], (gx, gy, 1), {"WG": _wg(dev, width)})


def softmax_params(n_cols: int, n_rows: int, x_stride: int, y_stride: int, groups_x: int, scale: float) -> bytes:
    """Params of softmax.wgsl.j2."""
    return struct.pack("<5If2I", n_cols, n_rows, x_stride, y_stride, groups_x, scale, 0, 0)


def softmax(
    dev: Device,
    x: Buffer,
    y: Buffer,
    n_rows: int,
    n_cols: int,
    *,
    scale: float = 1.0,
    x_stride: int | None = None,
    y_stride: int | None = None,
) -> Dispatch:
    """y[r, :] = softmax(scale * x[r, :]) for r < n_rows (x and y distinct buffers)."""
    x_stride = n_cols if x_stride is None else x_stride
    y_stride = n_cols if y_stride is None else y_stride
    gx, gy = fold(n_rows, dev.info.max_workgroups_per_dim)
    params = softmax_params(n_cols, n_rows, x_stride, y_stride, gx, scale)
    name = _variant(dev, "softmax")
    return build(dev, name, params, [x, y], (gx, gy, 1), {"WG": _wg(dev, n_cols)})
