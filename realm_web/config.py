"""The model's hyperparameters, read from `{arch}.*` GGUF metadata in one place (names as llama.cpp's
src/llama-arch.cpp LLM_KV_* keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realm_web.errors import GGUFError

# Architectures this runtime runs, and their RoPE ordering (llama.cpp's llama_model_rope_type): llama's GGUF
# converter permutes Q/K so the interleaved ("normal") rotation applies; qwen2 keeps HF's NeoX halves.
ARCHITECTURES = {"llama": False, "qwen2": True}  # arch -> NeoX RoPE


@dataclass(frozen=True)
class Config:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    n_rot: int
    rope_neox: bool
    tied_output: bool  # no output.weight: the output head is token_embd

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    @classmethod
    def from_gguf(cls, gf: Any) -> Config:
        md = gf.metadata
        arch = md.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise GGUFError(f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")

        def get(key: str, default: Any = None) -> Any:
            v = md.get(f"{arch}.{key}", default)
            if v is None:
                raise GGUFError(f"missing metadata key {arch}.{key}")
            return v

        n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        names = {t.name for t in gf.tensors}
        if "rope_freqs.weight" in names:  # Llama 3.1's per-frequency RoPE factors: ignoring them is wrong
            raise GGUFError("per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) are not supported yet")
        emb = gf.tensor("token_embd.weight")
        n_vocab = emb.shape[1] if len(emb.shape) > 1 else 0
        freq_scale = 1.0
        scaling = md.get(f"{arch}.rope.scaling.type")
        if scaling == "linear":
            freq_scale = 1.0 / float(get("rope.scaling.factor"))
        elif scaling not in (None, "none"):
            raise GGUFError(f"RoPE scaling {scaling!r} is not supported (linear only)")
        elif f"{arch}.rope.scale_linear" in md:  # older files
            freq_scale = 1.0 / float(md[f"{arch}.rope.scale_linear"])
        cfg = cls(
            arch=arch,
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=int(get("block_count")),
            n_head=n_head,
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_ff=int(get("feed_forward_length")),
            n_ctx_train=int(get("context_length")),
            rms_eps=float(get("attention.layer_norm_rms_epsilon")),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rope_freq_scale=freq_scale,
            n_rot=int(get("rope.dimension_count", head_dim)),
            rope_neox=ARCHITECTURES[arch],
            tied_output="output.weight" not in names,
        )
        if cfg.n_head % cfg.n_head_kv or emb.shape[0] != n_embd:
            raise GGUFError(f"inconsistent shapes: {n_head} heads / {cfg.n_head_kv} KV heads, embedding {emb.shape}")
        return cfg
