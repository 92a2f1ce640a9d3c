"""Rotary embeddings (llama.cpp modes 0 and 2) against float64 numpy at positions up to ~32k."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import read_f32, upload_array

from realm_web.kernels.rope import rope

# (n_tok, n_head, head_dim, n_rot): one token, odd counts, partial rotation (n_rot < head_dim), and a pair
# count (n_tok · n_head · n_rot/2) that is not a multiple of the workgroup.
SHAPES = [(1, 1, 64, 64), (5, 3, 80, 80), (7, 4, 128, 64), (33, 2, 96, 32)]


def reference(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, scale: float, neox: bool):
    """(rotated x, allowed error per element) in float64; ggml-cpu ops.cpp rope_f32 with exact angles."""
    half = n_rot // 2
    i = np.arange(half)
    z = 2 * i / n_rot * np.log2(base)  # inv_freq = 2^-z
    theta = pos[:, None].astype(np.float64) * scale * 2.0**-z  # [n_tok, half]
    i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
    xd = x.astype(np.float64)
    x0, x1 = xd[:, :, i0], xd[:, :, i1]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = xd.copy()
    out[:, :, i0], out[:, :, i1] = x0 * c - x1 * s, x0 * s + x1 * c
    # Angle error of the f32 kernel: pow = exp2(-z) turns the rounding of its argument (|z| · 2^-24) into a
    # relative error ln2 · |z| · 2^-24 of inv_freq; the exponent's division, the products and theta's own
    # rounding add a few ulp of theta; after range reduction lavapipe's sin/cos are within ~1e-7. A rotation
    # off by δ moves the pair by δ · |pair|. Margin ×2: measured worst is ~8 · 2^-24 · |theta| + 1e-7.
    delta = 2.0**-24 * theta * (8 + 2 * z) + 4e-6
    tol = np.zeros_like(xd)
    tol[:, :, i0] = tol[:, :, i1] = delta[:, None, :] * np.hypot(x0, x1)
    return out, tol


@pytest.mark.parametrize("neox", [False, True], ids=["norm", "neox"])
@pytest.mark.parametrize(("base", "scale"), [(10000.0, 1.0), (1e6, 1.0), (10000.0, 0.25)])
def test_rope(dev, rng, neox, base, scale):
    for n_tok, n_head, hd, n_rot in SHAPES:
        pos = rng.integers(0, 32000, n_tok).astype(np.uint32)
        pos[0] = 31999 if n_tok > 1 else 0
        tok = np.stack([pos, rng.integers(0, 4, n_tok)], axis=1).astype(np.uint32)  # slots are ignored
        x = rng.standard_normal((n_tok, n_head, hd)).astype(np.float32)
        xb = upload_array(dev, x)
        dev.submit([rope(dev, xb, upload_array(dev, tok), n_tok, n_head, hd, n_rot=n_rot, freq_base=base,
                         freq_scale=scale, neox=neox)])  # fmt: skip
        y = read_f32(dev, xb, x.size).reshape(x.shape)
        ref, tol = reference(x, pos, n_rot, base, scale, neox)
        err = np.abs(y - ref)
        assert (err <= tol).all(), f"{(n_tok, n_head, hd, n_rot)}: max err/tol {np.max(err / (tol + 1e-30)):.3g}"
        np.testing.assert_array_equal(y[:, :, n_rot:], x[:, :, n_rot:])  # the unrotated tail is untouched


@pytest.mark.parametrize("neox", [False, True], ids=["norm", "neox"])
def test_rope_low_positions_exact(dev, rng, neox):
    """At small positions the f32 kernel is within a few ulp: catches off-by-one pairings a loose bound hides."""
    n_tok, n_head, hd = 6, 2, 64
    pos = np.arange(n_tok, dtype=np.uint32)
    tok = np.stack([pos, np.zeros_like(pos)], axis=1)
    x = rng.standard_normal((n_tok, n_head, hd)).astype(np.float32)
    xb = upload_array(dev, x)
    dev.submit([rope(dev, xb, upload_array(dev, tok), n_tok, n_head, hd, neox=neox)])
    y = read_f32(dev, xb, x.size).reshape(x.shape)
    ref, _ = reference(x, pos, hd, 10000.0, 1.0, neox)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6)  # |theta| ≤ 5: a few ulp of |x| ≤ ~5


def test_rope_in_fused_rows(dev, rng):
    """k inside fused QKV rows: offset and stride select it; q and v columns stay untouched."""
    n_tok, n_head, n_head_kv, hd = 4, 4, 2, 32
    width = (n_head + 2 * n_head_kv) * hd
    qkv = rng.standard_normal((n_tok, width)).astype(np.float32)
    pos = np.array([3, 100, 2000, 7], dtype=np.uint32)
    tok = np.stack([pos, np.zeros_like(pos)], axis=1)
    b = upload_array(dev, qkv)
    dev.submit([rope(dev, b, upload_array(dev, tok), n_tok, n_head_kv, hd, neox=True, x_stride=width,
                     x_offset=n_head * hd)])  # fmt: skip
    y = read_f32(dev, b, qkv.size).reshape(qkv.shape)
    k0, k1 = n_head * hd, (n_head + n_head_kv) * hd
    ref, tol = reference(qkv[:, k0:k1].reshape(n_tok, n_head_kv, hd), pos, hd, 10000.0, 1.0, True)
    assert (np.abs(y[:, k0:k1].reshape(ref.shape) - ref) <= tol).all()
    np.testing.assert_array_equal(y[:, :k0], qkv[:, :k0])
    np.testing.assert_array_equal(y[:, k1:], qkv[:, k1:])
