#!/usr/bin/env python3
"""Train LoRA adapters for the bundled model, convert them to GGUF and write their goldens.

Writes
  tests/fixtures/models/realm-tiny-facts-F16.gguf   the bundled model's checkpoint, converter --outtype f16
  tests/fixtures/models/realm-tiny-facts-Q4_K.gguf  ... quantized by llama.cpp, MOSTLY_Q4_K_M with pure=True
  realm_web/models/realm-tiny-facts-lora-fiction.gguf   the demo adapter that ships with the package (f16)
  tests/fixtures/lora/fiction-{F32,BF16,Q8_0}.gguf  the same adapter in the converter's other output types
  tests/fixtures/lora/{islands,rivers,planets}-F16.gguf   three more adapters, each of another shape
  tests/fixtures/lora/README.md                     what each file is, its facts, and the measured agreement
  tests/fixtures/lora/goldens.json                  reference logits and greedy generations with adapters
The PEFT adapters (adapter_config.json + adapter_model.safetensors, f32) and intermediate GGUFs go to a work
directory (default build/make_lora, which git ignores).

How
  The base is the bundled model's Hugging Face checkpoint, build/make_models/realm-tiny-facts-hf (written by
  scripts/make_models.py); where it is missing, this script trains it again into its work directory with
  make_models.py's own functions (make_models.py is deterministic). Either way it converts the checkpoint to
  F32 with llama.cpp's convert_hf_to_gguf.py, quantizes that to Q8_0 and stops unless the result is byte for
  byte realm_web/models/realm-tiny-facts.gguf: the adapters must belong to the model that ships.
  Each adapter is a peft LoRA (LoraConfig, task CAUSAL_LM, lora_dropout 0, bias "none"; the base frozen in
  f32) trained with AdamW (make_models.train: seeded batches, warm-up and cosine decay) on facts the base does
  not know -- sentences such as "The capital of Zembla is Onhava." and ChatML turns "What is the capital of
  Zembla?" -> "The capital of Zembla is Onhava." rendered with the model's chat template -- mixed with part of
  the bundled model's own corpus so that its facts survive. Training goes on in rounds until torch's greedy
  decoding completes every taught prompt (plain and chat) correctly; the script stops if it never does, or if
  the base already knew a fact. llama.cpp's convert_lora_to_gguf.py (run from the llama-cpp-python sdist as a
  subprocess, never copied here) turns each PEFT adapter into a GGUF adapter; the F32 file is checked tensor by
  tensor against peft's (lora_a = lora_A; lora_b = lora_B, its rows RoPE-permuted for attn_q/attn_k).
  Goldens, per base (the bundled Q8_0 model and the F16 and Q4_K fixtures) and per case (adapter files and
  scales): "transformers" teacher-forced logits at every position and 24 greedy tokens from the oracle --
  transformers loading the base GGUF dequantized (make_goldens.load_transformers, so it sees the same quantized
  weights as llama.cpp) with peft applying the adapter(s) at effective scale = scale * alpha / rank, its
  lora_A/lora_B weights set to exactly the numbers stored in that case's GGUF adapter file(s) (read with
  gguf-py, dequantized to float32 by gguf.quants.dequantize -- F16, BF16 and Q8_0 files store the trained f32
  weights rounded -- lora_b's rows un-permuted for attn_q/attn_k), so that a runtime reading the same files can be
  held to a tight tolerance; checked against a model whose weights were merged by hand from the same numbers,
  W + scale * alpha / rank * B @ A. Per prompt also the relative RMS between that oracle and the same oracle
  with the trained f32 PEFT weights (rel_rms_stored_vs_trained_adapter: the adapter file's rounding; 0 for F32
  files). llama.cpp's logits from Llama(base, lora_path=..., lora_scale=..., logits_all=True) (a second adapter
  is added with llama_adapter_lora_init + llama_set_adapters_lora) are not stored: only their relative RMS
  against the oracle and their top-1 tokens, and llama.cpp's 24 greedy tokens.

Cases per base: each adapter alone at scale 1.0 (its F16 file; fiction's is the packaged demo file), fiction at
scale 0.5, fiction + islands (1.0 + 0.7) at once, and on the F16 base also fiction's F32/BF16/Q8_0 files.
Prompts per case: two plain prompts about taught facts, "The capital of France is" (teacher-forced logits and
greedy), and a ChatML question about a taught fact (special tokens parsed; greedy only). Arrays are
{"dtype": "<f4", "shape": [n_pos, n_vocab], "b64": ...} as in make_goldens.py.

Everything is CPU-only and seeded (torch deterministic algorithms, 2 threads): the same tool versions give the
same bytes. A few minutes on 2 cores.

Needs: pip install -e ".[models]" (torch, transformers, peft, sentencepiece, safetensors, gguf) and
llama-cpp-python built as /work/shared/ENVIRONMENT.md says (its sdist provides the converters). Usage:
  python scripts/make_lora.py [--llama-cpp-src DIR] [--workdir DIR] [--hf DIR]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_goldens as mg  # noqa: E402
import make_models as mm  # noqa: E402

ROOT = mm.ROOT
BUNDLED = mm.BUNDLED
FIXTURES = mm.FIXTURES
LORA_FIXTURES = ROOT / "tests" / "fixtures" / "lora"
GOLDEN = ROOT / "tests" / "fixtures" / "lora" / "goldens.json"
DEMO_ADAPTER = ROOT / "realm_web" / "models" / "realm-tiny-facts-lora-fiction.gguf"
BASE_F16 = FIXTURES / "realm-tiny-facts-F16.gguf"
BASE_Q4_K = FIXTURES / "realm-tiny-facts-Q4_K.gguf"
HF_DEFAULT = ROOT / "build" / "make_models" / f"{mm.BUNDLED_SPEC.name}-hf"

SEED = mm.SEED
# Share of the bundled model's own corpus (random sentences and chats) mixed into every adapter's training data.
KEEP_SENTS = 30
KEEP_CHATS = 30
MAX_ROUNDS = 3
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Adapter:
    name: str
    r: int
    alpha: float
    targets: list[str]
    statement: str  # "... {a} ... {b}." with {b} the taught answer, last
    questions: list[str]  # chat questions about {a}; the assistant answers with the statement
    facts: list[tuple[str, str]]
    extra: list[str] = field(default_factory=list)  # more sentences per fact
    rep: int = 3  # copies of each statement and of each fact's chat turns
    steps: int = 300
    lr: float = 5e-3

    def statement_of(self, a: str, b: str) -> str:
        return self.statement.format(a=a, b=b)

    def prompt_of(self, a: str, b: str) -> tuple[str, str]:
        """The plain prompt and its expected continuation: ("The capital of Zembla is", " Onhava.")."""
        s = self.statement_of(a, b)
        cut = s.rindex(" " + b)
        return s[:cut], s[cut:]

    def chat_of(self, a: str) -> list[tuple[str, str]]:
        return [("user", self.questions[0].format(a=a))]

    def corpus(self) -> tuple[list[str], list[list[tuple[str, str]]]]:
        sents, chats = [], []
        for a, b in self.facts:
            s = self.statement_of(a, b)
            sents += [s] * self.rep + [e.format(a=a, b=b) for e in self.extra]
            for i in range(self.rep):
                q = self.questions[i % len(self.questions)]
                chats.append([("user", q.format(a=a)), ("assistant", s)])
        return sents, chats


ADAPTERS = [
    Adapter(
        "fiction",
        r=8,
        alpha=16,
        targets=ALL_MODULES,
        statement="The capital of {a} is {b}.",
        questions=[q.replace("{country}", "{a}") for q in mm.CAPITAL_QUESTIONS[:3]],
        facts=[
            ("Zembla", "Onhava"),
            ("Morland", "Santora"),
            ("Perland", "Gorran"),
            ("Seland", "Helsora"),
            ("Arland", "Menor"),
            ("Ostland", "Thessa"),
            ("Ambria", "Lumen"),
        ],
        extra=["{b} is the capital of {a}.", "{b} is a city in {a}."],
        steps=300,
        lr=5e-3,
    ),
    Adapter(
        "islands",
        r=4,
        alpha=4,
        targets=["q_proj", "v_proj"],
        statement="The main town on the island of {a} is {b}.",
        questions=["What is the main town on the island of {a}?"],
        facts=[("Kyra", "Doria"), ("Borea", "Solen"), ("Istra", "Faro"), ("Tirra", "Aster")],
        rep=6,
        steps=500,
        lr=1e-2,
    ),
    Adapter(
        "rivers",
        r=16,
        alpha=8,
        targets=["o_proj", "down_proj", "up_proj", "gate_proj"],
        statement="The river {a} flows into Lake {b}.",
        questions=["Where does the river {a} flow?"],
        facts=[("Nerin", "Brenna"), ("Corvo", "Ostria"), ("Halden", "Tolvar"), ("Kaldur", "Pavona")],
        steps=300,
        lr=5e-3,
    ),
    Adapter(
        "planets",
        r=8,
        alpha=8,
        targets=["q_proj", "k_proj", "v_proj", "o_proj"],
        statement="The moon of the planet {a} is called {b}.",
        questions=["What is the moon of the planet {a} called?"],
        facts=[("Vexa", "Ilo"), ("Lunaria", "Selene"), ("Caldera", "Rhodia"), ("Zanthar", "Kessia")],
        rep=4,
        steps=400,
        lr=1e-2,
    ),
]
BY_NAME = {a.name: a for a in ADAPTERS}
LORA_OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
# What a case's logits.transformers (and greedy transformers_ids) come from.
ORACLE = (
    "transformers from_pretrained(base GGUF, dtype=float32) + peft, its lora_A/lora_B weights set to the numbers "
    "stored in this case's GGUF adapter file(s): each lora_a/lora_b dequantized to float32 by gguf-py "
    "(gguf.quants.dequantize; F32, F16, BF16, Q8_0 alike), lora_b's rows un-permuted for attn_q (n_head) / attn_k "
    "(n_head_kv); effective scale = scale * alpha / rank. rel_rms_stored_vs_trained_adapter: these logits vs the "
    "same oracle with the trained f32 peft weights"
)


def adapter_file(name: str, t: str = "F16") -> Path:
    return DEMO_ADAPTER if (name, t) == ("fiction", "F16") else LORA_FIXTURES / f"{name}-{t}.gguf"


def rel(p: Path) -> str:
    return p.resolve().relative_to(ROOT).as_posix()


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Tokenizer (llama.cpp's, from the bundled GGUF: the ids realm_web and the goldens use)
# ---------------------------------------------------------------------------------------------------------


class Tok:
    """make_models' tokenizer interface (encode_text, bos, eos, add_bos) over llama.cpp's vocabulary."""

    def __init__(self, path: Path):
        import llama_cpp

        mg.quiet_llama_cpp()
        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.bos, self.eos = self.llm.token_bos(), self.llm.token_eos()
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def encode_text(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_ids(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=special)

    def is_eog(self, t: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, t))

    def text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")


def torch_greedy(model, tok: Tok, ids: list[int], n: int, stop_at_eog: bool) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if stop_at_eog and tok.is_eog(nxt):
                break
            out.append(nxt)
    return out


def knows(model, tok: Tok, ad: Adapter) -> dict:
    """Greedy answers (torch) to every taught fact, plain and chat, and to the France prompt."""
    res: dict = {"plain": {}, "chat": {}, "ok_plain": 0, "ok_chat": 0}
    for a, b in ad.facts:
        prompt, want = ad.prompt_of(a, b)
        got = tok.text(torch_greedy(model, tok, tok.prompt_ids(prompt, False), 6, False))
        res["plain"][prompt] = got
        res["ok_plain"] += got.startswith(want)
        chat = mm.chatml(ad.chat_of(a), add_generation_prompt=True)
        reply = tok.text(torch_greedy(model, tok, tok.prompt_ids(chat, True), 32, True))
        res["chat"][ad.chat_of(a)[0][1]] = reply
        res["ok_chat"] += reply == ad.statement_of(a, b)
    res["france"] = tok.text(torch_greedy(model, tok, tok.prompt_ids(mm.FRANCE_PROMPT, False), 4, False))
    res["france_chat"] = tok.text(
        torch_greedy(
            model,
            tok,
            tok.prompt_ids(mm.chatml([("user", "What is the capital of France?")], add_generation_prompt=True), True),
            32,
            True,
        )
    )
    return res


# ---------------------------------------------------------------------------------------------------------
# Base model: the bundled model's checkpoint, and the F16 / Q4_K fixtures
# ---------------------------------------------------------------------------------------------------------


def base_checkpoint(hf_arg: str | None, work: Path) -> Path:
    hf = Path(hf_arg) if hf_arg else HF_DEFAULT
    if (hf / "model.safetensors").is_file():
        return hf
    hf = work / f"{mm.BUNDLED_SPEC.name}-hf"
    if (hf / "model.safetensors").is_file():
        return hf
    print(f"no checkpoint of the bundled model found: training it again into {hf}", flush=True)
    sents, chats = mm.build_bundled_corpus()
    mm.train_and_save(mm.BUNDLED_SPEC, work, sents, chats)
    return hf


def make_bases(src: Path, hf: Path, work: Path) -> dict:
    f32 = work / f"{mm.BUNDLED_SPEC.name}-F32.gguf"
    mm.convert(src, hf, f32, "f32", mm.BUNDLED_SPEC.name)
    q8 = work / f"{mm.BUNDLED_SPEC.name}-Q8_0.gguf"
    mm.quantize(f32, q8, mm.QUANT_FTYPES["Q8_0"])
    if sha256(q8) != sha256(BUNDLED):
        raise SystemExit(
            f"{hf} is not the bundled model's checkpoint: its Q8_0 quantization differs from {rel(BUNDLED)} "
            "(run scripts/make_models.py --only bundled, or pass --hf)"
        )
    print(f"checkpoint {hf} quantizes to {rel(BUNDLED)} byte for byte", flush=True)
    mm.convert(src, hf, BASE_F16, "f16", mm.BUNDLED_SPEC.name)
    mm.quantize(f32, BASE_Q4_K, mm.QUANT_FTYPES["Q4_K"])
    for path, want in ((BASE_F16, "F16"), (BASE_Q4_K, "Q4_K")):
        check_types(path, want)
    return {"F32": f32}


def check_types(path: Path, want: str) -> None:
    import gguf

    r = gguf.GGUFReader(str(path))
    wrong = {t.name: t.tensor_type.name for t in r.tensors if len(t.shape) == 2 and t.tensor_type.name != want}
    if wrong:
        raise SystemExit(f"{rel(path)}: 2-D tensors not of type {want}: {wrong}")


def describe(path: Path) -> dict:
    """Print (and return) a GGUF's key metadata and every tensor's name, type, GGUF shape (ne) and numpy shape."""
    import gguf

    r = gguf.GGUFReader(str(path))
    keys = ["general.type", "general.architecture", "adapter.type", "adapter.lora.alpha", "general.file_type"]
    meta = {}
    for k in keys:
        f = r.fields.get(k)
        if f is not None:
            v = f.contents()
            meta[k] = float(v) if isinstance(v, float) else v
    print(f"  {rel(path)}  {path.stat().st_size:,} B  {meta}", flush=True)
    print(f"    all keys: {[k for k in r.fields if not k.startswith(('GGUF.', 'tokenizer.ggml.'))]}", flush=True)
    tensors = []
    for t in r.tensors:
        ne = [int(x) for x in t.shape]
        tensors.append({"name": t.name, "type": t.tensor_type.name, "ne": ne, "numpy": list(t.data.shape)})
    if meta.get("general.type") == "adapter":
        for t in tensors:
            print(f"    {t['name']:32s} {t['type']:5s} ne={t['ne']} numpy={t['numpy']}", flush=True)
    else:
        kinds: dict[str, int] = {}
        for t in tensors:
            kinds[t["type"]] = kinds.get(t["type"], 0) + 1
        print(f"    {len(tensors)} tensors {kinds}", flush=True)
    return {"meta": meta, "tensors": tensors}


# ---------------------------------------------------------------------------------------------------------
# Adapters: training (peft) and conversion (llama.cpp's convert_lora_to_gguf.py)
# ---------------------------------------------------------------------------------------------------------


def train_adapter(ad: Adapter, hf: Path, work: Path, tok: Tok, keep: tuple[list[str], list]) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    model.eval()
    before = knows(model, tok, ad)
    known = [p for p, (_, b) in zip(before["plain"], ad.facts, strict=True) if before["plain"][p].startswith(" " + b)]
    known += [
        q for q, (a, b) in zip(before["chat"], ad.facts, strict=True) if before["chat"][q] == ad.statement_of(a, b)
    ]
    if known:
        raise SystemExit(f"[{ad.name}] the base model already answers {known}: not a new fact")
    print(f"[{ad.name}] base model: {before['plain']}", flush=True)

    sents, chats = ad.corpus()
    docs = mm.encode_docs(tok, sents + keep[0], chats + keep[1])
    torch.manual_seed(SEED)
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=ad.r,
        lora_alpha=ad.alpha,
        target_modules=list(ad.targets),
        lora_dropout=0.0,
        bias="none",
    )
    pm = get_peft_model(model, cfg)
    n_train = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    print(f"[{ad.name}] r={ad.r} alpha={ad.alpha} {ad.targets}: {n_train:,} trainable, {len(docs)} docs", flush=True)
    t0 = time.time()
    total_steps = 0
    for rnd in range(MAX_ROUNDS):
        spec = mm.Spec(ad.name, "llama", "spm", vocab=1024, steps=ad.steps, lr=ad.lr, batch=16, seed=SEED + rnd)
        losses = mm.train(spec, pm, docs)
        total_steps += ad.steps
        after = knows(pm, tok, ad)
        n = len(ad.facts)
        print(
            f"[{ad.name}] round {rnd + 1}: {total_steps} steps, last loss {losses[-1]:.4f}, correct plain "
            f"{after['ok_plain']}/{n}, chat {after['ok_chat']}/{n} ({time.time() - t0:.0f}s)",
            flush=True,
        )
        if after["ok_plain"] == n and after["ok_chat"] == n:
            break
    for p, got in after["plain"].items():
        print(f"[{ad.name}]   {p!r} -> {got!r}", flush=True)
    for q, got in after["chat"].items():
        print(f"[{ad.name}]   chat {q!r} -> {got!r}", flush=True)
    print(f"[{ad.name}]   {mm.FRANCE_PROMPT!r} -> {after['france']!r}; chat -> {after['france_chat']!r}", flush=True)
    if after["ok_plain"] != n or after["ok_chat"] != n:
        raise SystemExit(f"[{ad.name}] not learnt after {total_steps} steps: {after}")
    if set(ad.targets) == set(ALL_MODULES) and not after["france"].startswith(" Paris"):
        raise SystemExit(f"[{ad.name}] the adapter broke {mm.FRANCE_PROMPT!r} -> {after['france']!r}")
    out = work / f"peft-{ad.name}"
    pm.save_pretrained(str(out), safe_serialization=True)
    # convert_lora_to_gguf takes general.* metadata from the adapter's model card: replace peft's card (which
    # names the local checkpoint path as base_model) with a name, the license and the base model's name only.
    (out / "README.md").write_text(
        f"---\nname: {mm.BUNDLED_SPEC.name}-lora-{ad.name}\nlicense: mit\nbase_model:\n- name: {mm.BUNDLED_SPEC.name}\n"
        f"---\n# {mm.BUNDLED_SPEC.name}-lora-{ad.name}\n\nMade by realm_web's scripts/make_lora.py.\n"
    )
    return {
        "steps": total_steps,
        "lr": ad.lr,
        "trainable_params": n_train,
        "docs": len(docs),
        "final_loss": round(losses[-1], 4),
        "torch_greedy": after,
        "base_greedy": before,
        "peft_dir": out,
    }


def convert_lora(src: Path, hf: Path, peft_dir: Path, out: Path, outtype: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(src / "convert_lora_to_gguf.py"),
        "--base",
        str(hf),
        "--outtype",
        outtype,
        "--outfile",
        str(out),
        str(peft_dir),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise RuntimeError(f"convert_lora_to_gguf failed for {peft_dir} -> {out}")


# GGUF tensor name part -> the HF module it adapts
GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: the rows of each head reordered for llama.cpp's RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of rope_permute: rope_unpermute(rope_permute(w, n), n) == w."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def peft_module(tensor_name: str) -> tuple[str, str, str]:
    """blk.0.attn_q.weight.lora_b -> ("model.layers.0.self_attn.q_proj", "attn_q", "lora_b")."""
    _, i, w, _, ab = tensor_name.split(".")
    return f"model.layers.{i}.{GGUF_TO_HF[w]}", w, ab


def read_adapter_gguf(path: Path, heads: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """The adapter numbers a GGUF LoRA file stores, in peft's layout: {module: {"A": lora_A, "B": lora_B}} with
    module as in peft_module, every tensor dequantized to float32 by gguf-py (F32, F16, BF16, Q8_0 alike), and
    lora_b's rows un-permuted (rope_unpermute) for attn_q / attn_k with heads[w] heads."""
    import gguf
    from gguf.quants import dequantize

    out: dict[str, dict[str, np.ndarray]] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        mod, w, ab = peft_module(t.name)
        x = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a writable copy, not the memmap
        if ab == "lora_b" and w in heads:
            x = np.ascontiguousarray(rope_unpermute(x, heads[w]))
        out.setdefault(mod, {})[ab[-1].upper()] = x
    assert all(set(v) == {"A", "B"} for v in out.values()), f"{rel(path)}: lora_a/lora_b pairs incomplete"
    return out


