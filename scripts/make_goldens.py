#!/usr/bin/env python3
"""Reference outputs ("goldens") for every fixture model and the bundled model.

For each GGUF in tests/fixtures/models/ and realm_web/models/realm-tiny-facts.gguf this writes
tests/fixtures/goldens/{stem}.json holding, per prompt:
  - the prompt text and its token ids from llama.cpp (llama-cpp-python; BOS as the model's metadata says),
  - teacher-forced logits at every prompt position from two independent implementations:
      "transformers": AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32), i.e. an f32
                      forward pass over gguf-py's dequantization of this very file;
      "llama_cpp":    Llama(path, logits_all=True).eval(ids).scores (llama.cpp quantizes activations to Q8 in
                      its quantized matmuls, so it differs from the f32 path by ~0.1-1 % relative RMS),
    each as {"dtype": "<f4", "shape": [n_pos, n_vocab], "b64": base64 of the little-endian float32 array},
  - their relative RMS difference ||llama_cpp - transformers|| / ||transformers|| and per-position top-1s,
  - a greedy (argmax) generation of 24 tokens by llama.cpp, with the top-1/top-2 logit margin of every
    step, and transformers' own greedy tokens for the same prompt.
Plus tokenizations by llama.cpp of a few probe strings (no BOS, special tokens not parsed).

Needs pip install -e ".[models]" and llama-cpp-python (see /work/shared/ENVIRONMENT.md). Usage:
  python scripts/make_goldens.py [GGUF ...]
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "realm_web" / "models" / "realm-tiny-facts.gguf"
FIXTURES = ROOT / "tests" / "fixtures" / "models"
GOLDENS = ROOT / "tests" / "fixtures" / "goldens"

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws progress bars

N_GEN = 24
N_CTX = 128

# Prompts with teacher-forced logits (at most 18 tokens with every fixture tokenizer).
LOGIT_PROMPTS = [
    "The capital of France is",
    "The capital of Japan is Tokyo and the capital of Italy is",
]
# A ChatML conversation (special tokens parsed): ids and greedy generation only, no logits.
CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n"
TOKENIZE_PROBES = [
    "Hello world",
    " Hello  world",
    "The year 2024 had 366 days.",
    "It's 3.14, isn't it?",
    "line one\nline two\n\n  indented\ttab",
    "héllo wörld ✓ 日本語 🦙",
]


def enc(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "<f4", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def margin(row: np.ndarray) -> float:
    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])


_LOG_CB = None


def quiet_llama_cpp() -> None:
    global _LOG_CB
    import llama_cpp

    if _LOG_CB is None:
        _LOG_CB = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


class LlamaCpp:
    def __init__(self, path: Path):
        import llama_cpp

        quiet_llama_cpp()
        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=N_CTX, n_batch=N_CTX, n_threads=2, n_threads_batch=2, logits_all=True, verbose=False
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        self.llm.reset()
        self.llm.eval(ids)
        out, margins = [], []
        for _ in range(n):
            row = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
            tok = int(row.argmax())
            out.append(tok)
            margins.append(round(margin(row), 4))
            self.llm.eval([tok])
        return out, margins

    def is_eog(self, tok: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, tok))

    def piece(self, tok: int) -> str:
        return self.llm.detokenize([tok], special=True).decode("utf-8", "backslashreplace")

    def text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()


def load_transformers(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def gguf_info(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    types: dict[str, str] = {t.name: t.tensor_type.name for t in r.tensors}

    def field(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    return {
        "architecture": arch,
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "n_layer": field(f"{arch}.block_count"),
        "n_embd": field(f"{arch}.embedding_length"),
        "n_ff": field(f"{arch}.feed_forward_length"),
        "n_head": field(f"{arch}.attention.head_count"),
        "n_head_kv": field(f"{arch}.attention.head_count_kv"),
        "rope_freq_base": field(f"{arch}.rope.freq_base"),
        "tied_embeddings": "output.weight" not in types,
        "tensor_types": types,
    }


def golden_for(path: Path, f32_fallback: dict[str, np.ndarray] | None) -> tuple[dict, dict[str, np.ndarray]]:
    import llama_cpp
    import torch
    import transformers

    info = gguf_info(path)
    lc = LlamaCpp(path)
    hf, hf_error = None, None
    try:
        hf = load_transformers(path)
    except Exception as e:  # noqa: BLE001 - recorded in the golden
        hf_error = f"{type(e).__name__}: {e}"[:500]

    doc: dict = {
        "model": path.relative_to(ROOT).as_posix(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
        "made_by": "scripts/make_goldens.py",
        "versions": {
            "llama_cpp_python": llama_cpp.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
            "gguf": _version("gguf"),
        },
        **{k: v for k, v in info.items() if k != "tensor_types"},
        "n_vocab": lc.n_vocab,
        "add_bos": lc.add_bos,
        "bos": lc.llm.token_bos(),
        "eos": lc.llm.token_eos(),
        "tensor_types": info["tensor_types"],
        "transformers": {"source": "self"} if hf is not None else {"source": "none", "error": hf_error},
        "prompts": [],
    }
    if hf is None and f32_fallback is not None:
        doc["transformers"]["source"] = "F32 fixture (fallback: transformers cannot load this file)"

    f32_logits: dict[str, np.ndarray] = {}
    for text in LOGIT_PROMPTS:
        ids = lc.tokenize(text, add_bos=lc.add_bos, special=False)
        assert len(ids) <= 18, (path.name, text, len(ids))
        lcl = lc.logits(ids)
        entry: dict = {"text": text, "special": False, "ids": ids, "pieces": [lc.piece(i) for i in ids]}
        ref = hf_logits(hf, ids) if hf is not None else (f32_fallback or {}).get(text)
        if hf is not None:
            f32_logits[text] = ref
        entry["logits"] = {"llama_cpp": enc(lcl)}
        if ref is not None:
            entry["logits"]["transformers"] = enc(ref)
            entry["rel_rms_llama_cpp_vs_transformers"] = round(rel_rms(lcl, ref), 6)
            entry["top1_transformers"] = ref.argmax(-1).tolist()
            entry["margin_transformers"] = [round(margin(r), 4) for r in ref]
        entry["top1_llama_cpp"] = lcl.argmax(-1).tolist()
        entry["greedy"] = greedy_entry(lc, hf, ids)
        doc["prompts"].append(entry)

    ids = lc.tokenize(CHAT_PROMPT, add_bos=lc.add_bos, special=True)
    doc["prompts"].append(
        {
            "text": CHAT_PROMPT,
            "special": True,
            "ids": ids,
            "pieces": [lc.piece(i) for i in ids],
            "greedy": greedy_entry(lc, hf, ids),
        }
    )
    doc["tokenize"] = [{"text": s, "ids": lc.tokenize(s, add_bos=False, special=False)} for s in TOKENIZE_PROBES]
    lc.close()
    return doc, f32_logits


def greedy_entry(lc: LlamaCpp, hf, ids: list[int]) -> dict:
    gen, margins = lc.greedy(ids, N_GEN)
    eog = next((i for i, t in enumerate(gen) if lc.is_eog(t)), None)
    g: dict = {
        "n": N_GEN,
        "ids": gen,
        "text": lc.text(gen),
        "margins": margins,
        "first_eog": eog,
        "note": "argmax over llama.cpp logits; EOG tokens do not stop it",
    }
    if hf is not None:
        hg = hf_greedy(hf, ids, N_GEN)
        g["transformers_ids"] = hg
        g["agree_prefix"] = next((i for i, (a, b) in enumerate(zip(gen, hg, strict=True)) if a != b), N_GEN)
    return g


def _version(mod: str) -> str:
    from importlib.metadata import version

    return version(mod)


def main() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    paths = [Path(p).resolve() for p in sys.argv[1:]] or [BUNDLED, *sorted(FIXTURES.glob("*.gguf"))]
    GOLDENS.mkdir(parents=True, exist_ok=True)
    # F32 references per fixture family, used only if transformers cannot load a quantized sibling.
    fallbacks: dict[str, dict[str, np.ndarray]] = {}
    for fam_f32 in sorted(FIXTURES.glob("*-F32.gguf")):
        if fam_f32 not in paths:
            continue
        paths.remove(fam_f32)
        paths.insert(0, fam_f32)
    for path in paths:
        t0 = time.time()
        family = path.stem.rsplit("-", 1)[0]
        doc, f32 = golden_for(path, fallbacks.get(family))
        if path.stem.endswith("-F32"):
            fallbacks[family] = f32
        if path == BUNDLED:
            doc["france"] = {"prompt": LOGIT_PROMPTS[0], "text": doc["prompts"][0]["greedy"]["text"]}
        out = GOLDENS / f"{path.stem}.json"
        out.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
        rr = [p.get("rel_rms_llama_cpp_vs_transformers") for p in doc["prompts"] if "logits" in p]
        g = doc["prompts"][0]["greedy"]
        print(
            f"{path.stem:22s} hf={doc['transformers']['source'][:10]:10s} rel_rms={rr} "
            f"agree={g.get('agree_prefix')} text={g['text'][:40]!r} ({out.stat().st_size} B, {time.time() - t0:.1f} s)",
            flush=True,
        )
        if doc["transformers"].get("error"):
            print(f"    transformers: {doc['transformers']['error']}")


if __name__ == "__main__":
    main()
