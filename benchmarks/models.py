"""Benchmark models of realistic shape, made on demand (never committed, no download).

Llama-architecture GGUFs with random weights in llama.cpp's tensor layout and quant mixes:

    125m: n_embd 768, 12 layers, 12 heads (4 KV heads), n_ff 2048, vocab 32000        ~134M parameters
    1b:   TinyLlama-1.1B's shape: n_embd 2048, 22 layers, 32 heads (4 KV), n_ff 5632    ~1.10B parameters
    8b:   Llama-3-8B's shape: n_embd 4096, 32 layers, 32 heads (8 KV), n_ff 14336, vocab 128256   ~8.03B
          parameters (Q4_K_M: ~4.6 GiB, more than wasm32's 4 GiB; `pytest -m large` and benchmarks/large.py)

    q4_k_m: llama.cpp's Q4_K_M mix (Q4_K everywhere; Q6_K for output.weight and, by llama.cpp's
            use_more_bits rule, attn_v and ffn_down of the first and last eighth and every third layer between)
    q8_0:   Q8_0 for every matrix

Quantized blocks are random bytes with small finite f16 scales, i.e. valid blocks whose weights have a
plausible spread (std ~0.02-0.1), so activations stay finite through every layer. The vocabulary is a
synthetic SentencePiece ("llama") one of 32000 pieces (128256 for 8b) with byte fallback, so llama.cpp, wllama
and realm_web all tokenize and detokenize it. Tensors are generated and written one at a time (host memory stays
near the largest tensor, whatever the model size). Files go to build/bench-models/ (git ignores build/):

    .venv/bin/python benchmarks/models.py [--sizes 125m,1b] [--types q4_k_m,q8_0] [--out DIR]
"""

from __future__ import annotations

import argparse
import string
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realm_web.bench import random_weight_bytes  # noqa: E402

OUT = ROOT / "build" / "bench-models"
N_VOCAB = 32000


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int = N_VOCAB
    n_ctx: int = 2048

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def matrices(self) -> list[tuple[str, int, int, int]]:
        """(name, layer or -1, n_rows, row elements) of every 2-D weight, in llama.cpp's order."""
        kv = self.n_head_kv * self.head_dim
        out = [("token_embd.weight", -1, self.n_vocab, self.n_embd)]
        for i in range(self.n_layer):
            p = f"blk.{i}."
            for name, n_rows, k in (("attn_q", self.n_embd, self.n_embd), ("attn_k", kv, self.n_embd),
                                    ("attn_v", kv, self.n_embd), ("attn_output", self.n_embd, self.n_embd),
                                    ("ffn_gate", self.n_ff, self.n_embd), ("ffn_up", self.n_ff, self.n_embd),
                                    ("ffn_down", self.n_embd, self.n_ff)):  # fmt: skip
                out.append((p + name + ".weight", i, n_rows, k))
        return out + [("output.weight", -1, self.n_vocab, self.n_embd)]

    @property
    def n_params(self) -> int:
        return sum(r * k for _, _, r, k in self.matrices()) + (2 * self.n_layer + 1) * self.n_embd


SHAPES = {
    "125m": Shape(n_embd=768, n_layer=12, n_head=12, n_head_kv=4, n_ff=2048),
    "1b": Shape(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632),
    "8b": Shape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, n_ctx=8192),
}
FILE_TYPES = {"q4_k_m": 15, "q8_0": 7}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q4_K_M, LLAMA_FTYPE_MOSTLY_Q8_0

# f16 scale ranges per block type: normal halves (≥ 6.1e-5) giving weights of std ~0.02-0.1
SCALES = {"Q4_K": (1.0e-4, 2.0e-4), "Q6_K": (6.2e-5, 1.2e-4), "Q8_0": (1.0e-4, 3.0e-4)}


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp (llama-quant.cpp): layers whose attn_v / ffn_down get more bits in the *_M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(mix: str, name: str, layer: int, n_layer: int) -> str:
    """The GGML type llama.cpp's quantizer gives tensor `name` in `mix`."""
    if mix == "q8_0":
        return "Q8_0"
    if name == "output.weight":
        return "Q6_K"
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and _use_more_bits(layer, n_layer):
        return "Q6_K"
    return "Q4_K"