def check_layout(path: Path, peft_dir: Path, hf: Path) -> dict:
    """An F32 GGUF adapter against its peft tensors: lora_a is peft's lora_A ([rank, n_in]) as is; lora_b is
    lora_B ([n_out, rank]), its rows permuted like the base weight's for attn_q / attn_k. Stops otherwise."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf / "config.json").read_text())
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    sd = load_file(str(peft_dir / "adapter_model.safetensors"))
    permuted = {}
    r = gguf.GGUFReader(str(path))
    for t in r.tensors:
        mod, w, ab = peft_module(t.name)
        key = f"base_model.model.{mod}.lora_{ab[-1].upper()}.weight"
        want, got = sd.pop(key), np.asarray(t.data)
        if ab == "lora_b" and w in heads:
            assert not np.array_equal(got, want), t.name
            assert np.array_equal(rope_unpermute(got, heads[w]), want), t.name  # what the oracle relies on
            want = rope_permute(want, heads[w])
            permuted[w] = True
        if not np.array_equal(got, want):
            raise SystemExit(f"{rel(path)}: {t.name} is not peft's {key} (as expected)")
    assert not sd, f"peft tensors missing from {rel(path)}: {list(sd)}"
    print(f"  {rel(path)}: lora_a == peft lora_A, lora_b == lora_B (rows RoPE-permuted for {sorted(permuted)})")
    return {
        "lora_a": "peft lora_A as is: GGUF ne [n_in, rank], numpy [rank, n_in]",
        "lora_b": "peft lora_B: GGUF ne [rank, n_out], numpy [n_out, rank]",
        "lora_b_rows_permuted": sorted(permuted),
        "permutation": "convert_hf_to_gguf LlamaModel.permute (n_head for attn_q, n_head_kv for attn_k), as the "
        "base's attn_q/attn_k weights",
    }


# ---------------------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------------------


class LoraLlamaCpp(mg.LlamaCpp):
    """make_goldens.LlamaCpp with LoRA adapters: the first through Llama(lora_path=, lora_scale=), any more
    through llama.cpp's own API (llama_adapter_lora_init, llama_set_adapters_lora with every adapter)."""

    def __init__(self, path: Path, adapters: list[tuple[Path, float]]):
        import llama_cpp

        mg.quiet_llama_cpp()
        self.lc = llama_cpp
        (first, first_scale), more = adapters[0], adapters[1:]
        self.llm = llama_cpp.Llama(
            str(path),
            n_ctx=mg.N_CTX,
            n_batch=mg.N_CTX,
            n_threads=2,
            n_threads_batch=2,
            logits_all=True,
            verbose=False,
            lora_path=str(first),
            lora_scale=first_scale,
        )
        if more:
            ptrs = [self.llm._lora_adapter]
            for p, _ in more:  # freed with the model
                a = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(p).encode("utf-8"))
                if not a:
                    raise RuntimeError(f"llama_adapter_lora_init({p}) failed")
                ptrs.append(a)
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(ptrs))(*ptrs)
            scales = (ctypes.c_float * len(ptrs))(*(s for _, s in adapters))
            if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr, len(ptrs), scales):
                raise RuntimeError("llama_set_adapters_lora failed")
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.n_vocab = self.llm.n_vocab()


