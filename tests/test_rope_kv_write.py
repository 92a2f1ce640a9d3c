"""RoPE of q and k fused with the KV-cache write against the three kernels it replaces (rope(q), rope(k), kv_write,
each tested against numpy in test_rope.py / test_attention.py): the same q, the same cache contents, bit for bit,
for both RoPE styles, partial rotation (n_rot < head_dim), f32 and f16 caches, padding tokens and positions past the
block table; k itself is left unrotated."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import upload_array

from realm_web.kernels.attention import kv_write
from realm_web.kernels.rope import rope, rope_kv_write

PAD = 0xFFFFFFFF


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize(("neox", "n_rot"), [(False, 64), (True, 64), (False, 32), (True, 48)])
def test_fused_equals_rope_rope_kv_write(dev, rng, neox, n_rot, kv_type):
    n_head, n_head_kv, hd, bs, mb = 6, 2, 64, 4, 3
    tok = np.array([(0, 0), (5, 1), (11, 0), (PAD, 0), (3000, 1), (7, 1)], np.uint32)  # 3000: past the table
    n = len(tok)
    q = rng.standard_normal((n, n_head * hd)).astype(np.float32)
    k = rng.standard_normal((n, n_head_kv * hd)).astype(np.float32) * 3
    v = rng.standard_normal((n, n_head_kv * hd)).astype(np.float32)
    table = upload_array(dev, np.array([[4, 0, 2], [1, 5, 3]], np.uint32))
    tb = upload_array(dev, tok)
    pool = 6 * bs * n_head_kv * hd * (2 if kv_type == "f16" else 4)
    rope_opts = {"n_rot": n_rot, "freq_base": 500.0, "freq_scale": 0.5, "neox": neox}

    qa, ka, va = upload_array(dev, q), upload_array(dev, k), upload_array(dev, v)
    kca, vca = dev.create_buffer(pool, "k"), dev.create_buffer(pool, "v")
    dev.submit([rope(dev, qa, tb, n, n_head, hd, **rope_opts), rope(dev, ka, tb, n, n_head_kv, hd, **rope_opts),
                kv_write(dev, ka, va, tb, table, kca, vca, n, n_head_kv, hd, bs, mb, kv_type=kv_type)])  # fmt: skip

    qb, kb, vb = upload_array(dev, q), upload_array(dev, k), upload_array(dev, v)
    kcb, vcb = dev.create_buffer(pool, "k"), dev.create_buffer(pool, "v")
    dev.submit([rope_kv_write(dev, qb, kb, vb, tb, table, kcb, vcb, n, n_head, n_head_kv, hd, bs, mb,
                              kv_type=kv_type, **rope_opts)])  # fmt: skip

    assert dev.read(qb) == dev.read(qa)
    assert dev.read(kcb) == dev.read(kca) and dev.read(vcb) == dev.read(vca)
    assert dev.read(kb) == k.tobytes()  # k is not rotated in place
    assert any(dev.read(kcb)) and dev.read(kcb) != bytes(pool)
