"""RMS norm and softmax against float64 numpy, with and without subgroups."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import read_f32, upload_array

from realm_web.kernels.norm import rms_norm, softmax

# (n_rows, width): one element, sizes that are not multiples of the workgroup, rows wider than it (64 and,
# from 2048 on, 256 invocations), a row of a 150k vocabulary.
RMS_SHAPES = [(1, 1), (3, 7), (5, 100), (2, 3000), (65, 64)]
SOFTMAX_SHAPES = [(1, 1), (3, 7), (4, 300), (2, 2049), (1, 150001)]

# RMS: the sum of squares has only positive terms, so its relative error is at most (terms summed along one
# path: width/WG per invocation + log2(WG) tree levels ≤ 20 here) · 2^-24 ≈ 1.2e-6, halved by sqrt; with
# the division and two products each output is within ~1.5e-6 of the exact value relative to it.
RMS_RTOL = 4e-6


@pytest.mark.parametrize("subgroups", [True, False], ids=["sg", "nosg"])
def test_rms_norm(dev, dev_plain, rng, subgroups):
    dev = dev if subgroups else dev_plain
    assert dev.info.subgroups == subgroups or not subgroups
    for n_rows, width in RMS_SHAPES:
        eps = 1e-5
        x = rng.standard_normal((n_rows, width)).astype(np.float32)
        x[0] *= 1e-3  # mean(x²) ~ 1e-6, below eps: eps must be inside the sqrt to get this row right
        w = rng.standard_normal(width).astype(np.float32)
        yb = dev.create_buffer(x.nbytes, "y")
        dev.submit([rms_norm(dev, upload_array(dev, x), upload_array(dev, w), yb, n_rows, width, eps)])
        y = read_f32(dev, yb, x.size).reshape(x.shape)
        xd = x.astype(np.float64)
        ref = xd / np.sqrt(np.mean(xd**2, axis=1, keepdims=True) + eps) * w
        np.testing.assert_allclose(y, ref, rtol=RMS_RTOL, atol=0, err_msg=f"{n_rows}x{width}")


def test_rms_norm_strided(dev, rng):
    """Per-head norm inside wider rows (qk-norm): strides in, a packed output."""
    n_tok, n_head, hd = 3, 4, 32
    x = rng.standard_normal((n_tok, n_head + 1, hd)).astype(np.float32)  # one extra head per row: skipped
    w = rng.standard_normal(hd).astype(np.float32)
    yb = dev.create_buffer(4 * n_tok * hd, "y")
    # rows = the first head of each token: stride (n_head + 1) * hd
    dev.submit([rms_norm(dev, upload_array(dev, x), upload_array(dev, w), yb, n_tok, hd, 1e-6,
                         x_stride=(n_head + 1) * hd)])  # fmt: skip
    y = read_f32(dev, yb, n_tok * hd).reshape(n_tok, hd)
    xd = x[:, 0].astype(np.float64)
    ref = xd / np.sqrt(np.mean(xd**2, axis=1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(y, ref, rtol=RMS_RTOL, atol=0)


# Softmax: |scale·x - max| stays below ~40 here, where f32 exp is within a few ulp; the row sum S adds
# positive terms (≤ n/WG + log2(WG) ≈ 600 along one path for 150k columns: ≤ 3.6e-5 worst case, ~1e-6
# typically, as the errors are random); scale·x rounds by 2^-24·|scale·x| ≤ 1.2e-5 relative after exp for
# |scale·x| ≤ 200. Measured worst: 6e-6 relative.
SOFTMAX_RTOL = 5e-5


@pytest.mark.parametrize("subgroups", [True, False], ids=["sg", "nosg"])
@pytest.mark.parametrize("scale", [1.0, 0.7, -1.3])
def test_softmax(dev, dev_plain, rng, subgroups, scale):
    dev = dev if subgroups else dev_plain
    for n_rows, n_cols in SOFTMAX_SHAPES:
        # Offset 80 so that exp without subtracting the max would overflow f32 (exp(88.7) = inf).
        x = (rng.standard_normal((n_rows, n_cols)) * 5 + 80 / scale).astype(np.float32)
        yb = dev.create_buffer(x.nbytes, "y")
        dev.submit([softmax(dev, upload_array(dev, x), yb, n_rows, n_cols, scale=scale)])
        y = read_f32(dev, yb, x.size).reshape(x.shape)
        v = x.astype(np.float64) * scale
        e = np.exp(v - v.max(axis=1, keepdims=True))
        ref = e / e.sum(axis=1, keepdims=True)
        # atol: probabilities below f32's normal range (1.2e-38) may flush to zero
        np.testing.assert_allclose(y, ref, rtol=SOFTMAX_RTOL, atol=2e-38, err_msg=f"{n_rows}x{n_cols}")


def test_softmax_strided(dev, rng):
    """Rows of a wider matrix (x_stride) into a packed output."""
    n_rows, n_cols, stride = 3, 50, 64
    x = rng.standard_normal((n_rows, stride)).astype(np.float32)
    yb = dev.create_buffer(4 * n_rows * n_cols, "y")
    dev.submit([softmax(dev, upload_array(dev, x), yb, n_rows, n_cols, x_stride=stride)])
    y = read_f32(dev, yb, n_rows * n_cols).reshape(n_rows, n_cols)
    e = np.exp(x[:, :n_cols].astype(np.float64))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=SOFTMAX_RTOL, atol=0)