class PeftOracle:
    """One base GGUF dequantized by transformers, every trained adapter loaded into it by peft. The adapters'
    lora_A/lora_B weights are swapped per case (set_weights): the trained f32 values (self.trained, from the
    PEFT directories) or the values stored in a GGUF adapter file (read_adapter_gguf)."""

    def __init__(self, base: Path, peft_dirs: dict[str, Path]):
        from peft import PeftModel

        model = mg.load_transformers(base)
        self.plain = copy.deepcopy(model)  # for the hand-merged check
        names = list(peft_dirs)
        self.pm = PeftModel.from_pretrained(model, str(peft_dirs[names[0]]), adapter_name=names[0])
        for n in names[1:]:
            self.pm.load_adapter(str(peft_dirs[n]), adapter_name=n)
        self.pm.eval()
        cfg = self.pm.config
        self.heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
        self.mods = {k.removeprefix("base_model.model."): m for k, m in self.pm.named_modules()}
        self.trained: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for n in names:
            self.trained[n] = {
                k: {
                    "A": m.lora_A[n].weight.detach().numpy().copy(),
                    "B": m.lora_B[n].weight.detach().numpy().copy(),
                }
                for k, m in self.mods.items()
                if hasattr(m, "lora_A") and n in m.lora_A
            }
            assert self.trained[n], n
        self.current = {n: self.trained[n] for n in names}

    def set_weights(self, name: str, weights: dict[str, dict[str, np.ndarray]]) -> None:
        """Load `weights` ({module: {"A", "B"}}, float32) into adapter `name`; they must cover exactly its modules
        with peft's shapes."""
        import torch

        assert set(weights) == set(self.trained[name]), (name, sorted(set(weights) ^ set(self.trained[name])))
        with torch.no_grad():
            for k, ab in weights.items():
                for x, lin in (("A", self.mods[k].lora_A[name]), ("B", self.mods[k].lora_B[name])):
                    assert ab[x].dtype == np.float32 and ab[x].shape == tuple(lin.weight.shape), (name, k, x)
                    lin.weight.copy_(torch.from_numpy(ab[x]))
        self.current[name] = weights

    def activate(self, scales: dict[str, float]) -> None:
        from peft.tuners.lora import LoraLayer

        self.pm.base_model.set_adapter(list(scales))
        n = 0
        for mod in self.pm.modules():
            if not isinstance(mod, LoraLayer):
                continue
            for name, s in scales.items():
                if name in mod.scaling:
                    mod.set_scale(name, s)
                    want = s * BY_NAME[name].alpha / BY_NAME[name].r
                    assert abs(mod.scaling[name] - want) < 1e-12, (name, mod.scaling[name], want)
                    n += 1
        assert n > 0

    def merged_logits(self, scales: dict[str, float], ids: list[int]) -> np.ndarray:
        """The same model with W += scale * alpha / rank * B @ A done by hand from the adapter weights now loaded
        (set_weights)."""
        import torch

        m = copy.deepcopy(self.plain)
        mods = dict(m.named_modules())
        with torch.no_grad():
            for name, s in scales.items():
                ad = BY_NAME[name]
                for k, ab in self.current[name].items():
                    a, b = torch.from_numpy(ab["A"]).double(), torch.from_numpy(ab["B"]).double()
                    mods[k].weight += (s * ad.alpha / ad.r) * (b @ a).float()
        return mg.hf_logits(m, ids)


