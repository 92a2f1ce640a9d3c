#!/usr/bin/env python3
"""Make the tokenizer fixtures: real vocabularies from llama.cpp and golden ids from llama.cpp itself.

    python scripts/make_tokenizer_goldens.py [--sdist llama_cpp_python-X.Y.Z.tar.gz] [--out tests/fixtures/vocab]

1. From the llama-cpp-python sdist (downloaded with pip when --sdist is not given) it extracts llama.cpp's
   vocab-only GGUFs `vendor/llama.cpp/models/ggml-vocab-NAME.gguf` with their test vectors `.gguf.inp` /
   `.gguf.out` (format: tests/test-tokenizer-0.cpp, inputs separated by "\\n__ggml_vocab_test__\\n", one line of
   space-separated ids per input, tokenized with add_special=false, parse_special=false).
2. For each vocabulary, and for a few copies of one with `tokenizer.ggml.pre` changed (to reach pre-tokenizers
   we have no vocabulary for without committing more megabytes), it writes NAME.golden.json: llama.cpp's ids
   for our tricky texts and the `.inp` texts under every add_special/parse_special combination, llama.cpp's
   llama_detokenize of those ids, the special token ids, attributes and EOG set, and a digest of every
   token's llama_token_to_piece.

The oracle is llama-cpp-python built from the same sdist, so ids come from the llama.cpp version whose
vectors we ship. Build it with (ENVIRONMENT.md: the native build crashes on this CPU)
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \\
        pip install llama_cpp_python-X.Y.Z.tar.gz
Detokenization calls llama_detokenize directly: `Llama.detokenize` joins pieces itself and skips llama.cpp's
leading-space and space-cleanup rules. The tests read only the files written here.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FIXTURE_BYTES = 8 * 1024 * 1024  # a vocabulary above this is not committed

# vocabularies we ship: SPM (plain and phi-3's rstrip special tokens), and byte-level BPE with the gpt-2,
# llama3 and qwen2 pre-tokenizers
VOCABS = ["llama-spm", "phi-3", "gpt-2", "llama-bpe", "qwen2"]
# (golden name, vocabulary, new tokenizer.ggml.pre; None removes the key, which llama.cpp reads as "default"):
# one per distinct pre-tokenizer regex list (llm_tokenizer_bpe), plus chatglm-bpe for a vocabulary without BOS
VARIANTS = [("gpt-2@default", "gpt-2", None), ("qwen2@qwen35", "qwen2", "qwen35")] + [
    (f"gpt-2@{pre}", "gpt-2", pre)
    for pre in (
        "starcoder", "falcon", "deepseek-coder", "deepseek-llm", "chatglm-bpe", "deepseek-v3", "spark2_5", "youtu",
        "jais-2", "bloom", "viking", "tekken", "llama4", "granite-embed-multi-97m", "bailingmoe", "seed-coder",
        "ufakzeka", "laguna", "exaone-moe", "minicpm5",
    )
]  # fmt: skip

TEXTS = [
    "",
    " ",
    "  ",
    "     ",
    "\t",
    "\t\t  \t",
    "\n",
    "\n\n\n",
    "\r\n",
    "line one\r\nline two\r\n\r\nline four",
    " \n \n  \n",
    "Hello world",
    " Hello world",
    "  Hello  world  ",
    "Hello\tworld\n\tindented\n    four spaces",
    "a  b   c    d     e",
    "trailing spaces   ",
    "0",
    "12",
    "123",
    "1234",
    "1234567890123456789",
    "3.14159265 and 1,000,000.00 or 1e-9",
    "+7 (495) 123-45-67, 2024-01-01T12:34:56Z",
    "!!!???...,,,;;;",
    "(a+b)*c = [d/e] {f^g} <h|i> ~j` $k @l #m %n &o _p",
    "don't I'll we've THEY'RE it'S you'D I'M",
    "' lone apostrophe ' and 'quoted'",
    "Hello , world . Really ? Yes ! ' s",
    "naïve café résumé Ångström Øresund straße",
    "e\u0301 a\u0308 n\u0303 (combining marks)",
    "日本語のテキストです。",
    "カタカナとひらがな、漢字！「引用」…ｆｕｌｌ　ｗｉｄｔｈ１２３",
    "ㄅㄆㄇ ㄱㄴㄷ ภาษาไทย नमस्ते दुनिया।",
    "中文测试，标点符号！",
    "한국어 텍스트",
    "Ελληνικά и русский текст",
    "مرحبا بالعالم",
    "👋 🌍 😀😃😄",
    "👨\u200d👩\u200d👧\u200d👦 family, 🏳\ufe0f\u200d🌈 flag, 👍🏽 thumbs",
    "emoji🙂inside🙃words",
    "\u00a0non-breaking\u00a0space\u3000ideographic\u2028line sep",
    "\x00\x01\x1f control \x7f chars",
    "\u2581 already escaped \u2581\u2581",
    "<s>",
    "</s>",
    "<s>Hello</s>",
    "<unk> and <0x41>",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|user|>\n  hello  <|end|>\n<|assistant|>",
    "[PAD151646] user defined [PAD151647]",
    "<|im_start|",
    "def f(x):\n    return x * 2  # comment\n\n\nclass A:\n\tpass\n",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def find_or_download_sdist(arg: str | None, workdir: str) -> Path:
    if arg:
        return Path(arg)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python", "-d",
         workdir], check=True,
    )  # fmt: skip
    (hit,) = glob.glob(os.path.join(workdir, "llama_cpp_python-*.tar.gz"))
    return Path(hit)


def extract(sdist: Path, out: Path) -> tuple[str, dict[str, Path]]:
    """Copy the vocabularies and their vectors out of the sdist; returns its version and the gguf paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/vendor/llama.cpp/models/", 1)[-1]: m for m in tar.getmembers()
                   if "/vendor/llama.cpp/models/ggml-vocab-" in m.name}  # fmt: skip
        version = tar.getmembers()[0].name.split("/")[0].rsplit("-", 1)[-1]
        for name in VOCABS:
            gguf = members[f"ggml-vocab-{name}.gguf"]
            if gguf.size > MAX_FIXTURE_BYTES:
                print(f"SKIP {name}: {gguf.size} bytes is over {MAX_FIXTURE_BYTES}")
                continue
            for suffix in (".gguf", ".gguf.inp", ".gguf.out"):
                m = members.get(f"ggml-vocab-{name}{suffix}")
                if m is None:
                    continue
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                (out / f"{name}{suffix}").write_bytes(data)
            paths[name] = out / f"{name}.gguf"
            print(f"{name}: {gguf.size} bytes")
    return version, paths


