"""SwiGLU gate and additions (plain, broadcast bias, in place) against float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import read_f32, upload_array

from realm_web.kernels.elementwise import add, swiglu

# (n_rows, width): one element, odd sizes, not multiples of the workgroup, many workgroups
SHAPES = [(1, 1), (1, 63), (3, 100), (7, 1031)]


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def test_swiglu(dev, rng):
    for n_rows, width in SHAPES:
        gate = (rng.standard_normal((n_rows, width)) * 4).astype(np.float32)
        gate.flat[0] = -100.0  # exp(100) overflows f32: silu must still come out ≈ 0, not NaN
        up = rng.standard_normal((n_rows, width)).astype(np.float32)
        ob = dev.create_buffer(gate.nbytes, "out")
        dev.submit([swiglu(dev, upload_array(dev, gate), upload_array(dev, up), ob, n_rows, width)])
        got = read_f32(dev, ob, gate.size).reshape(gate.shape)
        ref = silu(gate.astype(np.float64)) * up
        # exp (a few ulp), one division and two products: ~6 ulp of the result; atol for silu(-100) ~ -4e-42,
        # below f32's normal range
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-38, err_msg=f"{n_rows}x{width}")


def test_swiglu_fused(dev, rng):
    """gate and up as the two halves of one fused row [n_rows, 2 * width]."""
    n_rows, width = 5, 70
    gu = rng.standard_normal((n_rows, 2 * width)).astype(np.float32)
    b = upload_array(dev, gu)
    ob = dev.create_buffer(4 * n_rows * width, "out")
    dev.submit([swiglu(dev, b, b, ob, n_rows, width, gate_stride=2 * width, up_stride=2 * width, up_offset=width)])
    got = read_f32(dev, ob, n_rows * width).reshape(n_rows, width)
    ref = silu(gu[:, :width].astype(np.float64)) * gu[:, width:]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("broadcast", [False, True], ids=["same", "bias"])
def test_add(dev, rng, inplace, broadcast):
    for n_rows, width in SHAPES:
        a = rng.standard_normal((n_rows, width)).astype(np.float32)
        b = rng.standard_normal(width if broadcast else (n_rows, width)).astype(np.float32)
        ab = upload_array(dev, a)
        ob = ab if inplace else dev.create_buffer(a.nbytes, "out")
        dev.submit([add(dev, ab, upload_array(dev, b), ob, a.size, width=width if broadcast else None)])
        got = read_f32(dev, ob, a.size).reshape(a.shape)
        np.testing.assert_array_equal(got, a + b)  # one f32 addition, the same rounding as numpy's
