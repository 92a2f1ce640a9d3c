"""Registry records (realm_web/registry.py) against gguf-py's reader, and the SDK's built-in records."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from gguf import GGUFReader

from realm_web.cli import bundled_draft, bundled_lora, bundled_model
from realm_web.errors import GGUFError
from realm_web.registry import record_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "models"
MODELS = [Path(bundled_model())] + [
    FIXTURES / f"{n}.gguf" for n in ("llama-spm-Q4_K", "llama-spm-BF16", "qwen2-F16", "gpt2bpe-tied-Q8_0")
]
KEYS = ["id", "url", "sha256", "size", "architecture", "quant", "context_length", "estimated_gpu_memory",
        "required_features"]  # fmt: skip


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_record_matches_gguf_py(path: Path):
    if not path.is_file():
        pytest.skip(f"{path} not built (scripts/make_models.py)")
    rec = record_for(path)
    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")

    assert list(rec) == KEYS
    assert rec["id"] == path.stem and rec["url"] == path.name
    assert rec["size"] == path.stat().st_size
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["architecture"] == arch
    assert rec["context_length"] == _field(reader, f"{arch}.context_length")
    assert rec["required_features"] == []

    by_bytes = Counter()
    for t in reader.tensors:
        if len(t.shape) >= 2:
            by_bytes[t.tensor_type.name] += int(t.n_bytes)
    assert rec["quant"] == by_bytes.most_common(1)[0][0]
    assert rec["quant"] in path.stem or path == MODELS[0]  # fixtures are named after their weight type

    # weights (1-D tensors as f32) + f16 KV cache (the default) at the full context, plus some activation memory
    weights = sum(int(t.n_bytes) if len(t.shape) >= 2 else 4 * int(t.n_elements) for t in reader.tensors)
    n_embd = _field(reader, f"{arch}.embedding_length")
    n_head = _field(reader, f"{arch}.attention.head_count")
    n_head_kv = _field(reader, f"{arch}.attention.head_count_kv")
    kv_dim = n_head_kv * n_embd // n_head
    kv = 2 * _field(reader, f"{arch}.block_count") * rec["context_length"] * kv_dim * 2
    acts = rec["estimated_gpu_memory"] - weights - kv
    assert 0 < acts < weights + 2 * kv  # of the order of the model (2 * kv: what an f32 KV cache would take)


def test_bundled_model_is_q8_0():
    rec = record_for(bundled_model())
    assert rec["id"] == "realm-tiny-facts" and rec["quant"] == "Q8_0" and rec["architecture"] == "llama"


def test_id_and_url_override():
    rec = record_for(bundled_model(), id="tiny", url="/models/x.gguf")
    assert rec["id"] == "tiny" and rec["url"] == "/models/x.gguf"


def test_bad_files_raise(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError):
        record_for(bad)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(Path(bundled_model()).read_bytes()[:100_000])
    with pytest.raises(GGUFError):
        record_for(cut)


def test_sdk_builtin_record_is_current():
    """js/src/builtin-models.json (the SDK's committed built-in registry) must describe the bundled model as it
    is now: `python -m realm_web.registry` prints the record to put there."""
    builtin = ROOT / "js" / "src" / "builtin-models.json"
    if not builtin.is_file():
        pytest.skip("js/src/builtin-models.json not present")
    records = {r["id"]: r for r in json.loads(builtin.read_text())}
    assert "realm-tiny-facts" in records
    got = records["realm-tiny-facts"]
    want = record_for(bundled_model())
    assert got.get("url", (got.get("urls") or [None])[0]) == "realm-tiny-facts.gguf"
    assert {k: got.get(k) for k in want if k != "url"} == {k: v for k, v in want.items() if k != "url"}
    # and its draft model (speculative decoding), marked as a draft for it
    draft = records["realm-tiny-facts-draft"]
    want = record_for(bundled_draft(), draft_for=["realm-tiny-facts"])
    assert {k: draft.get(k) for k in want if k != "url"} == {k: v for k, v in want.items() if k != "url"}
    # and its demo LoRA adapter (engine.loadLora), a record of type "lora" naming its base
    lora = records["realm-tiny-facts-lora-fiction"]
    want = record_for(bundled_lora(), base_models=["realm-tiny-facts"])
    assert {k: lora.get(k) for k in want if k != "url"} == {k: v for k, v in want.items() if k != "url"}
    assert want["type"] == "lora" and want["rank"] == 8 and want["alpha"] == 16.0 and want["quant"] == "F16"
