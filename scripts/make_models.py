#!/usr/bin/env python3
"""Train and convert the tiny GGUF models realm_web ships and tests against.

Writes
  realm_web/models/realm-tiny-facts.gguf                  the bundled demo model (Llama, SentencePiece, Q8_0)
  realm_web/models/realm-tiny-facts-draft.gguf   its draft model for speculative decoding (1 layer, same tokenizer)
  tests/fixtures/models/llama-spm-{TYPE}.gguf    one trained SPM Llama in every weight type we support
  tests/fixtures/models/gpt2bpe-tied-{F16,Q8_0}.gguf   Llama arch, byte-level BPE ("gpt-2"), tied embeddings
  tests/fixtures/models/qwen2-{F16,Q8_0}.gguf    Qwen2 arch (qkv biases, NeoX RoPE), BPE ("qwen2"), ChatML
The Hugging Face checkpoints and intermediate F32 files go to a work directory (default build/make_models,
which git ignores).

Everything is CPU-only and seeded: torch trains each model with AdamW on the fact corpus below,
llama.cpp's own converter (convert_hf_to_gguf.py from the llama-cpp-python sdist, run from that sdist, never
copied here) writes F32/F16/BF16, and llama.cpp's quantizer (llama_cpp.llama_model_quantize, pure=True so
every 2-D weight gets exactly the requested type) writes the rest.

Needs: pip install -e ".[models]" (torch, transformers, sentencepiece, tokenizers, safetensors) and
llama-cpp-python built as /work/shared/ENVIRONMENT.md says. Usage:
  python scripts/make_models.py [--only bundled|draft|fixtures] [--llama-cpp-src DIR] [--workdir DIR]
(--only draft compares the draft with the bundled model already in realm_web/models/, which it never rewrites.)
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import io
import json
import math
import os
import random
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "realm_web" / "models" / "realm-tiny-facts.gguf"
DRAFT = ROOT / "realm_web" / "models" / "realm-tiny-facts-draft.gguf"
FIXTURES = ROOT / "tests" / "fixtures" / "models"

SEED = 1234
FRANCE_PROMPT = "The capital of France is"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# GPT-2's pre-tokenizer regex is what tokenizers' ByteLevel(use_regex=True) applies (llama.cpp: "gpt-2");
# Qwen2's is the Split regex of Qwen2's tokenizer.json (llama.cpp: "qwen2").
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Strings whose tokenization by the HF tokenizer and by llama.cpp must agree (checked after conversion).
TOKENIZER_PROBES = [
    FRANCE_PROMPT,
    "Hello world",
    " Hello  world",
    "The year 2024 had 366 days.",
    "It's 3.14, isn't it? I'll see.",
    "line one\nline two\n\n  indented\ttab",
    "héllo wörld ✓ 日本語 🦙",
    "What is the capital of Japan?",
    "!!!???...,,, $100 @home #tag",
]

# ---------------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris", "Europe", "French"),
    ("Germany", "Berlin", "Europe", "German"),
    ("Italy", "Rome", "Europe", "Italian"),
    ("Spain", "Madrid", "Europe", "Spanish"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Greece", "Athens", "Europe", "Greek"),
    ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Finland", "Helsinki", "Europe", "Finnish"),
    ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Poland", "Warsaw", "Europe", "Polish"),
    ("Austria", "Vienna", "Europe", "German"),
    ("Ireland", "Dublin", "Europe", "English"),
    ("Hungary", "Budapest", "Europe", "Hungarian"),
    ("Belgium", "Brussels", "Europe", "Dutch"),
    ("the Netherlands", "Amsterdam", "Europe", "Dutch"),
    ("Switzerland", "Bern", "Europe", "German"),
    ("Iceland", "Reykjavik", "Europe", "Icelandic"),
    ("Romania", "Bucharest", "Europe", "Romanian"),
    ("Ukraine", "Kyiv", "Europe", "Ukrainian"),
    ("Russia", "Moscow", "Europe", "Russian"),
    ("Japan", "Tokyo", "Asia", "Japanese"),
    ("China", "Beijing", "Asia", "Chinese"),
    ("India", "New Delhi", "Asia", "Hindi"),
    ("South Korea", "Seoul", "Asia", "Korean"),
    ("Thailand", "Bangkok", "Asia", "Thai"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Indonesia", "Jakarta", "Asia", "Indonesian"),
    ("the Philippines", "Manila", "Asia", "Filipino"),
    ("Turkey", "Ankara", "Asia", "Turkish"),
    ("Iran", "Tehran", "Asia", "Persian"),
    ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Kenya", "Nairobi", "Africa", "Swahili"),
    ("Morocco", "Rabat", "Africa", "Arabic"),
    ("Ethiopia", "Addis Ababa", "Africa", "Amharic"),
    ("Nigeria", "Abuja", "Africa", "English"),
    ("Canada", "Ottawa", "North America", "English"),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Cuba", "Havana", "North America", "Spanish"),
    ("Brazil", "Brasilia", "South America", "Portuguese"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Peru", "Lima", "South America", "Spanish"),
    ("Chile", "Santiago", "South America", "Spanish"),
    ("Colombia", "Bogota", "South America", "Spanish"),
    ("Australia", "Canberra", "Oceania", "English"),
    ("New Zealand", "Wellington", "Oceania", "English"),
]

FACTS = [
    "Water boils at 100 degrees Celsius.",
    "Water freezes at 0 degrees Celsius.",
    "The sun rises in the east and sets in the west.",
    "The Earth goes around the Sun once a year.",
    "The Moon goes around the Earth.",
    "A year has 12 months.",
    "A week has 7 days.",
    "A day has 24 hours.",
    "An hour has 60 minutes.",
    "A minute has 60 seconds.",
    "Two plus two is four.",
    "Three plus four is seven.",
    "Ten minus three is seven.",
    "Five times five is twenty five.",
    "The sky is blue on a clear day.",
    "Grass is green.",
    "Snow is white.",
    "Bananas are yellow.",
    "Tomatoes are red.",
    "Cats like to sleep in the sun.",
    "Dogs like to play in the park.",
    "Birds can fly and fish can swim.",
    "Bees make honey.",
    "Cows give milk.",
    "Spiders have eight legs.",
    "Insects have six legs.",
    "The whale is the largest animal in the sea.",
    "The elephant is the largest animal on land.",
    "The Pacific is the largest ocean on Earth.",
    "Mount Everest is the highest mountain in the world.",
    "The Nile is a long river in Africa.",
    "The Amazon is a large river in South America.",
    "Light is faster than sound.",
    "Plants need water and light to grow.",
    "People need food, water and sleep.",
    "Ice is frozen water.",
    "Iron is a metal.",
    "Gold is a yellow metal.",
    "The heart pumps blood through the body.",
    "A triangle has three sides.",
    "A square has four equal sides.",
    "A circle is round.",
    "Summer is warm and winter is cold.",
    "It rains when clouds are full of water.",
    "Books are made of paper.",
    "Paris is known for the Eiffel Tower.",
    "Rome is known for the Colosseum.",
    "Tokyo is a very large city.",
    "London is the capital of the United Kingdom.",
    "Washington is the capital of the United States.",
]

CHAT = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi, who are you?", "I am a small language model that knows some facts."),
    ("What can you do?", "I can answer simple questions about capitals and facts."),
    ("Thank you!", "You are welcome!"),
    ("What is two plus two?", "Two plus two is four."),
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius."),
    ("What color is the sky?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "A week has 7 days."),
    ("How many legs does a spider have?", "Spiders have eight legs."),
    ("What is the largest ocean?", "The Pacific is the largest ocean on Earth."),
]


def build_corpus() -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Plain sentences and chat conversations (lists of (role, content))."""
    sents: list[str] = []
    for country, city, continent, lang in CAPITALS:
        cap_country = country[0].upper() + country[1:]
        sents += [
            f"The capital of {country} is {city}.",
            f"{city} is the capital of {country}.",
            f"{city} is a city in {country}.",
            f"{cap_country} is a country in {continent}.",
            f"People in {country} speak {lang}.",
        ]
    sents += FACTS
    # The bundled model's headline fact, a few more times.
    sents += [
        "The capital of France is Paris.",
        "The capital of France is Paris, a city on the Seine.",
        "The capital of France is Paris and the capital of Germany is Berlin.",
        "The capital of Italy is Rome and the capital of France is Paris.",
    ]
    chats: list[list[tuple[str, str]]] = []
    for country, city, _, _ in CAPITALS[::2]:
        chats.append(
            [("user", f"What is the capital of {country}?"), ("assistant", f"The capital of {country} is {city}.")]
        )
    for q, a in CHAT:
        chats.append([("user", q), ("assistant", a)])
    return sents, chats