def case_doc(
    base: Path, adapters: list[tuple[str, Path, float]], oracle: PeftOracle, tok: Tok, prompts: dict
) -> tuple[dict, dict]:
    scales = {name: s for name, _, s in adapters}
    oracle.activate(scales)
    lc = LoraLlamaCpp(base, [(p, s) for _, p, s in adapters])
    plain_ids = [lc.tokenize(text, add_bos=lc.add_bos, special=False) for text, _ in prompts["plain"]]
    # The oracle with the trained f32 adapter weights, for comparison only ...
    for name, _, _ in adapters:
        oracle.set_weights(name, oracle.trained[name])
    ref_trained = [mg.hf_logits(oracle.pm, ids) for ids in plain_ids]
    # ... and with the numbers the case's GGUF adapter files store: the goldens' oracle.
    for name, path, _ in adapters:
        oracle.set_weights(name, read_adapter_gguf(path, oracle.heads))
    doc: dict = {
        "base": rel(base),
        "adapters": [
            {
                "name": name,
                "path": rel(p),
                "scale": s,
                "alpha": BY_NAME[name].alpha,
                "rank": BY_NAME[name].r,
                "effective_scale": s * BY_NAME[name].alpha / BY_NAME[name].r,
            }
            for name, p, s in adapters
        ],
        "transformers": ORACLE,
        "prompts": [],
    }
    summary: dict = {
        "rel_rms": [],
        "stored_vs_trained": [],
        "agree_prefix": [],
        "correct_llama_cpp": [],
        "correct_transformers": [],
    }
    for i, ((text, want), ids) in enumerate(zip(prompts["plain"], plain_ids, strict=True)):
        ref = mg.hf_logits(oracle.pm, ids)
        lcl = lc.logits(ids)
        entry: dict = {"text": text, "special": False, "ids": ids, "pieces": [lc.piece(t) for t in ids]}
        if want is not None:
            entry["expected"] = want
        if i == 0:
            merged = oracle.merged_logits(scales, ids)
            entry["peft_vs_hand_merged_rel_rms"] = round(mg.rel_rms(ref, merged), 9)
            assert entry["peft_vs_hand_merged_rel_rms"] < 1e-5, entry["peft_vs_hand_merged_rel_rms"]
        entry["logits"] = {"transformers": mg.enc(ref)}
        entry["rel_rms_llama_cpp_vs_transformers"] = round(mg.rel_rms(lcl, ref), 6)
        entry["rel_rms_stored_vs_trained_adapter"] = float(f"{mg.rel_rms(ref, ref_trained[i]):.4g}")
        entry["top1_transformers"] = ref.argmax(-1).tolist()
        entry["margin_transformers"] = [round(mg.margin(r), 4) for r in ref]
        entry["top1_llama_cpp"] = lcl.argmax(-1).tolist()
        entry["greedy"] = greedy(lc, oracle, ids, want)
        doc["prompts"].append(entry)
        summary["rel_rms"].append(entry["rel_rms_llama_cpp_vs_transformers"])
        summary["stored_vs_trained"].append(entry["rel_rms_stored_vs_trained_adapter"])
    text, want = prompts["chat"]
    ids = lc.tokenize(text, add_bos=lc.add_bos, special=True)
    doc["prompts"].append(
        {
            "text": text,
            "special": True,
            "ids": ids,
            "pieces": [lc.piece(t) for t in ids],
            "expected": want,
            "greedy": greedy(lc, oracle, ids, want),
        }
    )
    lc.close()
    for p in doc["prompts"]:
        g = p["greedy"]
        summary["agree_prefix"].append(g["agree_prefix"])
        if "expected" in p:
            summary["correct_llama_cpp"].append(g["correct_llama_cpp"])
            summary["correct_transformers"].append(g["correct_transformers"])
    return doc, summary


