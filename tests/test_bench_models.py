"""benchmarks/models.py writes valid Llama GGUFs in llama.cpp's Q4_K_M / Q8_0 layouts: read back by gguf-py (an
independent reader), dequantized by gguf-py to finite weights of a plausible spread, and run by realm_web."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.models import Shape, make_model  # noqa: E402

TINY = Shape(n_embd=256, n_layer=9, n_head=4, n_head_kv=2, n_ff=512, n_vocab=2000, n_ctx=128)


@pytest.mark.parametrize("mix", ["q4_k_m", "q8_0"])
def test_bench_model_file(tmp_path, mix, dev):
    import gguf
    from gguf.quants import dequantize

    path = make_model(TINY, mix, tmp_path / f"{mix}.gguf")
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert len(types) == 2 + 9 * 9 + 1
    if mix == "q8_0":
        assert {v for k, v in types.items() if not k.endswith("norm.weight")} == {"Q8_0"}
    else:
        # llama.cpp's Q4_K_M with 9 layers: attn_v / ffn_down get Q6_K in layers 0, 3, 6, 7, 8 (use_more_bits)
        more = [i for i in range(9) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
        assert more == [i for i in range(9) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"] == [0, 3, 6, 7, 8]
        assert types["output.weight"] == "Q6_K" and types["blk.1.attn_q.weight"] == "Q4_K"
    for t in r.tensors:
        if t.name.endswith("norm.weight"):
            continue
        v = dequantize(t.data, t.tensor_type)
        assert np.isfinite(v).all() and 0.005 < v.std() < 0.2, t.name

    import realm_web

    model = realm_web.load(str(path), device=dev)
    logits = model.logits([1, 50, 60, 70])
    assert np.isfinite(logits).all() and logits.std() > 0
    assert model.tokenize("hello world", add_special=False)  # the synthetic SPM vocabulary tokenizes text