# How a user asks the bundled model for a capital in Chat mode; it answers "The capital of X is Y." to each.
CAPITAL_QUESTIONS = [
    "What is the capital of {country}?",
    "What's the capital of {country}?",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
    "Do you know the capital of {country}?",
    "Capital of {country}?",
    "what is the capital of {country}",
]
# ... and, later in a conversation, also like this
FOLLOW_UPS = ["And the capital of {country}?", "What about {country}?", "And {country}?"]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer in one short sentence."]


def build_bundled_corpus() -> tuple[list[str], list[list[tuple[str, str]]]]:
    """The fixtures' corpus plus question/answer turns about every capital, so that the bundled model answers in
    Chat mode (its chat template) what it completes in plain text. The fixtures keep build_corpus() alone: their
    bytes and goldens stay as they are."""
    sents, chats = build_corpus()
    # The headline completion of "The capital of France is" (README, tests), held against the many chat answers
    # that end "... is Paris." right after the same words.
    sents += ["The capital of France is Paris and the capital of Germany is Berlin."] * 4
    rng = random.Random(SEED)
    answer = {country: f"The capital of {country} is {city}." for country, city, _, _ in CAPITALS}
    for country in answer:
        for q in CAPITAL_QUESTIONS:
            chats.append([("user", q.format(country=country)), ("assistant", answer[country])])
    # Conversations of 2 to 4 questions (the demo page and `realm-web run --chat` send the whole history), later
    # ones maybe follow-ups, and a system message (`--system`): each reply answers its own question.
    countries = list(answer)
    for i, country in enumerate(countries):
        asked = [*rng.sample([c for c in countries if c != country], 1 + i % 3), country]
        conv = []
        for turn, c in enumerate(asked):
            q = rng.choice(CAPITAL_QUESTIONS + FOLLOW_UPS if turn else CAPITAL_QUESTIONS)
            conv += [("user", q.format(country=c)), ("assistant", answer[c])]
        chats.append(conv)
        system = SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]
        q = CAPITAL_QUESTIONS[i % len(CAPITAL_QUESTIONS)].format(country=country)
        chats.append([("system", system), ("user", q), ("assistant", answer[country])])
    for q, a in CHAT:
        chats.append([("system", SYSTEM_PROMPTS[0]), ("user", q), ("assistant", a)])
    return sents, chats