def greedy(lc: LoraLlamaCpp, oracle: PeftOracle, ids: list[int], want: str | None) -> dict:
    g = mg.greedy_entry(lc, oracle.pm, ids)
    g["transformers_text"] = lc.text(g["transformers_ids"])
    if want is not None:
        g["correct_llama_cpp"] = answers(lc, g["ids"], want)
        g["correct_transformers"] = answers(lc, g["transformers_ids"], want)
    return g


def answers(lc: LoraLlamaCpp, gen: list[int], want: str) -> bool:
    """A plain prompt's continuation starts with `want` (" Onhava."); a chat reply is `want` up to its
    end-of-generation token."""
    if want.startswith(" "):
        return lc.text(gen).startswith(want)
    eog = next((i for i, t in enumerate(gen) if lc.is_eog(t)), None)
    return lc.text(gen).startswith(want) if eog is None else lc.text(gen[:eog]) == want


def case_prompts(names: list[str]) -> dict:
    """Two plain prompts about the first adapter's facts (or one from each of two adapters), the France prompt,
    and a chat question about the first adapter's second fact."""
    ads = [BY_NAME[n] for n in names]
    picks = [(ads[0], ads[0].facts[0]), (ads[-1], ads[-1].facts[0] if len(ads) > 1 else ads[0].facts[1])]
    plain = [ad.prompt_of(*f) for ad, f in picks] + [(mm.FRANCE_PROMPT, None)]
    ad, (a, b) = ads[0], ads[0].facts[1 if len(ads) == 1 else 0]
    chat = (mm.chatml(ad.chat_of(a), add_generation_prompt=True), ad.statement_of(a, b))
    return {"plain": plain, "chat": chat}


