"""The tokenizer against llama.cpp: its own test vectors and goldens from scripts/make_tokenizer_goldens.py.

Fixtures in tests/fixtures/vocab/: NAME.gguf (llama.cpp's vocab-only files), NAME.gguf.inp/.out (llama.cpp's
vectors, see tests/test-tokenizer-0.cpp there) and NAME[@PRE].golden.json (llama.cpp's ids and text for our
tricky texts and the .inp texts; @PRE goldens use NAME.gguf with tokenizer.ggml.pre replaced).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import pytest

from realm_web.gguf import open_gguf
from realm_web.tokenizer import (
    _REGEXES,
    IncrementalDecoder,
    Tokenizer,
    TokenizerError,
    _clean_spaces,
    load_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "vocab"
GOLDENS = sorted(p.name.removesuffix(".golden.json") for p in FIXTURES.glob("*.golden.json"))
VOCABS = sorted(p.name.removesuffix(".gguf") for p in FIXTURES.glob("*.gguf"))
MODES = {"plain": (False, False), "bos": (True, False), "parse": (False, True), "bos_parse": (True, True)}


@functools.cache
def metadata(vocab_file: str) -> dict:
    with open_gguf(FIXTURES / vocab_file) as f:
        return f.metadata


@functools.cache
def golden(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.golden.json").read_text())


@functools.cache
def tokenizer(name: str) -> Tokenizer:
    """The tokenizer a golden was made with: its vocabulary, with `pre` replaced where the golden says so."""
    g = golden(name) if name in GOLDENS else {"vocab": f"{name}.gguf"}
    md = dict(metadata(g["vocab"]))
    if "pre" in g:
        if g["pre"] is None:
            md.pop("tokenizer.ggml.pre", None)
        else:
            md["tokenizer.ggml.pre"] = g["pre"]
    return Tokenizer.from_metadata(md)


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # how the goldens keep bytes that are not UTF-8


def report(bad: list[str]) -> str:
    return f"{len(bad)} mismatches, first ones:\n" + "\n".join(bad[:8])


def test_fixtures_are_there():
    assert {"llama-spm", "gpt-2", "llama-bpe", "qwen2"} <= set(VOCABS)
    assert {"llama-spm", "gpt-2", "llama-bpe", "qwen2", "gpt-2@default"} <= set(GOLDENS)


# ---- llama.cpp's own vectors -----------------------------------------------------------------------------


def read_vectors(vocab: str) -> list[tuple[str, list[int]]]:
    """.inp/.out pairs, split as test-tokenizer-0.cpp splits them."""
    raw_inp = (FIXTURES / f"{vocab}.gguf.inp").read_bytes().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    inputs, pos = [], 0
    while pos < len(raw_inp):
        nxt = raw_inp.find(sep, pos)
        if nxt < 0:
            inputs.append(raw_inp[pos:])
            break
        inputs.append(raw_inp[pos:nxt])
        pos = nxt + len(sep)
    outputs = (FIXTURES / f"{vocab}.gguf.out").read_text("utf-8").split("\n")
    outputs = [[int(t) for t in line.split()] for line in outputs[: len(inputs)]]
    assert len(inputs) == len(outputs) > 0
    return list(zip(inputs, outputs, strict=True))


@pytest.mark.parametrize("vocab", [v for v in VOCABS if (FIXTURES / f"{v}.gguf.inp").exists()])
def test_llama_cpp_vectors(vocab):
    tok = tokenizer(vocab)
    bad = []
    for text, expected in read_vectors(vocab):
        got = tok.tokenize(text, add_special=False, parse_special=False)
        if got != expected:
            bad.append(f"{text!r}: llama.cpp {expected} ours {got}")
    assert not bad, report(bad)


# ---- goldens ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDENS)
def test_tokenize_goldens(name):
    tok = tokenizer(name)
    bad = []
    for case in golden(name)["cases"]:
        for mode, (add_special, parse_special) in MODES.items():
            got = tok.tokenize(case["text"], add_special=add_special, parse_special=parse_special)
            if got != case["ids"][mode]:
                bad.append(f"{case['text']!r} {mode}: llama.cpp {case['ids'][mode]} ours {got}")
    assert not bad, report(bad)


@pytest.mark.parametrize("name", GOLDENS)
def test_detokenize_goldens(name):
    tok = tokenizer(name)
    bad = []
    for case in golden(name)["cases"]:
        ids = case["ids"]["bos_parse"]
        for key, got in (
            ("plain", tok.detokenize_bytes(ids)),
            ("special", tok.detokenize_bytes(ids, special=True)),
            ("remove", tok.detokenize_bytes(ids, remove_special=True)),
            ("ids_plain", tok.detokenize_bytes(case["ids"]["plain"])),
        ):
            if got != raw(case["detok"][key]):
                bad.append(f"{case['text']!r} {key}: llama.cpp {raw(case['detok'][key])!r} ours {got!r}")
    assert not bad, report(bad)


@pytest.mark.parametrize("name", GOLDENS)
def test_vocab_properties_match_llama_cpp(name):
    g, tok = golden(name), tokenizer(name)
    assert tok.n_vocab == g["n_vocab"]
    ours = {"bos": tok.bos_id, "eos": tok.eos_id, "eot": tok.eot_id, "sep": tok.sep_id, "pad": tok.pad_id}
    ours |= {"mask": tok.mask_id, **tok.fim_ids}
    assert ours == g["special_ids"]
    assert (tok.add_bos, tok.add_eos) == (g["add_bos"], g["add_eos"])
    assert sorted(tok.eog_ids) == g["eog"]
    assert {str(i): a for i, a in enumerate(tok.attrs) if a != 4} == g["attrs"]  # 4: NORMAL


@pytest.mark.parametrize("name", [n for n in GOLDENS if "@" not in n])  # pieces depend on the vocabulary only
def test_every_token_piece_matches_llama_cpp(name):
    tok = tokenizer(name)
    for special, key in ((False, "plain"), (True, "special")):
        h = hashlib.sha256()
        for i in range(tok.n_vocab):
            p = tok.token_to_piece(i, special)
            h.update(len(p).to_bytes(4, "little") + p)
        assert h.hexdigest() == golden(name)["pieces_sha256"][key], f"special={special}"


# ---- special tokens, flags, pieces -----------------------------------------------------------------------


def test_parse_special_both_ways():
    tok = tokenizer("qwen2")
    im_start = tok.token_to_id["<|im_start|>"]
    assert tok.tokenize("<|im_start|>", add_special=False, parse_special=True) == [im_start]
    plain = tok.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert im_start not in plain and len(plain) > 1
    # user-defined tokens are cut out of the text even without parse_special (llama.cpp, like HF tokenizers)
    pad = tok.token_to_id["[PAD151646]"]
    assert tok.tokenize("a[PAD151646]b", add_special=False) == [tok.token_to_id["a"], pad, tok.token_to_id["b"]]


def test_longest_special_token_wins():
    """tokenizer_st_partition tries special tokens longest first, so one inside another never splits it."""
    md = dict(metadata("llama-spm.gguf"))
    n = len(md["tokenizer.ggml.tokens"])
    md["tokenizer.ggml.tokens"] = [*md["tokenizer.ggml.tokens"], "<x>", "<x><y>"]
    md["tokenizer.ggml.scores"] = [*md["tokenizer.ggml.scores"], 0.0, 0.0]
    md["tokenizer.ggml.token_type"] = [*md["tokenizer.ggml.token_type"], 4, 4]  # user-defined
    tok = Tokenizer.from_metadata(md)
    ids = tok.tokenize("a<x><y>b<x>", add_special=False)
    assert n + 1 in ids and ids[-1] == n and ids.count(n) == 1
    assert tok.detokenize(ids) == "a<x><y> b<x>"  # SPM puts the space prefix after every special token


def test_add_special_flags():
    spm = tokenizer("llama-spm")
    assert (spm.add_bos, spm.add_eos, spm.bos_id, spm.eos_id) == (True, False, 1, 2)
    assert spm.tokenize("") == [1] and spm.tokenize("", add_special=False) == []
    assert spm.tokenize("Hi")[0] == 1 and spm.tokenize("Hi", add_special=False)[0] != 1
    gpt2 = tokenizer("gpt-2")
    assert not gpt2.add_bos and gpt2.tokenize("Hi") == gpt2.tokenize("Hi", add_special=False)
    llama3 = tokenizer("llama-bpe")
    assert llama3.tokenize("Hi")[0] == 128000 == llama3.bos_id  # llama.cpp's default for llama3 pre-tokenizers
    md = dict(metadata("llama-spm.gguf"))
    md["tokenizer.ggml.add_eos_token"] = True
    md["tokenizer.ggml.add_bos_token"] = False
    flipped = Tokenizer.from_metadata(md)
    assert flipped.tokenize("Hi") == spm.tokenize("Hi", add_special=False) + [2]


def test_spm_space_prefix_flag():
    md = dict(metadata("llama-spm.gguf"))
    md["tokenizer.ggml.add_space_prefix"] = False  # e.g. Gemma's SPM vocabularies
    tok, ref = Tokenizer.from_metadata(md), tokenizer("llama-spm")
    hello = ref.token_to_id["\u2581Hello"]
    assert ref.tokenize("Hello", add_special=False) == [hello]
    assert hello not in tok.tokenize("Hello", add_special=False)
    assert tok.detokenize(tok.tokenize("Hello", add_special=False)) == "Hello"
    assert tok.detokenize([hello]) == " Hello" and ref.detokenize([hello]) == "Hello"


def test_token_to_piece_rules():
    spm = tokenizer("llama-spm")
    hello = spm.token_to_id["\u2581Hello"]
    assert spm.token_to_piece(hello) == b" Hello"
    assert spm.token_to_piece(hello, lstrip=1) == b"Hello"
    assert spm.token_to_piece(spm.token_to_id["<0x0A>"]) == b"\n"
    assert spm.token_to_piece(1) == b"" and spm.token_to_piece(1, special=True) == b"<s>"
    assert spm.detokenize([1, hello]) == " Hello"  # llama.cpp strips the space of the first token only
    assert spm.detokenize([hello, hello]) == "Hello Hello"
    assert spm.detokenize([1, hello], remove_special=True) == " Hello"
    gpt2 = tokenizer("gpt-2")
    assert gpt2.token_to_piece(gpt2.token_to_id["\u0120world"]) == b" world"
    with pytest.raises(TokenizerError):
        gpt2.token_to_piece(gpt2.n_vocab)


def test_unknown_pre_tokenizer_raises():
    md = dict(metadata("gpt-2.gguf"))
    md["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.raises(TokenizerError, match="no-such-pre"):
        Tokenizer.from_metadata(md)


def test_missing_pre_tokenizer_is_default():
    md = dict(metadata("gpt-2.gguf"))
    del md["tokenizer.ggml.pre"]
    assert Tokenizer.from_metadata(md)._regexes == _REGEXES["default"]  # llama.cpp's fallback (with a warning)


def test_unsupported_model_raises():
    md = dict(metadata("gpt-2.gguf"))
    md["tokenizer.ggml.model"] = "bert"
    with pytest.raises(TokenizerError, match="bert"):
        Tokenizer.from_metadata(md)


def test_load_tokenizer_from_path():
    tok = load_tokenizer(str(FIXTURES / "llama-spm.gguf"))
    assert tok.tokenize("Hello world") == [1, 15043, 3186]


# ---- streaming -------------------------------------------------------------------------------------------


def stream(tok: Tokenizer, ids: list[int], special: bool = False) -> list[str]:
    dec = tok.stream_decoder(special=special)
    return [dec.feed(i) for i in ids] + [dec.flush()]


@pytest.mark.parametrize("name", [n for n in GOLDENS if "@" not in n])
def test_stream_decoder_matches_detokenize(name):
    tok = tokenizer(name)
    bad = []
    for case in golden(name)["cases"]:
        for ids in (case["ids"]["bos_parse"], case["ids"]["plain"]):
            for special in (False, True):
                pieces = stream(tok, ids, special)
                whole = tok.detokenize(ids, special=special)
                if "".join(pieces) != whole:
                    bad.append(f"{case['text']!r} special={special}: {pieces} != {whole!r}")
                elif "\ufffd" not in whole and any("\ufffd" in p for p in pieces):
                    bad.append(f"{case['text']!r} special={special}: U+FFFD in {pieces}")
    assert not bad, report(bad)


@pytest.mark.parametrize(
    "name, text", [("llama-spm", "👨\u200d👩\u200d👧 日本語 🏳\ufe0f\u200d🌈"), ("qwen2", "👨\u200d👩\u200d👧 中文 😀")]
)
def test_stream_decoder_holds_split_characters(name, text):
    tok = tokenizer(name)
    ids = tok.tokenize(text, add_special=False)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.detokenize(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces.count("") > 1, "the text should have characters split across tokens"
    for p in pieces:  # every piece is whole characters: it survives a UTF-8 round trip
        assert p.encode("utf-8").decode("utf-8") == p


def test_stream_decoder_space_cleanup_fuzz():
    tok = tokenizer("gpt-2")  # gpt-2 cleans spaces in detokenize
    assert tok.clean_spaces
    alphabet = [tok.token_to_id[c] for c in "\u0120',.?!smrevtdlx"] + [tok.token_to_id["\u0120'"]]
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.choice(alphabet) for _ in range(rng.randint(0, 12))]
        assert "".join(stream(tok, ids)) == tok.detokenize(ids), ids


@pytest.mark.parametrize("name", [n for n in GOLDENS if "@" not in n])
def test_stream_decoder_random_ids(name):
    """Any ids, including byte tokens that make invalid UTF-8: the stream still joins to detokenize's text."""
    tok = tokenizer(name)
    rng = random.Random(3)
    byte_ids = [i for i, a in enumerate(tok.attrs) if a & 32] or list(range(256))  # 32: BYTE
    for _ in range(300):
        ids = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.randrange(tok.n_vocab) for _ in range(12)]
        for special in (False, True):
            assert "".join(stream(tok, ids, special)) == tok.detokenize(ids, special=special), ids


