"""The f16 KV cache (the default) against the f32 one on the real model path: logits at every position of a
300-token prompt within 1e-3 relative RMS, and the same greedy tokens, on the bundled model and fixtures of each
architecture (llama SPM, qwen2 with NeoX RoPE and biases, tied GPT-2 BPE). Also: the pool's size, the option's
plumbing, and the GPU memory estimate."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

import realm_web
from realm_web.errors import RealmError
from realm_web.gguf import open_gguf
from realm_web.registry import gpu_memory_parts

FIX = Path(__file__).parent / "fixtures" / "models"
BUNDLED = Path(realm_web.__file__).parent / "models" / "realm-tiny-facts.gguf"
MODELS = [BUNDLED, FIX / "llama-spm-Q4_K.gguf", FIX / "qwen2-F16.gguf", FIX / "gpt2bpe-tied-Q8_0.gguf"]
# f16 keeps 11 significant bits: K and V are rounded by ≤ 2^-11 relative, which moves the logits by ~1e-4 relative
# RMS on average and up to 7.3e-4 at single positions of a 300-token prompt (measured on these models).
TOL_RMS = 1e-3
TEXT = (
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome. "
    "Water boils at one hundred degrees. The sun rises in the east and sets in the west. "
) * 12


@cache
def model(path: Path, kv_type: str) -> realm_web.Model:
    return realm_web.load(str(path), n_ctx=512, n_parallel=1, kv_type=kv_type)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_f16_kv_logits_within_1e3_of_f32(dev, path):
    ids = model(path, "f32").tokenizer.tokenize(TEXT, add_special=True)[:300]
    assert len(ids) == 300
    ref = model(path, "f32").logits(ids).astype(np.float64)
    got = model(path, "f16").logits(ids).astype(np.float64)
    err = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert err.max() < TOL_RMS, f"rel RMS f16 vs f32 KV: max {err.max():.2e} at position {err.argmax()}"
    assert err.mean() < TOL_RMS / 4


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_f16_kv_greedy_tokens_equal_f32(dev, path):
    ids = model(path, "f32").tokenizer.tokenize(TEXT, add_special=True)[:40]
    got = {k: list(model(path, k).generate(ids, max_tokens=24, temperature=0, ignore_eos=True).ids())
           for k in ("f32", "f16")}  # fmt: skip
    assert got["f16"] == got["f32"]


def test_kv_type_sizes_the_pool_and_is_checked(dev):
    m16, m32 = model(BUNDLED, "f16"), model(BUNDLED, "f32")
    assert m16.kv.kv_type == "f16" and m32.kv.kv_type == "f32"
    assert m16.kv.bytes * 2 == m32.kv.bytes and m16.kv.k[0].size * 2 == m32.kv.k[0].size
    with pytest.raises(RealmError, match="kv_type"):
        realm_web.load(str(BUNDLED), kv_type="q8_0")


def test_memory_estimate_follows_kv_type():
    with open_gguf(str(BUNDLED)) as gf:
        from realm_web.config import Config

        cfg = Config.from_gguf(gf)
        f16 = gpu_memory_parts(gf, cfg, 1024, kv_type="f16")
        f32 = gpu_memory_parts(gf, cfg, 1024, kv_type="f32")
    assert f16["kv_cache"] == 2 * cfg.n_layer * 1024 * cfg.kv_dim * 2 == f32["kv_cache"] // 2
    assert f16["weights"] == f32["weights"] and f16["activations"] == f32["activations"]


def test_split_kv_batch_equals_solo_and_matches_one_chunk(dev, monkeypatch):
    """Split-KV on the model path, with chunks of 8 keys so that every sequence spans many: N sequences decoded
    together (prompts chunked by a step budget of 8, decodes beside prefill chunks) give exactly their solo tokens
    and logits, and the logits stay within float rounding of the unsplit kernel's (one chunk per token)."""
    from realm_web.kernels import attention

    ids = model(BUNDLED, "f32").tokenizer.tokenize(TEXT, add_special=True)
    prompts = [ids[: 20 + 13 * j] for j in range(4)]
    one_chunk = model(BUNDLED, "f16").logits(prompts[3])
    monkeypatch.setattr(attention, "MIN_CHUNK", 8)
    monkeypatch.setattr(attention, "CHUNK_ALIGN", 4)
    m = realm_web.load(str(BUNDLED), device=dev, n_ctx=128, n_parallel=4, max_batch=8)
    try:
        assert m.transformer.attn_chunk == 8
        together = m.generate_batch(prompts, max_tokens=12, temperature=0, ignore_eos=True)
        alone = ["".join(m.generate(p, max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
        assert together == alone
        split = m.logits(prompts[3])
        err = np.linalg.norm(split - one_chunk, axis=-1) / np.linalg.norm(one_chunk, axis=-1)
        assert err.max() < 1e-5
    finally:
        m.close()