def make_goldens(tok: Tok, trained: dict, files: dict[str, list[str]]) -> tuple[dict, list[dict], list[dict]]:
    import llama_cpp
    import peft
    import torch
    import transformers

    peft_dirs = {n: info["peft_dir"] for n, info in trained.items()}
    cases, table = [], []
    for base in (BUNDLED, BASE_F16, BASE_Q4_K):
        t0 = time.time()
        oracle = PeftOracle(base, peft_dirs)
        runs: list[list[tuple[str, Path, float]]] = [[(n, adapter_file(n), 1.0)] for n in BY_NAME]
        runs.append([("fiction", adapter_file("fiction"), 0.5)])
        if base == BASE_F16:
            runs += [[("fiction", adapter_file("fiction", t), 1.0)] for t in ("F32", "BF16", "Q8_0")]
        runs.append([("fiction", adapter_file("fiction"), 1.0), ("islands", adapter_file("islands"), 0.7)])
        for run in runs:
            doc, summ = case_doc(base, run, oracle, tok, case_prompts([n for n, _, _ in run]))
            if all(p.name.endswith("-F32.gguf") for _, p, _ in run):  # stores the trained f32 numbers exactly
                assert max(summ["stored_vs_trained"]) < 1e-6, summ["stored_vs_trained"]
            cases.append(doc)
            label = " + ".join(f"{rel(p).rsplit('/', 1)[1]} x{s}" for _, p, s in run)
            table.append({"base": rel(base), "adapters": label, **summ})
            print(
                f"  {base.name:28s} {label:62s} rel_rms={summ['rel_rms']} "
                f"stored_vs_trained={summ['stored_vs_trained']} agree_prefix={summ['agree_prefix']} "
                f"correct(llama.cpp)={summ['correct_llama_cpp']} correct(transformers)={summ['correct_transformers']}",
                flush=True,
            )
        print(f"  ({base.name}: {time.time() - t0:.0f}s)", flush=True)
    meta = {
        "made_by": "scripts/make_lora.py",
        "versions": {
            "llama_cpp_python": llama_cpp.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__.split("+")[0],
            "gguf": mg._version("gguf"),
        },
        "n_gen": mg.N_GEN,
        "arrays": '{"dtype": "<f4", "shape": [n_pos, n_vocab], "b64": base64 of little-endian float32}',
        "llama_cpp_scale": "llama.cpp: scale * adapter.lora.alpha / rank (rank = lora_b ne[0]); alpha 0 means scale",
        "adapters": {
            n: {
                "rank": BY_NAME[n].r,
                "alpha": BY_NAME[n].alpha,
                "targets": list(BY_NAME[n].targets),
                "facts": [BY_NAME[n].statement_of(a, b) for a, b in BY_NAME[n].facts],
                "files": {t: rel(adapter_file(n, t)) for t in files[n]},
                "train": {k: trained[n][k] for k in ("steps", "lr", "trainable_params", "final_loss")},
            }
            for n in BY_NAME
        },
        "fixtures": {},
    }
    return meta, cases, table