def read_inp(path: Path) -> list[str]:
    """The inputs of a .gguf.inp file, split as test-tokenizer-0.cpp splits them."""
    if not path.exists():
        return []
    raw = path.read_bytes().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    out, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            out.append(raw[pos:])
            break
        out.append(raw[pos:nxt])
        pos = nxt + len(sep)
    return out


def with_pre(src: Path, pre: str | None, dst: Path) -> None:
    """A copy of a vocab-only GGUF with tokenizer.ggml.pre replaced (or removed)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name == "tokenizer.ggml.pre":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    if pre is not None:
        writer.add_key_value("tokenizer.ggml.pre", pre, GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def oracle(path: Path, texts: list[str]) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def detok(ids: list[int], remove_special: bool, unparse_special: bool) -> str:
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 64 * len(ids)
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        assert n >= 0, n
        return buf.raw[:n].decode("utf-8", "surrogateescape")  # JSON keeps the undecodable bytes as \udcXX

    def piece(i: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, 256, 0, special)
        assert 0 <= n <= 256, n
        return buf.raw[:n]

    def none(i: int) -> int | None:
        return None if i < 0 else i

    cases = []
    for text in texts:
        raw = text.encode("utf-8")
        ids = {
            "plain": llm.tokenize(raw, add_bos=False, special=False),
            "bos": llm.tokenize(raw, add_bos=True, special=False),
            "parse": llm.tokenize(raw, add_bos=False, special=True),
            "bos_parse": llm.tokenize(raw, add_bos=True, special=True),
        }
        full = ids["bos_parse"]
        cases.append({
            "text": text,
            "ids": ids,
            "detok": {
                "plain": detok(full, False, False),
                "special": detok(full, False, True),
                "remove": detok(full, True, False),
                "ids_plain": detok(ids["plain"], False, False),
            },
        })  # fmt: skip
    digests = {}
    for special in (False, True):
        h = hashlib.sha256()
        for i in range(n_vocab):
            p = piece(i, special)
            h.update(len(p).to_bytes(4, "little") + p)
        digests["special" if special else "plain"] = h.hexdigest()
    fn = llama_cpp
    return {
        "n_vocab": n_vocab,
        "special_ids": {
            "bos": none(fn.llama_vocab_bos(vocab)),
            "eos": none(fn.llama_vocab_eos(vocab)),
            "eot": none(fn.llama_vocab_eot(vocab)),
            "sep": none(fn.llama_vocab_sep(vocab)),
            "pad": none(fn.llama_vocab_pad(vocab)),
            "mask": none(fn.llama_vocab_mask(vocab)),
            "fim_pre": none(fn.llama_vocab_fim_pre(vocab)),
            "fim_suf": none(fn.llama_vocab_fim_suf(vocab)),
            "fim_mid": none(fn.llama_vocab_fim_mid(vocab)),
            "fim_pad": none(fn.llama_vocab_fim_pad(vocab)),
            "fim_rep": none(fn.llama_vocab_fim_rep(vocab)),
            "fim_sep": none(fn.llama_vocab_fim_sep(vocab)),
        },
        "add_bos": bool(fn.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(fn.llama_vocab_get_add_eos(vocab)),
        "eog": [i for i in range(n_vocab) if fn.llama_vocab_is_eog(vocab, i)],
        "attrs": {str(i): a for i in range(n_vocab) if (a := int(fn.llama_vocab_get_attr(vocab, i))) != 4},
        "pieces_sha256": digests,
        "cases": cases,
    }


def dump(golden: dict) -> str:
    """JSON with one test case per line."""
    cases = golden.pop("cases")
    head = json.dumps(golden, ensure_ascii=True, indent=1)
    body = ",\n".join(json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in cases)
    return f'{head[:-2]},\n "cases": [\n{body}\n ]\n}}\n'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", help="llama_cpp_python-X.Y.Z.tar.gz (default: pip download the latest)")
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "vocab"))
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = find_or_download_sdist(args.sdist, tmp)
        version, paths = extract(sdist, out)
        import llama_cpp

        if llama_cpp.__version__ != version:
            sys.exit(f"llama-cpp-python {llama_cpp.__version__} is installed but the sdist is {version}")
        jobs = [(name, path, "unchanged") for name, path in paths.items()]
        for name, base, pre in VARIANTS:
            if base in paths:
                copy = Path(tmp) / f"{name}.gguf"
                with_pre(paths[base], pre, copy)
                jobs.append((name, copy, pre))
        for name, path, pre in jobs:
            base = name.split("@")[0]
            texts = TEXTS + [t for t in read_inp(out / f"{base}.gguf.inp") if t not in TEXTS]
            golden = {"llama_cpp_python": version, "vocab": f"{base}.gguf"}
            if pre != "unchanged":
                golden["pre"] = pre
            golden.update(oracle(path, texts))
            n_cases = len(golden["cases"])
            (out / f"{name}.golden.json").write_text(dump(golden))
            print(f"{name}.golden.json: {n_cases} texts")


if __name__ == "__main__":
    main()
