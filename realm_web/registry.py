"""Model registry records: what a page needs to know about a GGUF file before it downloads it (pure Python).

A record (the JS SDK's `appConfig.models` entries, `js/src/builtin-models.json`, the server's
`/models/registry.json`):

    {"id", "url" (or "urls", tried in order), "sha256", "size", "architecture", "quant", "context_length",
     "estimated_gpu_memory", "required_features"}

and for a LoRA adapter (`engine.loadLora`): {"id", "url", "sha256", "size", "type": "lora", "architecture",
"quant", "rank", "alpha", "base_models" (the ids of the models it was made for)}.

Everything but the hash comes from the GGUF header; tensor data is read only to hash the file.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any

from realm_web.config import Config
from realm_web.gguf import GGUFFile, open_gguf
from realm_web.kernels.attention import kv_type_bytes, partials_bytes, split_chunk

HASH_CHUNK = 1 << 20
MAX_BATCH = 64  # Transformer's default max_batch: the activation buffers scale with it


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def main_quant(gf: GGUFFile) -> str:
    """The GGUF type name holding the most bytes among the 2-D (and higher) weights; ties go to the name
    first in alphabetical order, so the answer never depends on tensor order."""
    by_bytes: Counter[str] = Counter()
    for t in gf.tensors:
        if len(t.shape) >= 2:
            by_bytes[t.type.name] += t.n_bytes
    if not by_bytes:
        by_bytes.update({t.type.name: t.n_bytes for t in gf.tensors})
    return min(by_bytes, key=lambda name: (-by_bytes[name], name)) if by_bytes else "F32"


def gpu_memory_parts(gf: GGUFFile, cfg: Config, kv_tokens: int, max_batch: int = MAX_BATCH,
                     kv_type: str = "f16") -> dict[str, int]:  # fmt: skip
    """Bytes of GPU memory a model needs, by part: its weights, a KV cache of `kv_tokens` positions of `kv_type`
    ("f16" or "f32"), and the activation buffers of a step of `max_batch` tokens. A planning figure, not a
    promise."""
    # Weights: matrices stay in their file layout; norms and biases (1-D) are uploaded as f32.
    weights = sum(t.n_bytes if len(t.shape) >= 2 else 4 * t.n_elements for t in gf.tensors)
    # KV cache: K and V per layer, [kv_tokens][n_head_kv * head_dim] of kv_type (kv_cache.py).
    kv = 2 * cfg.n_layer * kv_tokens * cfg.kv_dim * kv_type_bytes(kv_type)
    # Activations: the step buffers of Transformer.__init__, all f32 —
    # x, xn, xs: n_embd; q, attn: q_dim; k, v: kv_dim; gate, up, h: n_ff; logits: n_vocab; ids + tok: 12 bytes;
    # split-KV attention's partial records (per token and head, one per chunk of a context: kv_tokens at most).
    b = max_batch
    acts = 4 * b * (3 * cfg.n_embd + 2 * cfg.q_dim + 2 * cfg.kv_dim + 3 * cfg.n_ff + cfg.n_vocab) + 12 * b
    acts += partials_bytes(b, cfg.n_head, cfg.head_dim, -(-kv_tokens // split_chunk(kv_tokens)))
    return {"weights": weights, "kv_cache": kv, "activations": acts}


def estimate_gpu_memory(gf: GGUFFile, cfg: Config, n_ctx: int) -> int:
    """Bytes of GPU memory a model needs at `n_ctx` tokens of context: a planning figure, not a promise."""
    return sum(gpu_memory_parts(gf, cfg, n_ctx).values())


def record_for(path: str | os.PathLike[str], *, id: str | None = None, url: str | None = None,
               draft_for: list[str] | None = None, base_models: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The registry record of a local GGUF file. `id` defaults to the file's stem, `url` to its name (resolved
    by the SDK against its model base URL); `draft_for`: the ids of the models it is a draft for; `base_models`
    (a LoRA adapter): the ids of the models it applies to. Raises GGUFError for a file realm_web cannot run."""
    name = os.path.basename(os.fspath(path))
    with open_gguf(path) as gf:
        if gf.metadata.get("general.type") == "adapter":
            ranks = [t.shape[1] for t in gf.tensors if t.name.endswith(".lora_a") and len(t.shape) == 2]
            return {
                "id": id or os.path.splitext(name)[0],
                "url": url or name,
                "sha256": sha256_file(path),
                "size": gf.file_size,
                "type": gf.metadata.get("adapter.type"),
                "architecture": gf.metadata.get("general.architecture"),
                "quant": main_quant(gf),
                "rank": max(ranks, default=0),
                "alpha": gf.metadata.get("adapter.lora.alpha", 0.0),
                "base_models": list(base_models or []),
            }
        cfg = Config.from_gguf(gf)
        record = {
            "id": id or os.path.splitext(name)[0],
            "url": url or name,
            "sha256": sha256_file(path),
            "size": gf.file_size,
            "architecture": cfg.arch,
            "quant": main_quant(gf),
            "context_length": cfg.n_ctx_train,
            "estimated_gpu_memory": estimate_gpu_memory(gf, cfg, cfg.n_ctx_train),
            "required_features": [],  # every kernel has a fallback without optional WebGPU features today
        }
        if draft_for:
            record["draft_for"] = list(draft_for)
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m realm_web.registry [FILE.gguf ...]`: the records (default: the bundled model's and its draft's)
    as a JSON list, as js/src/builtin-models.json holds them."""
    import json
    import sys

    from realm_web.cli import bundled_draft, bundled_lora, bundled_model

    paths = sys.argv[1:] if argv is None else argv
    if paths:
        records = [record_for(p) for p in paths]
    else:  # the built-in registry: the bundled model, its draft and its adapter
        target = record_for(bundled_model())
        records = [target, record_for(bundled_draft(), draft_for=[target["id"]]),
                   record_for(bundled_lora(), base_models=[target["id"]])]  # fmt: skip
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