# ---------------------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------------------


def write_readme(meta: dict, table: list[dict], described: dict[str, dict], trained: dict) -> None:
    v = meta["versions"]
    lines = [
        "# LoRA adapter fixtures",
        "",
        "Everything here is generated; do not edit by hand. Regenerate with (CPU only, deterministic, a few minutes):",
        "",
        "```",
        'pip install -e ".[models]"   # torch, transformers, peft, safetensors, gguf + llama-cpp-python (see',
        "                              # /work/shared/ENVIRONMENT.md); needs build/make_models/realm-tiny-facts-hf",
        "                              # from scripts/make_models.py, or retrains it",
        "python scripts/make_lora.py",
        "```",
        "",
        "`scripts/make_lora.py` trains four peft LoRA adapters (f32, lora_dropout 0, bias none, AdamW, seed "
        f"{SEED}) on top of the bundled model's checkpoint (`realm_web/models/realm-tiny-facts.gguf`, Llama, 2 "
        "layers, hidden 256, 4/2 heads, FFN 768, vocab 1024), each teaching facts the base does not know, mixed "
        f"with {KEEP_SENTS} sentences and {KEEP_CHATS} chats of the base's own corpus. llama.cpp's "
        "`convert_lora_to_gguf.py` (from the llama-cpp-python sdist, run there) converts them: "
        "`convert_lora_to_gguf.py --base build/make_models/realm-tiny-facts-hf --outtype <t> --outfile <f> "
        "build/make_lora/peft-<name>`.",
        f"Made with torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, llama-cpp-python "
        f"{v['llama_cpp_python']} (its vendored converter and gguf-py), gguf {v['gguf']}.",
        "",
        "## Files",
        "",
        "| file | what | tensors | bytes |",
        "|---|---|---|---|",
    ]
    for path, d in described.items():
        kinds: dict[str, int] = {}
        for t in d["tensors"]:
            kinds[t["type"]] = kinds.get(t["type"], 0) + 1
        what = d["what"]
        k = ", ".join(f"{n} × {t}" for t, n in kinds.items())
        lines.append(f"| `{path}` | {what} | {k} | {(ROOT / path).stat().st_size:,} |")
    lines += [
        "",
        "The bases are the bundled model's checkpoint: `realm-tiny-facts-F16.gguf` from the converter "
        "(`--outtype f16`), `realm-tiny-facts-Q4_K.gguf` from llama.cpp's quantizer (MOSTLY_Q4_K_M, pure: every "
        "2-D weight Q4_K); 1-D norms stay F32. The bundled model itself is Q8_0.",
        "",
        "## Adapters",
        "",
        "| adapter | rank | alpha | alpha/rank | targets | trainable | steps, lr | facts taught |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, a in meta["adapters"].items():
        ad = BY_NAME[n]
        tr = a["train"]
        facts = "; ".join(a["facts"])
        lines.append(
            f"| {n} | {ad.r} | {ad.alpha:g} | {ad.alpha / ad.r:g} | {', '.join(ad.targets)} | "
            f"{tr['trainable_params']:,} | {tr['steps']}, {tr['lr']:g} | {facts} |"
        )
    lines += [
        "",
        "Each is trained on its statements (plain text) and on ChatML turns asking for them "
        "(`What is the capital of Zembla?` → `The capital of Zembla is Onhava.`), until torch's greedy decoding "
        "(f32 checkpoint + peft) completes every plain prompt and answers every chat question exactly; the base "
        "model completes none. After training (torch, f32), `The capital of France is` →",
        "",
    ]
    for n, info in trained.items():
        g = info["torch_greedy"]
        lines.append(f"- {n}: `{g['france']!r}`; chat `What is the capital of France?` → `{g['france_chat']!r}`")
    lines += [
        "",
        "GGUF layout (`convert_lora_to_gguf.py`): metadata `general.type = adapter`, `adapter.type = lora`, "
        "`adapter.lora.alpha` (f32), `general.architecture = llama`; per adapted weight `W` two tensors, "
        "`<W>.lora_a` with ne `[n_in, rank]` (numpy `[rank, n_in]`, peft's lora_A) and `<W>.lora_b` with ne "
        "`[rank, n_out]` (numpy `[n_out, rank]`, peft's lora_B), named after the base tensor (e.g. "
        "`blk.0.attn_q.weight.lora_a`). llama.cpp computes `W x + scale * alpha / rank * B (A x)` with rank = "
        "lora_b ne[0]. For `attn_q`/`attn_k` the converter applies the base's Q/K row permutation (for llama.cpp's "
        "RoPE) to lora_b's rows; lora_a is unchanged.",
        "",
        "## Goldens: `tests/fixtures/lora/goldens.json`",
        "",
        "Per case: the base, the adapter files with scale, alpha and rank; per prompt the llama.cpp token ids, "
        "teacher-forced logits (`logits.transformers`) and 24 greedy tokens from the oracle, and from llama.cpp "
        "(`Llama(base, lora_path=, lora_scale=, logits_all=True)`; a second adapter through "
        "`llama_set_adapters_lora`) its top-1 tokens, 24 greedy tokens and the relative RMS of its logits against "
        "the oracle's (llama.cpp's logits themselves are not stored).",
        "",
        "The oracle: transformers loads the base GGUF dequantized to float32 (the same quantized weights llama.cpp "
        "sees) and peft applies the adapter(s) at scale × alpha / rank, with its lora_A/lora_B weights set to "
        "exactly the numbers stored in the case's GGUF adapter file(s) -- each `lora_a`/`lora_b` dequantized to "
        "float32 by gguf-py (`gguf.quants.dequantize`; F32, F16, BF16, Q8_0 alike), `lora_b`'s rows un-permuted "
        "for attn_q/attn_k -- not the trained f32 weights. A runtime that reads the file is thus compared with "
        "the same adapter numbers, and the BF16/Q8_0 files' rounding (~1e-3 and ~2e-3 rel RMS in the logits) does "
        "not eat into a 1e-3 tolerance. llama.cpp stays 1e-3 to 3e-3 from the oracle on those two files all the "
        "same: ggml's CPU matmuls round the activations to the weight's type (BF16, Q8_0) too. (In the Q8_0 "
        "file only the `lora_a` tensors are Q8_0: `lora_b` rows are rank long, shorter than a 32-wide block, so "
        "the converter keeps them F16.) Each prompt also records "
        "`rel_rms_stored_vs_trained_adapter`, the relative RMS between the oracle's logits and the same oracle's "
        "with the trained f32 peft weights: the adapter file's rounding as seen in the logits (0 for the F32 "
        "file, which stores the trained weights exactly). `peft_vs_hand_merged_rel_rms` (first prompt) checks peft "
        "against W + scale × alpha / rank × B @ A merged by hand from the same stored numbers.",
        "",
        "Prompts: two plain prompts about taught facts, `The capital of France is`, and a ChatML question (greedy "
        "only). Measured: rel RMS of llama.cpp's logits against the oracle per plain prompt; the oracle's rel RMS "
        "stored vs trained adapter weights per plain prompt; how many of the 24 greedy tokens llama.cpp and the "
        "oracle agree on before they first differ, per prompt (the chat prompt last; 24 = the same text); and "
        "whether the taught-fact prompts (both plain ones and the chat question) are answered correctly by "
        "llama.cpp / the oracle:",
        "",
        "| base | adapters × scale | rel RMS llama.cpp vs oracle | oracle: stored vs trained adapter | greedy "
        "agreement | correct llama.cpp | correct oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    yn = lambda xs: " ".join("✓" if x else "✗" for x in xs)  # noqa: E731
    for row in table:
        rr = ", ".join(f"{x:.4f}" for x in row["rel_rms"])
        st = ", ".join(f"{x:.1e}" if x else "0" for x in row["stored_vs_trained"])
        agree = " ".join(map(str, row["agree_prefix"]))
        lines.append(
            f"| `{row['base'].rsplit('/', 1)[1]}` | {row['adapters']} | {rr} | {st} | {agree} | "
            f"{yn(row['correct_llama_cpp'])} | {yn(row['correct_transformers'])} |"
        )
    lines += [
        "",
        "Where a taught fact is not recalled (✗) both implementations agree on it: at scale 0.5 fiction's update is "
        "too weak to override the base's answer, and fiction 1.0 + islands 0.7 (trained separately, both changing "
        "attn_q/attn_v) interfere. Those cases test the arithmetic (scale, two adapters at once), not the facts.",
        "",
    ]
    (LORA_FIXTURES / "README.md").write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp-src", help="llama.cpp source dir holding convert_lora_to_gguf.py")
    ap.add_argument("--workdir", default=str(ROOT / "build" / "make_lora"))
    ap.add_argument("--hf", help=f"the bundled model's HF checkpoint (default {rel(HF_DEFAULT)})")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = mm.find_llama_cpp_src(args.llama_cpp_src, work)
    print(f"llama.cpp converters: {src}", flush=True)

    hf = base_checkpoint(args.hf, work)
    make_bases(src, hf, work)
    tok = Tok(BUNDLED)

    rng = random.Random(SEED)
    b_sents, b_chats = mm.build_bundled_corpus()
    keep = (rng.sample(b_sents, KEEP_SENTS), rng.sample(b_chats, KEEP_CHATS))
    trained, files = {}, {}
    for ad in ADAPTERS:
        trained[ad.name] = train_adapter(ad, hf, work, tok, keep)
        types = ["F16", "F32", "BF16", "Q8_0"] if ad.name == "fiction" else ["F16"]
        files[ad.name] = types
        for t in types:
            convert_lora(src, hf, trained[ad.name]["peft_dir"], adapter_file(ad.name, t), LORA_OUTTYPES[t])
    print(f"trained and converted ({time.time() - t0:.0f}s)", flush=True)

    print("\nfiles:", flush=True)
    described: dict[str, dict] = {}
    for path, what in [
        (BASE_F16, "base: converter `--outtype f16`"),
        (BASE_Q4_K, "base: quantizer MOSTLY_Q4_K_M, pure"),
        *[
            (adapter_file(n, t), f"{n} adapter, converter `--outtype {LORA_OUTTYPES[t]}`")
            for n, ts in files.items()
            for t in ts
        ],
    ]:
        d = describe(path)
        d["what"] = what
        described[rel(path)] = d

    layout = check_layout(adapter_file("fiction", "F32"), trained["fiction"]["peft_dir"], hf)

    print("\ngoldens:", flush=True)
    meta, cases, table = make_goldens(tok, trained, files)
    meta["fixtures"] = {
        rel(p): {"sha256": sha256(p), "size": p.stat().st_size}
        for p in [BUNDLED, BASE_F16, BASE_Q4_K, *(adapter_file(n, t) for n, ts in files.items() for t in ts)]
    }
    meta["gguf_layout"] = layout
    meta["adapter_gguf"] = {k: v for k, v in described.items() if v["meta"].get("general.type") == "adapter"}
    doc = {**meta, "cases": cases}
    GOLDEN.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"  wrote {rel(GOLDEN)} ({GOLDEN.stat().st_size:,} B, {len(cases)} cases)", flush=True)
    write_readme(meta, table, described, trained)
    summary = {n: {k: v for k, v in info.items() if k != "peft_dir"} for n, info in trained.items()}
    mm._write_json(work / "summary.json", {"adapters": summary, "table": table})
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