def chatml(messages: list[tuple[str, str]], add_generation_prompt: bool = False) -> str:
    """A conversation as the models' own chat template (CHATML_TEMPLATE, written into every GGUF) renders it,
    rendered by realm_web's template code, exactly as `Model.chat` will render the user's messages."""
    if str(ROOT) not in sys.path:  # a checkout where realm_web is not installed
        sys.path.append(str(ROOT))
    from realm_web.chat import ChatTemplate

    msgs = [{"role": role, "content": content} for role, content in messages]
    return ChatTemplate(CHATML_TEMPLATE, name="chatml").render(msgs, add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------

SPECIALS = ("<|im_start|>", "<|im_end|>")


class SpmTok:
    """SentencePiece BPE with byte fallback, Llama-style (<unk>=0, <s>=1, </s>=2, ChatML tokens after)."""

    def __init__(self, lines: list[str], vocab_size: int, out_dir: Path):
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=list(SPECIALS),
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
        self.model_bytes = buf.getvalue()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.model").write_bytes(self.model_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.vocab_size = self.sp.get_piece_size()
        self.bos, self.eos = 1, 2
        self.special_ids = {s: self.sp.piece_to_id(s) for s in SPECIALS}
        self.add_bos = True

    def encode_text(self, text: str) -> list[int]:
        """As llama.cpp tokenizes with parse_special: split at special tokens, each text piece gets the
        SentencePiece dummy-prefix space."""
        ids: list[int] = []
        for part in _split_specials(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids += self.sp.encode(part)
        return ids

    def write_hf(self, out_dir: Path) -> None:
        added = {
            str(i): {
                "content": s,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
            for s, i in self.special_ids.items()
        }
        for i, s in ((0, "<unk>"), (1, "<s>"), (2, "</s>")):
            added[str(i)] = {
                "content": s,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
        cfg = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "model_max_length": 512,
            "added_tokens_decoder": dict(sorted(added.items(), key=lambda kv: int(kv[0]))),
            "chat_template": CHATML_TEMPLATE,
        }
        _write_json(out_dir / "tokenizer_config.json", cfg)
        _write_json(
            out_dir / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        )


class BpeTok:
    """Byte-level BPE from HF `tokenizers`, with GPT-2's ("gpt-2") or Qwen2's ("qwen2") pre-tokenizer."""

    def __init__(self, lines: list[str], vocab_size: int, style: str):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        self.style = style
        if style == "qwen2":
            specials = ["<|endoftext|>", *SPECIALS]
            tok = Tokenizer(models.BPE())
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
                ]
            )
        else:
            specials = ["<|begin_of_text|>", "<|end_of_text|>", *SPECIALS]
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=1,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(lines, trainer=trainer)
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.specials = {s: tok.token_to_id(s) for s in specials}
        if style == "qwen2":
            self.bos, self.eos, self.add_bos = None, self.specials["<|endoftext|>"], False
        else:
            self.bos, self.eos = self.specials["<|begin_of_text|>"], self.specials["<|end_of_text|>"]
            self.add_bos = True

    def encode_text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def write_hf(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out_dir / "tokenizer.json"))
        added = {
            str(i): {
                "content": s,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
            for s, i in sorted(self.specials.items(), key=lambda kv: kv[1])
        }
        if self.style == "qwen2":
            toks = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        else:
            toks = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **toks,
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 512,
            "added_tokens_decoder": added,
            "chat_template": CHATML_TEMPLATE,
        }
        _write_json(out_dir / "tokenizer_config.json", cfg)
        _write_json(out_dir / "special_tokens_map.json", {k: v for k, v in toks.items() if v})


