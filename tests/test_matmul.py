"""Fused dequantize + matvec / matmul / embedding lookup for every GGUF compute type, against gguf-py's
dequantizer (checked against ggml's C by gguf-py) followed by a float64 product."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import random_tensor, read_f32, upload_array, weight

from realm_web.kernels.elementwise import swiglu
from realm_web.kernels.matmul import BATCH_SMALL_WG, batch_wg, get_rows, matmul, matmul_batch, matvec
from realm_web.quants import BY_NAME, COMPUTE_TYPES

# f32 accumulation over K ≤ ~1000 terms: |err| ≤ TOL * sum_k |w_k x_k|. Typical error is ~1e-7 of that sum;
# a wrong bit layout gives errors of order 1.
TOL = 2e-5


def shapes(type_name: str) -> list[tuple[int, int]]:
    """(n_rows, K): rows not multiples of the workgroup, K of one and several blocks."""
    be = BY_NAME[type_name].block_elems
    if be == 1:  # K % 32 == 0: F16 / BF16 matvec_rows' fused units; otherwise the workgroup matvec
        return [(1, 33), (67, 96), (130, 257)]
    return [(1, be), (67, 3 * be), (130, max(2 * be, 512))]


def check(y: np.ndarray, w: np.ndarray, x: np.ndarray) -> None:
    ref = x @ w.T
    bound = TOL * (np.abs(x) @ np.abs(w).T) + 1e-30
    err = np.abs(y.reshape(ref.shape) - ref)
    assert (err <= bound).all(), f"max err/bound {np.max(err / bound):.3g}"


@pytest.mark.parametrize("type_name", COMPUTE_TYPES)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("mode", ["sg", "nosg", "rows"])
def test_matvec(dev, dev_plain, rng, type_name, split, mode):
    """Both kernels: one row per workgroup (matvec, with and without subgroups) and one per invocation
    (matvec_rows, the CPU adapters' default)."""
    dev = dev_plain if mode == "nosg" else dev
    rows = mode == "rows"
    for n_rows, k in shapes(type_name):
        data, ref = random_tensor(type_name, n_rows, k, rng)
        # split: force parts of ~1/3 of the tensor (a 1 MiB limit is the same mechanism at model scale)
        mb = max(len(data) // n_rows + 3, len(data) // 3) if split else None
        w = weight(dev, type_name, data, n_rows, k, max_binding=mb)
        if split and n_rows > 2:
            assert len(w.parts) > 1
        n_vec = 2
        x = rng.standard_normal((n_vec, k)).astype(np.float32)
        # input rows padded to a multiple of 4 with NaN: the kernel must not read past K
        xp = np.full((n_vec, (k + 3) // 4 * 4), np.nan, dtype=np.float32)
        xp[:, :k] = x
        xb, yb = upload_array(dev, xp), dev.create_buffer(4 * n_vec * n_rows, "y")
        dev.submit(matvec(dev, w, xb, yb, n_vec=n_vec, rows=rows))
        check(read_f32(dev, yb, n_vec * n_rows), ref, x.astype(np.float64))
        # the second vector alone, addressed by its offset (how the last prompt row's logits are taken)
        dev.submit(matvec(dev, w, xb, yb, x_offset=xp.shape[1], rows=rows))
        check(read_f32(dev, yb, n_rows), ref, x[1:].astype(np.float64))


@pytest.mark.parametrize("type_name", COMPUTE_TYPES)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_matmul(dev, rng, type_name, split):
    for (n_rows, k), n_tok in zip(shapes(type_name), (1, 9, 17), strict=True):
        data, ref = random_tensor(type_name, n_rows, k, rng)
        mb = max(len(data) // n_rows + 3, len(data) // 3) if split else None
        w = weight(dev, type_name, data, n_rows, k, max_binding=mb)
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        xp = np.full((n_tok, (k + 3) // 4 * 4), np.nan, dtype=np.float32)  # NaN padding must not be read
        xp[:, :k] = x
        xb, yb = upload_array(dev, xp), dev.create_buffer(4 * n_tok * n_rows, "y")
        dev.submit(matmul(dev, w, xb, yb, n_tok))
        check(read_f32(dev, yb, n_tok * n_rows), ref, x.astype(np.float64))


@pytest.mark.parametrize("type_name", COMPUTE_TYPES)
def test_get_rows(dev, rng, type_name):
    n_rows, k = shapes(type_name)[1]
    data, ref = random_tensor(type_name, n_rows, k, rng)
    ids = np.array([0, n_rows - 1, 5, 5, n_rows // 2, 1, 33], dtype=np.uint32)
    for mb in (None, max(len(data) // n_rows + 3, len(data) // 4)):
        w = weight(dev, type_name, data, n_rows, k, max_binding=mb)
        ob = dev.create_buffer(4 * len(ids) * k, "out")
        dev.submit(get_rows(dev, w, upload_array(dev, ids), ob, len(ids)))
        got = read_f32(dev, ob, len(ids) * k).reshape(len(ids), k)
        np.testing.assert_array_equal(got, ref[ids].astype(np.float32))  # dequantization is exact in f32


def _batch_inputs(rng, n_tok: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """n_tok random input rows and their NaN-padded upload (the kernels must not read past K)."""
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    xp = np.full((n_tok, (k + 3) // 4 * 4), np.nan, dtype=np.float32)
    xp[:, :k] = x
    return x, xp


@pytest.mark.parametrize("type_name", COMPUTE_TYPES)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_matmul_batch(dev, rng, type_name, split):
    """matmul_batch on the CPU adapter (matmul_rows): 1 token (the 1-token tile), 13 (a full 8-token tile and a
    partial one) and 3 (a partial 4-token tile); Q4_0 / Q8_0 rows of 1 and 3 blocks take the `_unit` variant."""
    for (n_rows, k), n_tok in zip(shapes(type_name), (1, 13, 3), strict=True):
        data, ref = random_tensor(type_name, n_rows, k, rng)
        mb = max(len(data) // n_rows + 3, len(data) // 3) if split else None
        w = weight(dev, type_name, data, n_rows, k, max_binding=mb)
        x, xp = _batch_inputs(rng, n_tok, k)
        xb, yb = upload_array(dev, xp), dev.create_buffer(4 * n_tok * n_rows, "y")
        dev.submit(matmul_batch(dev, w, xb, yb, n_tok))
        check(read_f32(dev, yb, n_tok * n_rows), ref, x.astype(np.float64))


@pytest.mark.parametrize("type_name", ["Q4_K", "F16"])
def test_matmul_batch_no_subgroups(dev_plain, rng, type_name):
    """The fallback for CPU adapters without subgroups (x loaded per lane): output columns and strides too."""
    n_rows, k = shapes(type_name)[1]
    data, ref = random_tensor(type_name, n_rows, k, rng)
    w = weight(dev_plain, type_name, data, n_rows, k)
    for n_tok in (1, 13):
        x, xp = _batch_inputs(rng, n_tok, k)
        xb = upload_array(dev_plain, xp)
        yb = upload_array(dev_plain, np.full((n_tok, n_rows + 5), 7.0, dtype=np.float32))
        dev_plain.submit(matmul_batch(dev_plain, w, xb, yb, n_tok, y_stride=n_rows + 5, y_col=2))
        y = read_f32(dev_plain, yb, n_tok * (n_rows + 5)).reshape(n_tok, n_rows + 5)
        check(y[:, 2 : 2 + n_rows], ref, x.astype(np.float64))
        assert (y[:, :2] == 7.0).all() and (y[:, 2 + n_rows :] == 7.0).all()


def _batch_invariance(dev, build, type_name: str, rng, n_rows: int, k: int, sizes) -> None:
    """Each token's output bits are those of the token run alone, whatever the batch size and its place in it."""
    data, _ = random_tensor(type_name, n_rows, k, rng)
    w = weight(dev, type_name, data, n_rows, k)
    n_max = max(sizes)
    _, pool = _batch_inputs(rng, n_max, k)
    stride = pool.shape[1]
    solo = {}
    for j in range(n_max):
        xb, yb = upload_array(dev, pool[j : j + 1]), dev.create_buffer(4 * n_rows, "y")
        dev.submit(build(dev, w, xb, yb, 1))
        solo[j] = read_f32(dev, yb, n_rows).view(np.uint32)
    for n in sizes:
        order = rng.permutation(n_max)[:n]  # tokens in any order, each at some slot of the batch
        xb, yb = upload_array(dev, pool[order]), dev.create_buffer(4 * n * n_rows, "y")
        dev.submit(build(dev, w, xb, yb, n, x_stride=stride))
        got = read_f32(dev, yb, n * n_rows).view(np.uint32).reshape(n, n_rows)
        for slot, j in enumerate(order):
            np.testing.assert_array_equal(got[slot], solo[j], err_msg=f"token {j} at slot {slot} of {n}")


# batch sizes covering every tile matmul_batch uses (the solo runs: 1), partial tiles and tiles after full ones:
# 2, 4 (3 of 4), 8 (5 of 8), 8 + 2, 8 + 8 (5 of 8), 4 × 8 + 4
BATCH_SIZES = (2, 3, 5, 10, 13, 36)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"])
def test_matmul_batch_is_batch_invariant(dev, rng, type_name):
    """What continuous batching stands on: a token's row of Y is bitwise the same alone or in any batch."""
    k = 512 if type_name != "F16" else 100  # Q4_0 / Q8_0: fused pairs (K % 64 == 0); F16: a ragged row
    _batch_invariance(dev, matmul_batch, type_name, rng, 67, k, BATCH_SIZES)


def test_batch_workgroup_size_follows_the_rows():
    """matmul_rows spreads a weight over at least 4 workgroups of 64 invocations, else uses workgroups of 8."""
    assert batch_wg(2048, 8, 256) == 64  # 4 workgroups of 64 × 8 rows
    assert batch_wg(1536, 8, 256) == BATCH_SMALL_WG == 8  # 3 workgroups of 64
    assert batch_wg(768, 8, 256) == 8 and batch_wg(256, 4, 256) == 8
    assert batch_wg(1024, 4, 256) == 64 and batch_wg(32000, 8, 256) == 64
    assert batch_wg(32000, 8, 32) == 32 and batch_wg(8, 8, 4) == 4  # never above the device's limit


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"])
def test_matmul_batch_tiles_and_workgroups_change_no_bit(dev, rng, type_name):
    """The tile cap and the workgroup size are free choices: every one gives the same bits (a weight small
    enough for workgroups of 8 by default, and one big enough for 64)."""
    for n_rows, k in ((67, 512), (2100, 256)):
        data, ref = random_tensor(type_name, n_rows, k, rng)
        w = weight(dev, type_name, data, n_rows, k)
        n_tok = 13
        x, xp = _batch_inputs(rng, n_tok, k)
        xb = upload_array(dev, xp)
        got = []
        for kw in ({}, {"wg": 64}, {"wg": 8}, {"wg": 32}, {"tn_max": 1}, {"tn_max": 2}, {"tn_max": 4, "wg": 16}):
            yb = dev.create_buffer(4 * n_tok * n_rows, "y")
            dev.submit(matmul_batch(dev, w, xb, yb, n_tok, **kw))
            got.append(read_f32(dev, yb, n_tok * n_rows))
        check(got[0], ref, x.astype(np.float64))
        for g in got[1:]:
            np.testing.assert_array_equal(g.view(np.uint32), got[0].view(np.uint32))


@pytest.mark.parametrize("type_name", ["Q4_K", "Q8_0"])
def test_matmul_is_batch_invariant(dev, rng, type_name):
    """The same property for the tiled matmul (matmul_batch's route on GPUs): tokens never mix within a tile."""
    _batch_invariance(dev, matmul, type_name, rng, 67, 512, (3, 8, 13))


@pytest.mark.parametrize("kernel", [matmul_batch, matmul], ids=["matmul_batch", "matmul"])
@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "F16"])
def test_matmul_epilogues(dev, rng, kernel, type_name):
    """The residual and SwiGLU epilogues against numpy, and bitwise what the separate add and swiglu kernels
    compute from the plain product (so fusing them into the product's dispatch changes no result)."""
    n_rows, k = shapes(type_name)[1]
    data, ref = random_tensor(type_name, n_rows, k, rng)
    w = weight(dev, type_name, data, n_rows, k)
    for n_tok in (1, 13):
        x, xp = _batch_inputs(rng, n_tok, k)
        xb = upload_array(dev, xp)
        prod = x.astype(np.float64) @ ref.T
        plain = dev.create_buffer(4 * n_tok * n_rows, "y")
        dev.submit(kernel(dev, w, xb, plain, n_tok))
        y_plain = read_f32(dev, plain, n_tok * n_rows).reshape(n_tok, n_rows)

        resid = (rng.standard_normal((n_tok, n_rows)) * 4).astype(np.float32)
        yb = upload_array(dev, resid)
        dev.submit(kernel(dev, w, xb, yb, n_tok, epilogue="add"))
        y = read_f32(dev, yb, n_tok * n_rows).reshape(n_tok, n_rows)
        np.testing.assert_array_equal(y, resid + y_plain)  # IEEE f32 addition, as the add kernel does
        np.testing.assert_allclose(y, resid + prod, rtol=1e-4, atol=1e-4 * np.abs(prod).max())

        gate = (rng.standard_normal((n_tok, n_rows)) * 3).astype(np.float32)
        gb, hb, hs = (
            upload_array(dev, gate),
            dev.create_buffer(4 * n_tok * n_rows, "h"),
            dev.create_buffer(4 * n_tok * n_rows, "h_sep"),
        )
        dev.submit(kernel(dev, w, xb, hb, n_tok, epilogue="swiglu", aux=gb))
        dev.submit([swiglu(dev, gb, plain, hs, n_tok, n_rows)])
        h = read_f32(dev, hb, n_tok * n_rows).reshape(n_tok, n_rows)
        np.testing.assert_array_equal(h.view(np.uint32).ravel(), read_f32(dev, hs, n_tok * n_rows).view(np.uint32))
        g64 = gate.astype(np.float64)
        want = g64 / (1 + np.exp(-g64)) * prod
        np.testing.assert_allclose(h, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="aux"):
        kernel(dev, w, xb, hb, 1, epilogue="swiglu")
    with pytest.raises(ValueError, match="epilogue"):
        kernel(dev, w, xb, hb, 1, epilogue="mul")