def spm_vocab(n: int = N_VOCAB) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: <unk> <s> </s>, 256 byte-fallback tokens, then word pieces (with and
    without the ▁ word marker) of growing length. Scores favour earlier (shorter) pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    lower = string.ascii_lowercase
    pieces = ["▁"] + list(chars) + ["▁" + c for c in chars]
    pieces += [a + b for a in lower for b in lower] + ["▁" + a + b for a in lower for b in lower]
    pieces += ["▁" + a + b + c for a in lower for b in lower for c in lower]
    pieces += [a + b + c for a in lower for b in lower for c in lower]
    if len(tokens) + len(pieces) < n:  # large vocabularies (Llama 3's 128256): four-letter word pieces too
        pieces += ["▁" + a + b + c + d for a in lower for b in lower for c in lower for d in lower]
    tokens += pieces[: n - len(tokens)]
    types += [1] * (len(tokens) - len(types))
    if len(tokens) < n:
        raise ValueError(f"the synthetic vocabulary has only {len(tokens)} pieces")
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return tokens, scores, types


def make_model(size: str | Shape, mix: str, path: Path, seed: int = 0) -> Path:
    """Write a benchmark GGUF of shape `size` (a SHAPES key or a Shape) and quant mix `mix` to `path`."""
    import gguf
    import numpy as np

    s = SHAPES[size] if isinstance(size, str) else size
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"realm-bench-{size if isinstance(size, str) else 'custom'}-{mix}")
    w.add_file_type(FILE_TYPES[mix])
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.n_vocab)
    tokens, scores, types = spm_vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    rng = np.random.default_rng(seed)
    norm = (1.0 + 0.1 * rng.standard_normal(s.n_embd)).astype(np.float32)
    # the layout first (names, shapes, types, sizes), then each tensor's data made and written in turn
    plan: list[tuple[str, object]] = []
    for n, (name, layer, n_rows, k) in enumerate(s.matrices()):
        t = gguf.GGMLQuantizationType[tensor_type(mix, name, layer, s.n_layer)]
        row_bytes = k // gguf.GGML_QUANT_SIZES[t][0] * gguf.GGML_QUANT_SIZES[t][1]
        w.add_tensor_info(name, (n_rows, row_bytes), np.dtype(np.uint8), n_rows * row_bytes, raw_dtype=t)
        plan.append((name, (t.name, n_rows, k, seed * 1000 + n)))
        for norm_name, after in (("attn_norm", "attn_output.weight"), ("ffn_norm", "ffn_down.weight")):
            if name.endswith(after):
                w.add_tensor_info(f"blk.{layer}.{norm_name}.weight", norm.shape, norm.dtype, norm.nbytes)
                plan.append((norm_name, norm))
    w.add_tensor_info("output_norm.weight", norm.shape, norm.dtype, norm.nbytes)
    plan.append(("output_norm", norm))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, what in plan:
        if isinstance(what, tuple):
            t, n_rows, k, tseed = what
            what = np.frombuffer(random_weight_bytes(t, n_rows, k, seed=tseed, scale=SCALES[t]), np.uint8)
        w.write_tensor_data(what)
    w.close()
    return path


def ensure_models(sizes=("125m", "1b"), mixes=("q4_k_m", "q8_0"), out: Path = OUT, log=print) -> list[Path]:
    """The benchmark GGUFs, made where missing (a few seconds to a minute each)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for size in sizes:
        for mix in mixes:
            path = out / f"realm-bench-{size}-{mix}.gguf"
            if not path.exists():
                log(f"making {path.name} ({SHAPES[size].n_params / 1e6:.0f}M parameters, {mix})")
                tmp = path.with_suffix(".part")
                make_model(size, mix, tmp)
                tmp.rename(path)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="125m,1b")
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    for p in ensure_models(a.sizes.split(","), a.types.split(","), a.out):
        print(f"{p}  {p.stat().st_size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