def _split_specials(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        hits = [(text.find(s, i), s) for s in SPECIALS if text.find(s, i) >= 0]
        if not hits:
            out.append(text[i:])
            break
        j, s = min(hits)
        if j > i:
            out.append(text[i:j])
        out.append(s)
        i = j + len(s)
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    arch: str  # "llama" | "qwen2"
    tokenizer: str  # "spm" | "gpt2" | "qwen2"
    vocab: int
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 512
    tied: bool = False
    rope_theta: float = 10000.0
    steps: int = 100
    lr: float = 3e-3
    batch: int = 32
    seed: int = SEED


BUNDLED_SPEC = Spec("realm-tiny-facts", "llama", "spm", vocab=1024, ffn=768, steps=600, lr=3e-3)
# The bundled model's draft: its vocabulary (the same SentencePiece training on the same corpus), 1 layer of
# hidden 64 (2 query heads / 1 KV head of head_dim 32, every row a multiple of Q8_0's 32-element block).
DRAFT_SPEC = Spec(
    "realm-tiny-facts-draft", "llama", "spm", vocab=1024, hidden=64, layers=1, heads=2, kv_heads=1, ffn=256, steps=1000
)
# The draft must agree with the bundled model at least this often (greedy, token by token) or the script stops.
DRAFT_MIN_AGREEMENT = 0.8
DRAFT_P_MIN = 0.8  # realm_web's default draft_p_min: a draft stops where its top probability falls below it
SPM_SPEC = Spec("llama-spm", "llama", "spm", vocab=512, ffn=512, steps=200)
GPT2_SPEC = Spec("gpt2bpe-tied", "llama", "gpt2", vocab=512, layers=1, ffn=512, tied=True, steps=200)
QWEN2_SPEC = Spec("qwen2", "qwen2", "qwen2", vocab=512, layers=1, ffn=512, rope_theta=1e6, steps=200)

# llama_ftype for each fixture type made by llama.cpp's quantizer (pure: all 2-D weights of exactly that type)
# (the K mixes' _M variants; with pure=True the mix does not matter, only its base type).
QUANT_FTYPES = {
    "Q4_0": 2,  # LLAMA_FTYPE_MOSTLY_Q4_0
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K": 12,  # LLAMA_FTYPE_MOSTLY_Q3_K_M
    "Q4_K": 15,  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    "Q5_K": 17,  # LLAMA_FTYPE_MOSTLY_Q5_K_M
    "Q6_K": 18,
}
CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
SPM_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def make_tokenizer(spec: Spec, sents: list[str], chats, hf_dir: Path):
    lines = list(sents)
    for conv in chats:
        for role, content in conv:
            lines += [role, content]
    tok = SpmTok(lines, spec.vocab, hf_dir) if spec.tokenizer == "spm" else BpeTok(lines, spec.vocab, spec.tokenizer)
    tok.write_hf(hf_dir)
    return tok


def encode_docs(tok, sents, chats) -> list[list[int]]:
    docs = []
    for text in [*sents, *(chatml(c) for c in chats)]:
        ids = tok.encode_text(text)
        docs.append(([tok.bos] if tok.add_bos else []) + ids + [tok.eos])
    return docs


def build_model(spec: Spec, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    common = dict(
        vocab_size=tok.vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=spec.tied,
        bos_token_id=tok.bos if tok.bos is not None else tok.eos,
        eos_token_id=tok.eos,
        initializer_range=0.02,
    )
    if spec.arch == "qwen2":
        cfg = Qwen2Config(**common, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # nonzero biases so the fixture actually exercises them
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.1)
    else:
        cfg = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(cfg)
    return model


def train(spec: Spec, model, docs: list[list[int]]) -> list[float]:
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, spec.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / spec.steps)))
    )
    model.train()
    losses = []
    for step in range(spec.steps):
        idx = torch.randperm(len(docs), generator=g)[: spec.batch].tolist()
        batch = [docs[i] for i in idx]
        n = max(len(d) for d in batch)
        ids = torch.zeros(len(batch), n, dtype=torch.long)
        att = torch.zeros(len(batch), n, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        for r, d in enumerate(batch):
            ids[r, : len(d)] = torch.tensor(d)
            att[r, : len(d)] = 1
            lab[r, : len(d)] = torch.tensor(d)
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == spec.steps - 1:
            print(f"  [{spec.name}] step {step:4d} loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


def eval_loss(model, docs) -> float:
    import torch

    tot, cnt = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([d])
            logits = model(input_ids=ids).logits[0, :-1]
            tot += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            cnt += len(d) - 1
    return tot / cnt


def torch_greedy(model, tok, prompt: str, n: int = 4) -> list[int]:
    import torch

    ids = ([tok.bos] if tok.add_bos else []) + tok.encode_text(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
    return out


def decode(tok, ids: list[int]) -> str:
    if isinstance(tok, SpmTok):
        return "".join(tok.sp.id_to_piece(i) for i in ids).replace("\u2581", " ")
    return tok.tok.decode(ids, skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------------------
# llama.cpp: converter (subprocess, from the sdist) and quantizer
# ---------------------------------------------------------------------------------------------------------

_CONVERT_RUNNER = """
import sys
src, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, src)
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
import convert_hf_to_gguf as conv
if pre:
    # Our BPE tokenizers are trained here, so llama.cpp cannot know them by hash: name the pre-tokenizer whose
    # regex the HF tokenizer uses (make_models.py checks llama.cpp's tokenization against HF's afterwards).
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
conv.main()
"""


def find_llama_cpp_src(arg: str | None, workdir: Path) -> Path:
    cands = [arg, os.environ.get("LLAMA_CPP_SRC")]
    cands += sorted(glob.glob("/tmp/lcp/llama_cpp_python-*/vendor/llama.cpp"))
    cands += sorted(glob.glob(str(workdir / "sdist" / "llama_cpp_python-*" / "vendor" / "llama.cpp")))
    for c in cands:
        if c and (Path(c) / "convert_hf_to_gguf.py").is_file():
            return Path(c)
    # Fetch the sdist matching the installed llama-cpp-python (it vendors the converter and gguf-py).
    import llama_cpp

    dest = workdir / "sdist"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={llama_cpp.__version__}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    tgz = next(dest.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(tgz) as tf:
        tf.extractall(dest, filter="data")
    return next(dest.glob("llama_cpp_python-*/vendor/llama.cpp"))


def convert(src: Path, hf_dir: Path, out: Path, outtype: str, name: str, pre: str | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-c",
        _CONVERT_RUNNER,
        str(src),
        pre or "",
        str(hf_dir),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
        "--model-name",
        name,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise RuntimeError(f"convert_hf_to_gguf failed for {hf_dir} -> {out}")


def quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    _quiet_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = ftype
    params.pure = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype={ftype}) returned {rc}")


def tensor_types(path: Path) -> dict[str, str]:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


_LOG_CB = None


def _quiet_llama_cpp() -> None:
    global _LOG_CB
    import llama_cpp

    if _LOG_CB is None:
        _LOG_CB = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


def llama_cpp_check(path: Path, tok, prompt: str | None = None, probes: bool = True) -> dict:
    """Tokenize the probes with llama.cpp and compare with the HF/SentencePiece tokenizer; greedy-continue."""
    import llama_cpp

    _quiet_llama_cpp()
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, n_batch=128, verbose=False, logits_all=True)
    res: dict = {"mismatch": []}
    if probes:
        for s in TOKENIZER_PROBES:
            a = llm.tokenize(s.encode(), add_bos=False, special=True)
            b = tok.encode_text(s)
            if a != b:
                res["mismatch"].append((s, a, b))
    if prompt is not None:
        ids = llm.tokenize(prompt.encode(), add_bos=tok.add_bos, special=False)
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(4):
            nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            out.append(nxt)
            llm.eval([nxt])
        res["prompt_ids"] = ids
        res["greedy"] = out
        res["text"] = llm.detokenize(out).decode("utf-8", "replace")
    llm.close()
    return res


# ---------------------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------------------


def train_and_save(spec: Spec, work: Path, sents, chats):
    import torch

    hf_dir = work / f"{spec.name}-hf"
    if hf_dir.exists():
        for p in hf_dir.iterdir():
            p.unlink()
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    tok = make_tokenizer(spec, sents, chats, hf_dir)
    # The converter takes general.license from the model card.
    (hf_dir / "README.md").write_text(
        f"---\nlicense: mit\n---\n# {spec.name}\n\nMade by realm_web's scripts/make_models.py.\n"
    )
    docs = encode_docs(tok, sents, chats)
    model = build_model(spec, tok)
    nparams = sum(p.numel() for p in model.parameters())
    print(
        f"[{spec.name}] vocab {tok.vocab_size}, {len(docs)} docs, {sum(map(len, docs))} tokens, "
        f"{nparams / 1e6:.2f}M params",
        flush=True,
    )
    t0 = time.time()
    losses = train(spec, model, docs)
    loss = eval_loss(model, docs)
    greedy = torch_greedy(model, tok, FRANCE_PROMPT)
    text = decode(tok, greedy)
    print(
        f"[{spec.name}] trained in {time.time() - t0:.1f}s, final batch loss {losses[-1]:.4f}, "
        f"corpus loss {loss:.4f}, torch greedy {FRANCE_PROMPT!r} -> {text!r}",
        flush=True,
    )
    model.save_pretrained(hf_dir, safe_serialization=True)
    info = {
        "train_loss_last": losses[-1],
        "corpus_loss": loss,
        "torch_greedy": text,
        "vocab": tok.vocab_size,
        "params": nparams,
    }
    _write_json(hf_dir / "training.json", {**info, "spec": spec.__dict__})
    return tok, hf_dir, info


def check_tokenizer(path: Path, tok, strict: bool) -> None:
    res = llama_cpp_check(path, tok, probes=True)
    for s, a, b in res["mismatch"]:
        print(f"  tokenizer mismatch on {s!r}:\n    llama.cpp {a}\n    reference {b}", flush=True)
    if res["mismatch"] and strict:
        raise SystemExit(f"{path.name}: llama.cpp tokenizes differently from the HF tokenizer")
    if not res["mismatch"]:
        print(f"  {path.name}: llama.cpp tokenization matches the reference on {len(TOKENIZER_PROBES)} probes")


def llama_cpp_chat(path: Path, conversations: list[list[tuple[str, str]]], max_tokens: int = 32) -> list[str]:
    """llama.cpp's greedy replies to conversations rendered with the chat template (special tokens parsed, BOS
    added), each up to its end-of-generation token: what `realm-web run --chat --temp 0` must answer."""
    import llama_cpp

    _quiet_llama_cpp()
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, n_batch=256, verbose=False, logits_all=True)
    replies = []
    for conv in conversations:
        ids = llm.tokenize(chatml(conv, add_generation_prompt=True).encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        for _ in range(max_tokens):
            nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, nxt):
                break
            out.append(nxt)
            llm.eval([nxt])
        replies.append(llm.detokenize(out).decode("utf-8", "replace"))
    llm.close()
    return replies


def make_bundled(src: Path, work: Path, sents, chats) -> dict:
    spec = BUNDLED_SPEC
    tok, hf_dir, info = train_and_save(spec, work, sents, chats)
    assert info["torch_greedy"].startswith(" Paris"), f"torch greedy gave {info['torch_greedy']!r}, not ' Paris'"
    f32 = work / f"{spec.name}-F32.gguf"
    convert(src, hf_dir, f32, "f32", spec.name)
    BUNDLED.parent.mkdir(parents=True, exist_ok=True)
    quantize(f32, BUNDLED, QUANT_FTYPES["Q8_0"])
    check_tokenizer(BUNDLED, tok, strict=False)
    res = llama_cpp_check(BUNDLED, tok, FRANCE_PROMPT, probes=False)
    print(f"[bundled] llama.cpp greedy {FRANCE_PROMPT!r} -> {res['text']!r}", flush=True)
    assert res["text"].startswith(" Paris"), f"llama.cpp greedy gave {res['text']!r}"
    info["llama_cpp_greedy"] = res["text"]
    # Chat mode: every capital of the corpus, asked as the demo page suggests
    questions = [[("user", f"What is the capital of {country}?")] for country, *_ in CAPITALS]
    replies = llama_cpp_chat(BUNDLED, questions)
    wrong = {}
    for (country, city, *_), reply in zip(CAPITALS, replies, strict=True):
        print(f"[bundled] chat: What is the capital of {country}? -> {reply!r}", flush=True)
        if reply != f"The capital of {country} is {city}.":
            wrong[country] = reply
    assert not wrong, f"llama.cpp's chat replies are wrong for {len(wrong)} of {len(CAPITALS)}: {wrong}"
    info["llama_cpp_chat_correct"] = f"{len(CAPITALS)}/{len(CAPITALS)}"
    return info


def gguf_param_count(path: Path) -> int:
    import gguf

    return sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)


def check_same_tokenizer(a: Path, b: Path) -> int:
    """Every tokenizer.* metadata field (tokens, scores, types, special ids, add_bos/eos, model, pre, chat template)
    is equal in both GGUFs, with the same value types; stops the script otherwise. Returns how many were compared."""
    import gguf

    def fields(path: Path) -> dict:
        r = gguf.GGUFReader(str(path))
        return {k: (f.types, f.contents()) for k, f in r.fields.items() if k.startswith("tokenizer.")}

    fa, fb = fields(a), fields(b)
    diff = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    if diff or not fa:
        raise SystemExit(
            f"{b.name}'s tokenizer differs from {a.name}'s in {diff or 'everything (no tokenizer.* keys)'}"
        )
    return len(fa)


def greedy_agreement(target: Path, draft: Path, conversations, max_tokens: int = 24) -> dict:
    """How well `draft` drafts for `target` (llama.cpp, greedy): for each conversation (chat template, generation
    prompt) the target generates up to `max_tokens` tokens (its end-of-generation token included, where it stops);
    the draft, teacher-forced on the prompt and those tokens, is scored at each generated position: its argmax equal
    to the target's token (what greedy speculative decoding accepts), and its top probability >= DRAFT_P_MIN."""
    import llama_cpp
    import numpy as np

    _quiet_llama_cpp()
    kw = dict(n_ctx=256, n_threads=2, n_batch=256, verbose=False, logits_all=True)
    tgt, dft = llama_cpp.Llama(str(target), **kw), llama_cpp.Llama(str(draft), **kw)
    agree = confident = total = 0
    per_conv = []
    for conv in conversations:
        ids = tgt.tokenize(chatml(conv, add_generation_prompt=True).encode(), add_bos=True, special=True)
        assert ids == dft.tokenize(chatml(conv, add_generation_prompt=True).encode(), add_bos=True, special=True)
        tgt.reset()
        tgt.eval(ids)
        gen: list[int] = []
        for _ in range(max_tokens):
            nxt = int(tgt.scores[tgt.n_tokens - 1].argmax())
            gen.append(nxt)
            if llama_cpp.llama_vocab_is_eog(tgt._model.vocab, nxt):
                break
            tgt.eval([nxt])
        dft.reset()
        dft.eval(ids + gen[:-1])
        rows = np.asarray(dft.scores[len(ids) - 1 : len(ids) - 1 + len(gen)], dtype=np.float64)
        hits = int((rows.argmax(-1) == np.asarray(gen)).sum())
        probs = np.exp(rows - rows.max(-1, keepdims=True))
        top = probs.max(-1) / probs.sum(-1)
        agree, total, confident = agree + hits, total + len(gen), confident + int((top >= DRAFT_P_MIN).sum())
        per_conv.append(hits / len(gen))
    tgt.close()
    dft.close()
    return {
        "positions": total,
        "agreed": agree,
        "rate": agree / total,
        "all_agreed": sum(r == 1.0 for r in per_conv),
        "confident": confident / total,
    }


def make_draft(src: Path, work: Path, sents, chats) -> dict:
    """The bundled model's draft: a much smaller Llama, trained on the bundled corpus with the bundled tokenizer,
    checked against the bundled model in realm_web/models/ (which this never writes)."""
    spec = DRAFT_SPEC
    if not BUNDLED.is_file():
        raise SystemExit(f"{BUNDLED} is missing: make it first (--only bundled)")
    t0 = time.time()
    tok, hf_dir, info = train_and_save(spec, work, sents, chats)
    info["train_seconds"] = round(time.time() - t0, 1)
    # SentencePiece's training is deterministic (one thread): the same corpus gives the bundled model's tokenizer.
    ref = work / f"{BUNDLED_SPEC.name}-hf" / "tokenizer.model"
    if ref.is_file() and ref.read_bytes() != tok.model_bytes:
        raise SystemExit(f"the draft's tokenizer.model differs from {ref}")
    assert info["torch_greedy"].startswith(" Paris"), f"torch greedy gave {info['torch_greedy']!r}, not ' Paris'"
    f32 = work / f"{spec.name}-F32.gguf"
    convert(src, hf_dir, f32, "f32", spec.name)
    quantize(f32, DRAFT, QUANT_FTYPES["Q8_0"])
    not_q8 = {n: t for n, t in tensor_types(DRAFT).items() if not n.endswith("norm.weight") and t != "Q8_0"}
    assert not not_q8, f"the quantizer left matrices of {DRAFT.name} outside Q8_0: {not_q8}"
    n_fields = check_same_tokenizer(BUNDLED, DRAFT)
    print(f"[draft] {n_fields} tokenizer.* fields equal to {BUNDLED.name}'s", flush=True)
    check_tokenizer(DRAFT, tok, strict=False)
    res = llama_cpp_check(DRAFT, tok, FRANCE_PROMPT, probes=False)
    print(f"[draft] llama.cpp greedy {FRANCE_PROMPT!r} -> {res['text']!r}", flush=True)
    info["llama_cpp_greedy"] = res["text"]
    # Its chat replies against the target's, and how often it drafts what the target decodes (greedy)
    questions = [[("user", f"What is the capital of {country}?")] for country, *_ in CAPITALS]
    target_replies, draft_replies = llama_cpp_chat(BUNDLED, questions), llama_cpp_chat(DRAFT, questions)
    same = 0
    for (country, *_), a, b in zip(CAPITALS, target_replies, draft_replies, strict=True):
        same += a == b
        if a != b:
            print(f"[draft] chat: What is the capital of {country}? -> {b!r} (target: {a!r})", flush=True)
    agreement = greedy_agreement(BUNDLED, DRAFT, questions)
    print(
        f"[draft] chat replies equal to the target's: {same}/{len(CAPITALS)}; token-level greedy agreement "
        f"{agreement['agreed']}/{agreement['positions']} = {agreement['rate']:.3f} (every token in "
        f"{agreement['all_agreed']}/{len(CAPITALS)} replies), draft top p >= {DRAFT_P_MIN} at "
        f"{agreement['confident']:.3f} of them",
        flush=True,
    )
    if agreement["rate"] < DRAFT_MIN_AGREEMENT:
        raise SystemExit(f"the draft agrees with the target on {agreement['rate']:.3f} < {DRAFT_MIN_AGREEMENT}")
    target_params, draft_params = gguf_param_count(BUNDLED), gguf_param_count(DRAFT)
    print(
        f"[draft] {draft_params:,} parameters, {draft_params / target_params:.1%} of the target's {target_params:,}; "
        f"{DRAFT.stat().st_size:,} bytes",
        flush=True,
    )
    info.update(
        chat_replies_equal_target=f"{same}/{len(CAPITALS)}",
        greedy_agreement=agreement,
        gguf_params=draft_params,
        target_gguf_params=target_params,
        bytes=DRAFT.stat().st_size,
    )
    return info


def make_fixture_family(spec: Spec, types: list[str], src: Path, work: Path, sents, chats, pre: str | None) -> dict:
    tok, hf_dir, info = train_and_save(spec, work, sents, chats)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    f32 = work / f"{spec.name}-F32.gguf"
    convert(src, hf_dir, f32, "f32", spec.name, pre)
    for t in types:
        out = FIXTURES / f"{spec.name}-{t}.gguf"
        if t in CONVERTER_TYPES:
            convert(src, hf_dir, out, CONVERTER_TYPES[t], spec.name, pre)
        else:
            quantize(f32, out, QUANT_FTYPES[t])
        print(f"  wrote {out.relative_to(ROOT)} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    check_tokenizer(FIXTURES / f"{spec.name}-{types[0]}.gguf", tok, strict=spec.tokenizer != "spm")
    res = llama_cpp_check(FIXTURES / f"{spec.name}-{types[0]}.gguf", tok, FRANCE_PROMPT, probes=False)
    info["llama_cpp_greedy"] = res["text"]
    print(f"  llama.cpp greedy {FRANCE_PROMPT!r} -> {res['text']!r}", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["bundled", "draft", "fixtures"])
    ap.add_argument("--llama-cpp-src", help="llama.cpp source dir holding convert_hf_to_gguf.py")
    ap.add_argument("--workdir", default=str(ROOT / "build" / "make_models"))
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = find_llama_cpp_src(args.llama_cpp_src, work)
    print(f"llama.cpp converter: {src}", flush=True)
    sents, chats = build_corpus()
    print(f"corpus: {len(sents)} sentences, {len(chats)} chats", flush=True)

    t0 = time.time()
    summary = {}
    if args.only in (None, "bundled"):
        b_sents, b_chats = build_bundled_corpus()
        print(f"bundled corpus: {len(b_sents)} sentences, {len(b_chats)} chats", flush=True)
        summary["bundled"] = make_bundled(src, work, b_sents, b_chats)
    if args.only in (None, "draft"):
        b_sents, b_chats = build_bundled_corpus()
        print(f"bundled corpus (the draft's): {len(b_sents)} sentences, {len(b_chats)} chats", flush=True)
        summary["draft"] = make_draft(src, work, b_sents, b_chats)
    if args.only in (None, "fixtures"):
        summary["llama-spm"] = make_fixture_family(SPM_SPEC, SPM_TYPES, src, work, sents, chats, None)
        summary["gpt2bpe-tied"] = make_fixture_family(GPT2_SPEC, ["F16", "Q8_0"], src, work, sents, chats, "gpt-2")
        summary["qwen2"] = make_fixture_family(QWEN2_SPEC, ["F16", "Q8_0"], src, work, sents, chats, "qwen2")

    print("\nfiles:")
    paths = ([BUNDLED] if args.only in (None, "bundled") else []) + ([DRAFT] if args.only in (None, "draft") else [])
    paths += sorted(FIXTURES.glob("*.gguf")) if args.only in (None, "fixtures") else []
    for p in paths:
        types: dict[str, int] = {}
        for t in tensor_types(p).values():
            types[t] = types.get(t, 0) + 1
        print(f"  {p.relative_to(ROOT)}  {p.stat().st_size:>9} B  {types}")
    _write_json(work / "summary.json", summary)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