def test_stream_decoder_reuse_after_flush():
    tok = tokenizer("llama-spm")
    dec = IncrementalDecoder(tok)
    ids = tok.tokenize("Hello world", add_special=False)
    first = dec.feed_many(ids) + dec.flush()
    assert first == dec.feed_many(ids) + dec.flush() == "Hello world"


def llama_cpp_clean_spaces(text: bytes) -> bytes:
    """The three in-place passes of llama_vocab::impl::detokenize (clean_spaces), transcribed literally."""
    t = bytearray(text)
    total = len(t)
    total1, total = total, 1 if total else 0
    for i in range(1, total1):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    total2, total = total, 1 if total else 0
    i = 1
    while i < total2:
        x = t[i]
        if x == 0x27 and i + 1 < total2 and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    total3, total = total, 1 if total else 0
    for i in range(1, total3):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < total3:
            x1 = t[i + 1]
            if x1 in b"td":
                pass
            elif x1 in b"sm":
                total -= 1
            elif i + 2 < total3:
                x2 = t[i + 2]
                if (x1, x2) in ((ord("r"), ord("e")), (ord("v"), ord("e"))):
                    total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def test_clean_spaces_equals_llama_cpp_passes():
    rng = random.Random(1)
    for _ in range(20000):
        s = bytes(rng.choice(b"  ',.?!smrevtdlx") for _ in range(rng.randint(0, 14)))
        assert _clean_spaces(s) == llama_cpp_clean_spaces(s), s


# ---- the module itself -----------------------------------------------------------------------------------


def test_tokenizer_imports_only_stdlib_and_realm_web():
    """Pyodide: realm_web/tokenizer.py and the realm_web modules it imports use the standard library only."""
    seen: set[str] = set()
    todo = ["realm_web.tokenizer"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = ROOT / (mod.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / mod.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names = [node.module or ""]
                if node.module == "realm_web":
                    names = [f"realm_web.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top == "realm_web":
                    todo.append(n)
                else:
                    assert top in sys.stdlib_module_names or top == "__future__", f"{path} imports {n}"
    assert "realm_web.gguf" in seen


def test_code_point_classes_do_not_depend_on_the_interpreter():
    """Categories come from llama.cpp's Unicode 15.1 table (realm_web/unicode_ranges.py), never from
    `unicodedata`, whose version is the interpreter's (3.11: 14.0, 3.13: 15.1, Pyodide 3.14: 16.0)."""
    from realm_web import unicode_ranges
    from realm_web.tokenizer import _LETTER, _SEPARATOR, _UNDEF, _WS, _classify

    assert unicode_ranges.UNICODE_VERSION == "15.1.0"  # llama.cpp's unicode-data.cpp
    for path in (ROOT / "realm_web" / "tokenizer.py", ROOT / "realm_web" / "unicode_ranges.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "unicodedata" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "unicodedata", path
    starts = unicode_ranges.RANGE_STARTS
    assert starts[0] == 0 and list(starts) == sorted(set(starts)) and starts[-1] < 0x110000
    assert len(unicode_ranges.RANGE_FLAGS) == len(starts)
    # new in 15.0 (unassigned on 3.11), new in 15.1, new in 16.0 (assigned on 3.14), beyond the last plane
    assert _classify("\U00031350") == _classify("\U00011f04") == _classify("\U0002ebf0") == _LETTER
    assert _classify("\u1c89") == _classify("\U0010ffff") == _UNDEF
    assert all(_classify(c) & _WS for c in "\t\x85\xa0\u3000\u2028") and _classify("\u3000") == _SEPARATOR | _WS
    assert not _classify("\x1c") & _WS  # \x1c-\x1f are str.isspace() but not White_Space


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        # ids from llama.cpp (Unicode 15.1); Python 3.11's unicodedata reads both code points as unassigned
        ("llama-bpe", "\U00031350'a", [172, 109, 235, 238, 26248]),
        ("qwen2", "a\U00011f04.a", [64, 128240, 120, 226, 5849]),
    ],
)
def test_code_points_newer_than_the_interpreter(name, text, ids):
    assert tokenizer(name).tokenize(text, add_special=False) == ids


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "llama-bpe", "qwen2"])
def test_long_prompts_are_fast(name):
    """A few thousand tokens of text, and the shapes that make naive merging quadratic, in well under a second
    each on a slow machine (the bound is loose: this catches O(n^2), not small slowdowns)."""
    tok = tokenizer(name)
    rng = random.Random(2)
    letters = "abcdefghijklmnopqrstuvwxyz"
    prose = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(4000))
    for text in (prose, "QUJDRA" * 3000, " " * 10000 + "x", "1234567890" * 1000, "日本語" * 3000):
        tok._bpe_cache.clear()
        t0 = time.perf_counter()
        ids = tok.tokenize(text)
        dt = time.perf_counter() - t0
        assert dt < 3.0, f"{len(text)} chars took {dt:.2f} s"
        assert tok.detokenize(ids, remove_special=True).lstrip() == text.lstrip()
