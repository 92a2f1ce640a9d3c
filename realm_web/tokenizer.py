"""Tokenizer: text <-> token ids exactly as llama.cpp does it, from `tokenizer.ggml.*` metadata (pure Python).

Two vocabulary types, each a port of llama.cpp's `src/llama-vocab.cpp` and `src/unicode.cpp`:

    "llama"  SentencePiece (llm_tokenizer_spm): spaces become U+2581, an optional space prefix, then the
             bigram whose merged text is a token with the highest score merges first (a heap); what never
             forms a token falls back to `<0xNN>` byte tokens.
    "gpt2"   byte-level BPE (llm_tokenizer_bpe): a pre-tokenizer chosen by `tokenizer.ggml.pre` splits the
             text into words, each word's UTF-8 bytes map to printable characters (GPT-2's bytes_to_unicode),
             then the pair with the lowest merge rank merges first (a heap).

Before either runs, special tokens are cut out of the text (llama.cpp's tokenizer_st_partition):
user-defined tokens always, control and unknown tokens only with `parse_special=True`.

The pre-tokenizers are llama.cpp's regex lists, dispatched as llama.cpp dispatches them: the lists it runs
with a hand-written scanner (gpt-2, llama3, qwen2, qwen35) are ported scanner by scanner, and the others run
through `re` on llama.cpp's "collapsed" text, where every non-ASCII code point becomes one byte naming its
category (unicode.cpp, unicode_regex_split).

Code point categories come from `realm_web/unicode_ranges.py`, generated (scripts/make_unicode_ranges.py) from
llama.cpp's own table (unicode-data.cpp, Unicode 15.1), never from `unicodedata`, whose Unicode version is the
interpreter's (14.0 on Python 3.11, 16.0 on Pyodide's 3.14): token ids do not depend on the Python running.

Where llama.cpp's result depends on hash or sort order (which of several end-of-turn texts becomes `eot_id`,
the order of special tokens of equal length), the first candidate in llama.cpp's list, or the lower id, wins.
"""

from __future__ import annotations

import codecs
import heapq
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import IntEnum, IntFlag
from typing import Any

from realm_web.errors import RealmError
from realm_web.gguf import GGUFFile, open_gguf
from realm_web.unicode_ranges import RANGE_FLAGS, RANGE_STARTS

__all__ = [
    "SUPPORTED_PRE",
    "IncrementalDecoder",
    "TokenAttr",
    "TokenType",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
]


class TokenizerError(RealmError):
    """The vocabulary cannot be used (unknown model or pre-tokenizer, bad metadata) or an id is invalid."""


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.h enum llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenAttr(IntFlag):
    """Per-token attributes llama.cpp derives from the token types (llama.h enum llama_token_attr)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


_TYPE_TO_ATTR = {
    TokenType.UNDEFINED: TokenAttr.UNDEFINED,
    TokenType.NORMAL: TokenAttr.NORMAL,
    TokenType.UNKNOWN: TokenAttr.UNKNOWN,
    TokenType.CONTROL: TokenAttr.CONTROL,
    TokenType.USER_DEFINED: TokenAttr.USER_DEFINED,
    TokenType.UNUSED: TokenAttr.UNUSED,
    TokenType.BYTE: TokenAttr.BYTE,
}
_A_UNKNOWN, _A_UNUSED, _A_NORMAL, _A_CONTROL, _A_USER, _A_BYTE = 1, 2, 4, 8, 16, 32
_A_LSTRIP, _A_RSTRIP = 128, 256

# ---- code point classes (unicode.h unicode_cpt_flags) ------------------------------------------------------

_UNDEF, _NUMBER, _LETTER, _SEPARATOR, _MARK, _PUNCT, _SYMBOL, _CONTROL = 1, 2, 4, 8, 16, 32, 64, 128
_WS = 0x100  # regex \s
_CATEGORY_MASK = 0xFF


# Per 256-code-point block: the span of RANGE_STARTS indices to bisect, and the block's flags where one range
# covers all of it (most blocks), else -1.
_BLOCK_LO = [bisect_right(RANGE_STARTS, b << 8) - 1 for b in range(0x1100)]
_BLOCK_HI = [bisect_right(RANGE_STARTS, b << 8 | 0xFF) for b in range(0x1100)]
_BLOCK_FLAGS = [RANGE_FLAGS[lo] if hi - lo == 1 else -1 for lo, hi in zip(_BLOCK_LO, _BLOCK_HI, strict=True)]


def _classify(ch: str) -> int:
    """unicode_cpt_flags_from_cpt: the category flag, plus _WS for White_Space (llama.cpp's tables)."""
    c = ord(ch)
    f = _BLOCK_FLAGS[c >> 8]
    if f < 0:
        f = RANGE_FLAGS[bisect_right(RANGE_STARTS, c, _BLOCK_LO[c >> 8], _BLOCK_HI[c >> 8]) - 1]
    return f


# Filled for Latin-1 at import, then lazily: a prompt only ever meets a few hundred distinct code points.
_FLAGS: dict[str, int] = {chr(c): _classify(chr(c)) for c in range(256)}


def _flags_of(text: str) -> list[int]:
    get = _FLAGS.get
    out = [get(c, 0) for c in text]  # a real code point's flags are never 0 (unassigned is _UNDEF)
    if 0 in out:
        for i, f in enumerate(out):
            if f == 0:
                out[i] = f = _classify(text[i])
                if len(_FLAGS) < 1 << 16:  # bounded: hostile text could name every code point
                    _FLAGS[text[i]] = f
    return out


# ---- byte-level BPE byte <-> unicode (unicode.cpp unicode_byte_to_utf8_map) ---------------------------------


def _bytes_to_unicode() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    for b in keep:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_UNICODE = _bytes_to_unicode()
_UNICODE_TO_BYTE = {ch: b for b, ch in enumerate(_BYTE_TO_UNICODE)}
_BYTE_ENCODE = str.maketrans({chr(b): ch for b, ch in enumerate(_BYTE_TO_UNICODE)})  # applied to latin-1 text


def _utf8(text: str) -> bytes:
    # llama.cpp works on bytes and decodes lone surrogates like any other 3-byte sequence
    return text.encode("utf-8", "surrogatepass")


# ---- pre-tokenizers (llama-vocab.cpp llm_tokenizer_bpe, unicode.cpp unicode_regex_split) --------------------

# llama.cpp's regex strings, verbatim; the first four are recognised by string and run by a scanner.
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RE_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_QWEN35 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "llama3": (_RE_LLAMA3,),
    "gpt2": (_RE_GPT2,),
    "qwen2": (_RE_QWEN2,),
    "qwen35": (_RE_QWEN35,),
    "starcoder": (r"\p{N}", _RE_GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, "[0-9][0-9][0-9]"),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        (
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
            " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
        ),
    ),
    "spark2_5": (
        r"\p{N}{1,3}",
        "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        (
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
            " ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+"
        ),
        r"\p{N}",
    ),
    "youtu": (
        (
            "[\uac00-\ud7a3\u3131-\u318e]+|"
            "[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|"
            "[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
        ),
        (
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|"
            r"'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|"
            r"'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
            r"\s+(?!\S)|\s+"
        ),
    ),
    "jais-2": (
        (
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|"
            r"\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
        ),
    ),
    "poro": (" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",),
    "viking": (
        " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",
        r"\p{N}",
    ),
    "tekken": (
        (
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|"
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "gpt-4o": (
        (
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|"
            r"'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|"
            r"'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "granite-embed-multi": (
        (
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|"
            r"'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|"
            r"'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "bailingmoe": (
        (
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
        ),
    ),
    "seed-coder": (
        (
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}|"
            r" ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "laguna": (
        r"[^\n]+|[\n]+",
        (
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "exaone-moe": (
        (
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|"
            r"[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|"
            r"\s+(?!\S)|\s+"
        ),
    ),
    "minicpm5": (
        r"\p{N}{1,3}",
        (
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    # the non-ASCII ranges are escaped: some of these code points (U+1F7D, U+2126, U+212A..) change under NFC
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"),
    "deepseek-llm": (
        "[\r\n]",
        "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
        "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
        "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
        "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
        "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
        "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
        "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
        "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
        "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
        "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
        "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
        "\U0001e900-\U0001e943]+",
        "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
        r"\s+$",
        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        r"\p{N}+",
    ),
}


class _Pre:
    """What a `tokenizer.ggml.pre` name selects in llama_vocab::impl::load."""

    def __init__(self, regexes: str, *, clean_spaces: bool = True, ignore_merges: bool = False,
                 add_bos: bool = False, no_bos: bool = False):  # fmt: skip
        self.regexes = _REGEXES[regexes]
        self.clean_spaces = clean_spaces
        self.ignore_merges = ignore_merges
        self.add_bos = add_bos
        self.no_bos = no_bos  # the default bos id is dropped (chatglm)


# tokenizer.ggml.pre names as llama_vocab::impl::load groups them, with what each group sets
_PRE_GROUPS = (
    ("default", _Pre("default")),
    ("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
     _Pre("llama3", ignore_merges=True, add_bos=True)),
    ("dbrx smaug-bpe", _Pre("llama3")),
    ("chatglm-bpe", _Pre("llama3", no_bos=True)),
    ("glm4 glm5", _Pre("llama3", no_bos=True, ignore_merges=True)),
    ("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert jina-v1-en jina-v2-code "
     "roberta-bpe mpt olmo jais exaone4", _Pre("gpt2")),
    ("trillion granite-docling", _Pre("gpt2", clean_spaces=False)),
    ("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2", _Pre("qwen2", clean_spaces=False)),
    ("stablelm2 megrez", _Pre("qwen2")),
    ("qwen35", _Pre("qwen35", clean_spaces=False)),
    ("starcoder refact codeshell exaone minerva-7b mellum2", _Pre("starcoder")),
    ("command-r smollm", _Pre("starcoder", clean_spaces=False)),
    ("falcon", _Pre("falcon")),
    ("deepseek-coder", _Pre("deepseek-coder", clean_spaces=False)),
    ("deepseek-llm", _Pre("deepseek-llm", clean_spaces=False)),
    ("deepseek-v3 hunyuan-dense hy_v4 joyai-llm", _Pre("deepseek-v3", clean_spaces=False)),
    ("spark2_5", _Pre("spark2_5", clean_spaces=False)),
    ("youtu", _Pre("youtu", clean_spaces=False, ignore_merges=True)),
    ("jais-2", _Pre("jais-2")),
    ("poro-chat", _Pre("poro", clean_spaces=False)),
    ("bloom gpt3-finnish", _Pre("poro")),
    ("viking", _Pre("viking", clean_spaces=False)),
    ("tekken", _Pre("tekken", clean_spaces=False, ignore_merges=True, add_bos=True)),
    ("gpt-4o llama4 kanana2 talkie minimax-m2", _Pre("gpt-4o", clean_spaces=False)),
    ("granite-embed-multi-97m", _Pre("granite-embed-multi", clean_spaces=False, ignore_merges=True)),
    ("bailingmoe bailingmoe2 llada-moe", _Pre("bailingmoe", clean_spaces=False)),
    ("seed-coder", _Pre("seed-coder", clean_spaces=False)),
    ("ufakzeka", _Pre("ufakzeka", clean_spaces=False)),
    ("laguna", _Pre("laguna", clean_spaces=False)),
    ("exaone-moe", _Pre("exaone-moe")),
    ("minicpm5", _Pre("minicpm5", ignore_merges=True)),
)  # fmt: skip
_PRE = {name: pre for names, pre in _PRE_GROUPS for name in names.split()}
SUPPORTED_PRE = frozenset(_PRE)

Offsets = list[int]  # lengths in code points of consecutive pieces of the text


def _split_gpt2(text: str, fl: list[int], offsets: Offsets) -> Offsets:
    """unicode_regex_split_custom_gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"""
    out: Offsets = []
    start = 0
    for length in offsets:
        end = start + length
        pos = start
        while pos < end:
            c = text[pos]
            if c == "'" and pos + 1 < end:
                c1 = text[pos + 1]
                if c1 in "stmd":
                    out.append(2)
                    pos += 2
                    continue
                if pos + 2 < end and text[pos + 1 : pos + 3] in ("re", "ve", "ll"):
                    out.append(3)
                    pos += 3
                    continue
            space = c == " "
            f2 = (fl[pos + 1] if pos + 1 < end else 0) if space else fl[pos]
            p = pos + space
            if f2 & _LETTER:
                p += 1
                while p < end and fl[p] & _LETTER:
                    p += 1
            elif f2 & _NUMBER:
                p += 1
                while p < end and fl[p] & _NUMBER:
                    p += 1
            elif f2 and not f2 & (_WS | _LETTER | _NUMBER):
                p += 1
                while p < end and not fl[p] & (_WS | _LETTER | _NUMBER):
                    p += 1
            else:
                n = 0
                while pos + n < end and fl[pos + n] & _WS:
                    n += 1
                if n > 1 and pos + n < end:  # \s+(?!\S): leave the last space to the next word
                    p = pos + n - 1
                elif n > 0:
                    p = pos + n
                else:
                    p = pos + 1
            out.append(p - pos)
            pos = p
        start = end
    return out


def _llama3_like(max_digits: int, word: int) -> Callable[[str, list[int], Offsets], Offsets]:
    """unicode_regex_split_custom_llama3 / _qwen2 / _qwen35: they differ in the digit run (3 or 1) and in
    whether combining marks belong to letter runs (`word`)."""
    stop = _WS | word | _NUMBER

    def split(text: str, fl: list[int], offsets: Offsets) -> Offsets:
        out: Offsets = []
        start = 0
        for length in offsets:
            end = start + length
            pos = start
            while pos < end:
                c = text[pos]
                f = fl[pos]
                if c == "'" and pos + 1 < end:  # (?i:'s|'t|'re|'ve|'m|'ll|'d)
                    c1 = text[pos + 1]
                    if c1 in "sStTmMdD":
                        out.append(2)
                        pos += 2
                        continue
                    if pos + 2 < end and text[pos + 1 : pos + 3] in _RE_VE_LL:
                        out.append(3)
                        pos += 3
                        continue
                if not (c == "\r" or c == "\n" or f & _NUMBER) and (
                    f & word or (pos + 1 < end and fl[pos + 1] & word)
                ):  # [^\r\n\p{L}\p{N}]?\p{L}+
                    p = pos + 1
                    while p < end and fl[p] & word:
                        p += 1
                    out.append(p - pos)
                    pos = p
                    continue
                if f & _NUMBER:  # \p{N}{1,3} or \p{N}
                    p = pos
                    while p < end and fl[p] & _NUMBER and p - pos < max_digits:
                        p += 1
                    out.append(p - pos)
                    pos = p
                    continue
                f2 = (fl[pos + 1] if pos + 1 < end else 0) if c == " " else f
                if not f2 & stop:  # ` ?[^\s\p{L}\p{N}]+[\r\n]*` (llama.cpp tests the first code point's flags)
                    p = pos + (c == " ")
                    while p < end and not fl[p] & stop:
                        p += 1
                    while p < end and text[p] in "\r\n":
                        p += 1
                    out.append(p - pos)
                    pos = p
                    continue
                n = 0
                last_rn = 0
                while pos + n < end and fl[pos + n] & _WS:
                    if text[pos + n] in "\r\n":
                        last_rn = pos + n + 1
                    n += 1
                if last_rn:  # \s*[\r\n]+
                    p = last_rn
                elif n > 1 and pos + n < end:  # \s+(?!\S)
                    p = pos + n - 1
                elif n > 0:  # \s+
                    p = pos + n
                else:
                    p = pos + 1
                out.append(p - pos)
                pos = p
            start = end
        return out

    return split


# only ASCII letters lowercase to s/t/m/d/r/e/v/l in unicode_tolower's table, so these sets are exact
_RE_VE_LL = frozenset(a + b for x, y in ("re", "ve", "ll") for a in (x, x.upper()) for b in (y, y.upper()))

_CUSTOM_SPLITTERS: dict[str, Callable[[str, list[int], Offsets], Offsets]] = {
    _RE_GPT2: _split_gpt2,
    _RE_LLAMA3: _llama3_like(3, _LETTER),
    _RE_QWEN2: _llama3_like(1, _LETTER),
    _RE_QWEN35: _llama3_like(1, _LETTER | _MARK),
}

# unicode_regex_split: k_ucat_enum / k_ucat_cpt / k_ucat_map. A \p{..} class becomes its collapsed byte plus
# the ASCII members of the category.
_UCAT = {r"\p{N}": _NUMBER, r"\p{L}": _LETTER, r"\p{P}": _PUNCT, r"\p{M}": _MARK, r"\p{S}": _SYMBOL}
_UCAT.update(dict.fromkeys((r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}", r"\p{Lo}"), _LETTER))
_UCAT_CPT = {_NUMBER: "\xd1", _LETTER: "\xd2", _PUNCT: "\xd3", _MARK: "\xd4", _SYMBOL: "\xd5"}
_UCAT_MAP = {
    _NUMBER: "0-9",
    _LETTER: "A-Za-z",
    _PUNCT: r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    _MARK: "",
    _SYMBOL: r"\$\+<->^`\|\~",
}


def _uses_categories(expr: str) -> bool:
    return any(k in expr for k in _UCAT)


def _collapse_regex(expr: str) -> str:
    """Port of the regex_expr_collapsed loop in unicode_regex_split."""
    out = []
    inside = False
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and ch == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif expr.startswith("\\p{", i) and i + 3 < len(expr):
            close = expr.find("}", i + 3)
            cat = _UCAT.get(expr[i : close + 1]) if 0 <= close <= i + 10 else None
            if cat is None:
                out.append(ch)
            else:
                body = _UCAT_CPT[cat] + _UCAT_MAP[cat]
                out.append(body if inside else f"[{body}]")
                i = close
        else:
            out.append(ch)
        i += 1
    return "".join(out)


_STL_CACHE: dict[str, tuple[re.Pattern[str], bool]] = {}


def _stl_regex(expr: str) -> tuple[re.Pattern[str], bool]:
    """`expr` compiled for `re` as std::regex (ECMAScript) reads it, and whether it runs on collapsed text.

    re.ASCII makes \\s the C locale's [ \\t\\n\\v\\f\\r] that std::regex uses; ECMAScript's `$` is the end of
    the input only, which is `re`'s \\Z."""
    hit = _STL_CACHE.get(expr)
    if hit is None:
        collapsed = _uses_categories(expr)
        pattern = _collapse_regex(expr) if collapsed else expr
        if pattern.endswith("$") and not pattern.endswith("\\$"):
            pattern = pattern[:-1] + r"\Z"
        hit = _STL_CACHE[expr] = (re.compile(pattern, re.ASCII), collapsed)
    return hit


def _collapse_text(text: str, fl: list[int]) -> str:
    """Every non-ASCII code point as one byte: \\x0b for whitespace, \\xd1.. for its category, else \\xd0."""
    out = list(text)
    for i, c in enumerate(text):
        if c >= "\x80":
            f = fl[i]
            out[i] = "\x0b" if f & _WS else _UCAT_CPT.get(f & _CATEGORY_MASK, "\xd0")
    return "".join(out)


def _wide_text(text: str, fl: list[int]) -> str:
    """The text std::wregex sees: non-ASCII whitespace replaced by \\x0b."""
    return "".join("\x0b" if c >= "\x80" and fl[i] & _WS else c for i, c in enumerate(text))


def _split_stl(subject: str, pattern: re.Pattern[str], offsets: Offsets) -> Offsets:
    """unicode_regex_split_stl: every match and every gap between matches becomes a piece."""
    out: Offsets = []
    start = 0
    for length in offsets:
        chunk = subject[start : start + length]
        at = 0
        for m in pattern.finditer(chunk):
            s, e = m.span()
            if s > at:
                out.append(s - at)
            out.append(e - s)
            at = e
        if at < length:
            out.append(length - at)
        start += length
    return out


def _pre_split(text: str, regexes: Sequence[str]) -> list[str]:
    """unicode_regex_split without the byte encoding: the words of `text`."""
    fl = _flags_of(text)
    offsets = [len(text)]
    collapsed = wide = None
    for expr in regexes:
        custom = _CUSTOM_SPLITTERS.get(expr)
        if custom is not None:
            offsets = custom(text, fl, offsets)
            continue
        pattern, use_collapsed = _stl_regex(expr)
        if use_collapsed:
            if collapsed is None:
                collapsed = _collapse_text(text, fl)
            offsets = _split_stl(collapsed, pattern, offsets)
        else:
            if wide is None:
                wide = _wide_text(text, fl)
            offsets = _split_stl(wide, pattern, offsets)
    words = []
    pos = 0
    for n in offsets:
        words.append(text[pos : pos + n])
        pos += n
    return words


# ---- detokenizer space cleanup (llama_vocab::impl::detokenize, clean_spaces) ---------------------------------
# The three in-place passes there are equivalent to these substitutions, applied in order; each pattern starts
# with a space and spans at most 4 bytes, which is what IncrementalDecoder relies on.
_CLEAN_1 = re.compile(rb" (?=[?!.,])")  # " ?" " !" " ." " ," lose the space
_CLEAN_3 = re.compile(rb" (?='(?:s|m|re|ve))")  # " 's" " 'm" " 're" " 've" lose the space


def _clean_spaces(data: bytes) -> bytes:
    data = _CLEAN_1.sub(b"", data)
    data = data.replace(b" ' ", b"'")  # a lone apostrophe between spaces loses both
    return _CLEAN_3.sub(b"", data)


# ---- the tokenizer -------------------------------------------------------------------------------------------

_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")  # fmt: skip
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                        "<｜end▁of▁sentence｜>", "[e~["))  # fmt: skip
_SPECIAL_KEYS = {  # "seperator" is llama.cpp's spelling of the key
    "bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
    "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id",
    "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id", "fim_mid": "fim_mid_token_id",
    "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id", "fim_sep": "fim_sep_token_id",
}  # fmt: skip
_DEPRECATED_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}
_C_SPACE = " \t\n\v\f\r"  # C isspace in the "C" locale: what lstrip/rstrip special tokens strip
_BPE_CACHE_MAX = 1 << 16


class Tokenizer:
    """A llama.cpp-compatible tokenizer built from GGUF `tokenizer.ggml.*` metadata.

    Token ids are plain ints. The special ids (`bos_id`, `eos_id`, ...) are None where the vocabulary has none.
    """

    def __init__(self, metadata: Mapping[str, Any]):
        md = metadata
        self.model: str = _str_key(md, "tokenizer.ggml.model")
        pre = md.get("tokenizer.ggml.pre")
        self.pre: str = pre if isinstance(pre, str) else ""
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise TokenizerError("tokenizer.ggml.tokens is missing or empty")
        n = len(tokens)
        self.tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_to_id) != n:
            raise TokenizerError("tokenizer.ggml.tokens has duplicate tokens (llama.cpp refuses such a vocabulary)")
        scores = md.get("tokenizer.ggml.scores")
        self.scores: list[float] = [float(s) for s in scores[:n]] if scores is not None else [0.0] * n
        types = md.get("tokenizer.ggml.token_type")
        if scores is not None and len(scores) < n or types is not None and len(types) < n:
            raise TokenizerError("tokenizer.ggml.scores/token_type are shorter than tokenizer.ggml.tokens")
        self.token_types: list[int] = list(types[:n]) if types is not None else [TokenType.NORMAL] * n
        self.attrs: list[int] = [int(_TYPE_TO_ATTR.get(t, TokenAttr.UNDEFINED)) for t in self.token_types]

        ids: dict[str, int | None] = dict.fromkeys(_SPECIAL_KEYS)
        self.add_space_prefix = False
        self.clean_spaces = False
        self.add_bos = False
        self.add_eos = False
        self.ignore_merges = False
        self._regexes: tuple[str, ...] = ()
        self.bpe_ranks: dict[tuple[str, str], int] = {}
        if self.model == "llama":
            ids.update(bos=1, eos=2, unk=0)
            self.add_space_prefix = True
            self.add_bos = True
        elif self.model == "gpt2":
            ids.update(bos=11, eos=11)
            if self.pre not in _PRE and self.pre != "":
                known = ", ".join(sorted(_PRE))
                raise TokenizerError(f"unknown pre-tokenizer {self.pre!r} (tokenizer.ggml.pre); supported: {known}")
            # llama.cpp runs a file without tokenizer.ggml.pre with the "default" regexes (and warns)
            p = _PRE[self.pre or "default"]
            self._regexes = p.regexes
            self.clean_spaces = p.clean_spaces
            self.ignore_merges = p.ignore_merges
            self.add_bos = p.add_bos
            if p.no_bos:
                ids["bos"] = None
            self.bpe_ranks = _bpe_ranks(md.get("tokenizer.ggml.merges"))
        else:
            raise TokenizerError(
                f"unsupported tokenizer model {self.model!r} (tokenizer.ggml.model): realm_web reads 'llama' and 'gpt2'"
            )
        self.add_space_prefix = _bool_key(md, "tokenizer.ggml.add_space_prefix", self.add_space_prefix)

        for name, key in _SPECIAL_KEYS.items():  # defaults outside the vocabulary are dropped, then metadata wins
            if ids[name] is not None and ids[name] >= n:
                ids[name] = None
            for k in (key, _DEPRECATED_KEYS.get(name)):
                v = md.get(f"tokenizer.ggml.{k}") if k else None
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
                    ids[name] = v
        self.add_bos = _bool_key(md, "tokenizer.ggml.add_bos_token", self.add_bos)
        self.add_eos = _bool_key(md, "tokenizer.ggml.add_eos_token", self.add_eos)
        self._detect_special(ids)
        self.bos_id, self.eos_id, self.eot_id, self.eom_id = ids["bos"], ids["eos"], ids["eot"], ids["eom"]
        self.unk_id, self.sep_id, self.pad_id, self.mask_id = ids["unk"], ids["sep"], ids["pad"], ids["mask"]
        self.fim_ids = {k: v for k, v in ids.items() if k.startswith("fim_")}

        # special tokens, longest text (in bytes) first; ties by id (llama.cpp's std::sort leaves them unordered)
        special = [i for i, a in enumerate(self.attrs) if a & (_A_CONTROL | _A_USER | _A_UNKNOWN)]
        special.sort(key=lambda i: -len(_utf8(self.tokens[i])))
        self._special = special
        self._model_attrs(md)
        self._pieces: dict[int, bytes] = {}
        self._bpe_cache: dict[str, list[int]] = {}
        self._byte_ids: list[int | None] = [self._find_byte_token(b) for b in range(256)] if self.is_spm else []

    @classmethod
    def from_gguf(cls, gguf_file: GGUFFile) -> Tokenizer:
        """The tokenizer of an open GGUF file (metadata only; tensor data is never read)."""
        return cls(gguf_file.metadata)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        return cls(metadata)

    # ---- properties ------------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def is_spm(self) -> bool:
        return self.model == "llama"

    def is_eog(self, token_id: int) -> bool:
        """Whether generating `token_id` ends generation (llama_vocab_is_eog)."""
        return token_id in self.eog_ids

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab})"

    # ---- loading details (llama_vocab::impl::load) ---------------------------------------------------

    def _detect_special(self, ids: dict[str, int | None]) -> None:
        """Find EOT/EOM/FIM/EOG tokens by text and mark them control, as llama.cpp does.

        llama.cpp walks an unordered_map, so where several candidate texts are present which one becomes e.g.
        `eot_id` depends on hashing; here the first candidate in llama.cpp's list wins."""
        tid, attrs = self.token_to_id, self.attrs

        def find(name: str, texts: Iterable[str]) -> None:
            if ids[name] is not None:
                return
            for t in texts:
                i = tid.get(t)
                if i is not None:
                    ids[name] = i
                    attrs[i] |= _A_CONTROL
                    return

        find("eot", _EOT_TEXTS)
        find("eom", _EOM_TEXTS)
        for name, texts in _FIM_TEXTS.items():
            find(name, texts)
        for i, a in enumerate(attrs):  # control tokens named "unused" are unused
            if a & _A_CONTROL and not a & _A_UNUSED and "unused" in self.tokens[i]:
                attrs[i] = a | _A_UNUSED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] is not None}
        for t in _EOG_TEXTS:
            i = tid.get(t)
            if i is not None:
                eog.add(i)
                attrs[i] |= _A_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
            if t in tid:
                attrs[tid[t]] = _A_USER
        eog.update(ids[k] for k in ("eos", "eot", "eom") if ids[k] is not None)
        texts = {self.tokens[i] for i in eog}
        end = tid.get("<|end|>")
        if end in eog and (
            {"<|return|>", "<|call|>"} <= texts or ("<|calls|>" in texts and "<|flush|>" in texts)
        ):  # o200k_harmony, solar-open: <|end|> ends a message, not generation
            eog.discard(end)
            attrs[end] = _A_USER
        s = tid.get("</s>")
        if s in eog and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(s)
            attrs[s] = _A_NORMAL
        self.eog_ids: frozenset[int] = frozenset(eog)

    def _model_attrs(self, md: Mapping[str, Any]) -> None:
        """Per-model lstrip/rstrip attributes llama.cpp sets by name (they are missing from GGUF files)."""
        name = str(md.get("general.name", "")).lower()
        arch = str(md.get("general.architecture", ""))
        tid, attrs = self.token_to_id, self.attrs
        if any(s in self.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
        ):
            if "<mask>" in tid:
                attrs[tid["<mask>"]] |= _A_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self._special:
                attrs[i] |= _A_RSTRIP
            if "</s>" in tid:
                attrs[tid["</s>"]] |= _A_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in tid:
                    attrs[tid[t]] &= ~_A_RSTRIP
        elif "modern-bert" in name and "[MASK]" in tid:
            attrs[tid["[MASK]"]] |= _A_LSTRIP

    def _find_byte_token(self, b: int) -> int | None:
        """llama_vocab::byte_to_token for SPM: <0xNN>, else the byte itself as a one-character token."""
        i = self.token_to_id.get(f"<0x{b:02X}>")
        if i is None and b < 0x80:
            i = self.token_to_id.get(chr(b))
        return i

    # ---- text -> ids -------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text` (llama_tokenize). `add_special` adds BOS/EOS where the vocabulary asks for them;
        `parse_special` lets control tokens written in the text (e.g. "<|im_start|>") become their ids."""
        out: list[int] = []
        fragments: list[str | int] = self._partition(text, parse_special) if text else []
        if self.is_spm:
            prev_special = True  # the text after BOS or a special token gets the space prefix
            if add_special and self.add_bos:
                out.append(self._need(self.bos_id, "bos"))
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._spm(frag.replace(" ", "\u2581"), out)
                prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self._need(self.bos_id, "bos"))
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe(frag, out)
        if add_special and self.add_eos:
            out.append(self._need(self.eos_id, "eos"))
        return out

    def _need(self, token_id: int | None, what: str) -> int:
        if token_id is None:
            raise TokenizerError(f"the vocabulary asks for a {what} token but has none")
        return token_id

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: cut special tokens out of the text, longest first."""
        frags: list[str | int] = [text]
        skip = 0 if parse_special else _A_CONTROL | _A_UNKNOWN  # user-defined tokens are always matched
        for tid in self._special:
            attr = self.attrs[tid]
            if attr & skip:
                continue
            tok = self.tokens[tid]
            if not any(isinstance(f, str) and tok in f for f in frags):
                continue
            new: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int) or tok not in frag:
                    new.append(frag)
                    continue
                pos, end = 0, len(frag)
                while True:
                    m = frag.find(tok, pos)
                    if m < 0:
                        if pos < end:
                            new.append(frag[pos:])
                        break
                    left = m
                    if attr & _A_LSTRIP:
                        while left > pos and frag[left - 1] in _C_SPACE:
                            left -= 1
                    if left > pos:
                        new.append(frag[pos:left])
                    new.append(tid)
                    pos = m + len(tok)
                    if attr & _A_RSTRIP:
                        while pos < end and frag[pos] in _C_SPACE:
                            pos += 1
            frags = new
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on escaped text: merge the best-scoring bigram first."""
        n = len(text)
        if n == 0:
            return
        tok, scores = self.token_to_id, self.scores
        size = [1] * n  # symbol i spans text[i : i + size[i]]; 0 once merged into its left neighbour
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []
        rev_merge: dict[str, tuple[int, int]] = {}
        for i in range(1, n):
            s = text[i - 1 : i + 1]
            t = tok.get(s)
            if t is not None:
                heap.append((-scores[t], i - 1, i, 2))  # highest score first, then leftmost
                rev_merge[s] = (i - 1, i)
        heapq.heapify(heap)
        push = heapq.heappush
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            nl, nr = size[left], size[right]
            if nl == 0 or nr == 0 or nl + nr != merged:
                continue  # stale: one side has merged since
            size[left] = merged
            size[right] = 0
            after = nxt[left] = nxt[right]
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                s = text[before : left + merged]
                t = tok.get(s)
                if t is not None:
                    push(heap, (-scores[t], before, left, len(s)))
                    rev_merge[s] = (before, left)
            if after >= 0:
                s = text[left : after + size[after]]
                t = tok.get(s)
                if t is not None:
                    push(heap, (-scores[t], left, after, len(s)))
                    rev_merge[s] = (left, after)

        def resegment(i: int) -> None:
            s = text[i : i + size[i]]
            t = tok.get(s)
            if t is not None:
                out.append(t)
                return
            pair = rev_merge.get(s)
            if pair is None:
                for b in _utf8(s):
                    t = self._byte_ids[b]
                    if t is None:
                        raise TokenizerError(f"the vocabulary has no byte token for 0x{b:02X}")
                    out.append(t)
                return
            resegment(pair[0])
            resegment(pair[1])

        i = 0
        while i != -1:
            resegment(i)
            i = nxt[i]

    def _bpe(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_bpe_session::tokenize: pre-tokenize, byte-encode, merge each word."""
        cache = self._bpe_cache
        for word in _pre_split(text, self._regexes):
            if not word:
                continue
            word = _utf8(word).decode("latin-1").translate(_BYTE_ENCODE)
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(cache) >= _BPE_CACHE_MAX:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        tok = self.token_to_id
        if self.ignore_merges and word in tok:
            return [tok[word]]
        sym = list(word)
        n = len(sym)
        if n > 1:
            ranks = self.bpe_ranks
            prev = list(range(-1, n - 1))
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            heap: list[tuple[int, int, int, str]] = []
            for i in range(1, n):
                r = ranks.get((sym[i - 1], sym[i]))
                if r is not None:
                    heap.append((r, i - 1, i, sym[i - 1] + sym[i]))  # lowest rank first, then leftmost
            heapq.heapify(heap)
            while heap:
                _, left, right, merged = heapq.heappop(heap)
                ls, rs = sym[left], sym[right]
                if not ls or not rs or ls + rs != merged:
                    continue  # stale
                sym[left] = merged
                sym[right] = ""
                after = nxt[left] = nxt[right]
                if after >= 0:
                    prev[after] = left
                before = prev[left]
                if before >= 0:
                    r = ranks.get((sym[before], merged))
                    if r is not None:
                        heapq.heappush(heap, (r, before, left, sym[before] + merged))
                if after >= 0:
                    r = ranks.get((merged, sym[after]))
                    if r is not None:
                        heapq.heappush(heap, (r, left, after, merged + sym[after]))
        ids: list[int] = []
        for s in sym:
            if not s:
                continue
            t = tok.get(s)
            if t is not None:
                ids.append(t)
                continue
            for b in _utf8(s):  # no such token: its bytes one by one, where a byte alone is a token
                t = tok.get(chr(b)) if b < 0x80 else None
                if t is not None:
                    ids.append(t)
        return ids

    # ---- ids -> text -------------------------------------------------------------------------------------

    def token_to_piece(self, token_id: int, special: bool = False, lstrip: int = 0) -> bytes:
        """The bytes of one token (llama_token_to_piece). Control and unknown tokens render only with
        `special`; `lstrip` drops up to that many leading spaces."""
        if not 0 <= token_id < len(self.tokens):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {len(self.tokens)}")
        if not special and self.attrs[token_id] & (_A_UNKNOWN | _A_CONTROL):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id)
        while lstrip > 0 and piece[:1] == b" ":
            piece = piece[1:]
            lstrip -= 1
        return piece

    def _piece(self, token_id: int) -> bytes:
        """llama.cpp's token_to_piece cache entry (special=true)."""
        text, attr = self.tokens[token_id], self.attrs[token_id]
        if attr & (_A_UNKNOWN | _A_CONTROL | _A_USER):
            return _utf8(text)
        if attr & _A_NORMAL:
            if self.is_spm:
                return _utf8(text.replace("\u2581", " "))
            return _decode_byte_level(text)
        if attr & _A_BYTE:
            m = re.match(r"[0-9A-Fa-f]{1,2}", text[3:5])  # strtol(text.substr(3, 2), 16): 0 when not hex
            return bytes((int(m.group(), 16) if m else 0,))
        return b""  # unused and undefined tokens have no text

    def detokenize_bytes(self, ids: Sequence[int], special: bool = False, remove_special: bool = False) -> bytes:
        """llama_detokenize as bytes: the pieces joined, the first token's leading space dropped where the
        vocabulary adds a space prefix, and (for most BPE vocabularies) llama.cpp's space cleanup."""
        ids = list(ids)
        strip = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            strip = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_piece(t, special) for t in ids]
        if strip and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        data = b"".join(parts)
        return _clean_spaces(data) if self.clean_spaces else data

    def detokenize(self, ids: Sequence[int], special: bool = False, remove_special: bool = False) -> str:
        """The text of `ids` (llama_detokenize, `special` = unparse_special). Invalid UTF-8 becomes U+FFFD."""
        return self.detokenize_bytes(ids, special, remove_special).decode("utf-8", "replace")

    def stream_decoder(self, special: bool = False, continuation: bool = False) -> IncrementalDecoder:
        """A streaming decoder; `continuation=True` for text that continues a prompt (generation): the first
        token keeps its leading space, so prompt + output reads as one text."""
        return IncrementalDecoder(self, special=special, continuation=continuation)


def _decode_byte_level(text: str) -> bytes:
    """llama_decode_text: byte-level characters back to bytes; others are kept as [UNK_BYTE_0x..] markers."""
    try:
        return bytes([_UNICODE_TO_BYTE[c] for c in text])
    except KeyError:
        pass
    out = bytearray()
    for c in text:
        b = _UNICODE_TO_BYTE.get(c)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + _utf8(c).hex().encode() + _utf8(text) + b"]"
    return bytes(out)


class IncrementalDecoder:
    """Token ids in, text out, one id at a time, for streaming generation.

    Every piece returned is whole text: bytes of a character split across tokens are held until it completes,
    and spaces are held while llama.cpp's space cleanup might still remove them. The pieces of `feed` over
    ids followed by `flush()` concatenate to exactly `tokenizer.detokenize(ids, special)`, including the
    space-prefix rule for the first token.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False, continuation: bool = False):
        self._tok = tokenizer
        self._special = special
        self._continuation = continuation
        self._first = not continuation  # the first token of a text loses its space prefix (SPM)
        self._pending = b""  # bytes the space cleanup may still change
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        """Text completed by one more token ("" while bytes are held back)."""
        piece = self._tok.token_to_piece(token_id, self._special)
        if self._first:
            self._first = False
            if self._tok.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
        if not self._tok.clean_spaces:
            return self._utf8.decode(piece)
        buf = self._pending + piece
        cut = _safe_cut(buf)
        self._pending = buf[cut:]
        return self._utf8.decode(_clean_spaces(buf[:cut]))

    def feed_many(self, ids: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in ids)

    def flush(self) -> str:
        """Whatever is held back, at the end of the stream. The decoder starts over afterwards."""
        tail = _clean_spaces(self._pending) if self._tok.clean_spaces else b""
        text = self._utf8.decode(tail, final=True)
        self._pending = b""
        self._first = not self._continuation
        self._utf8.reset()
        return text


def _safe_cut(buf: bytes) -> int:
    """A split point p with no space in buf[p-3:p]: the space cleanup of buf[:p] and of the rest then join to
    the cleanup of buf, because every cleanup pattern starts with a space and spans at most 4 bytes."""
    p = len(buf)
    while p > 0:
        s = buf.rfind(b" ", max(0, p - 3), p)
        if s < 0:
            break
        p = s
    return p


# ---- helpers -------------------------------------------------------------------------------------------------


def _bpe_ranks(merges: Any) -> dict[tuple[str, str], int]:
    """`tokenizer.ggml.merges` ("left right", best first) as llama.cpp reads it: split at the first space
    after the first byte, the first occurrence of a pair keeps its rank."""
    if not isinstance(merges, list):
        raise TokenizerError("a gpt2 vocabulary needs tokenizer.ggml.merges")
    ranks: dict[tuple[str, str], int] = {}
    for rank, m in enumerate(merges):
        k = m.find(" ", 1)
        ranks.setdefault((m[:k], m[k + 1 :]) if k >= 0 else ("", ""), rank)
    return ranks


def _str_key(md: Mapping[str, Any], key: str) -> str:
    v = md.get(key)
    if not isinstance(v, str):
        raise TokenizerError(f"metadata key {key} is missing: not a file with a tokenizer")
    return v


def _bool_key(md: Mapping[str, Any], key: str, default: bool) -> bool:
    v = md.get(key)
    return v if isinstance(v, bool) else default


def load_tokenizer(path_or_url: str | os.PathLike[str]) -> Tokenizer:
    """Read the tokenizer of a GGUF file (a local path or an http(s) URL); only the metadata is read."""
    with open_gguf(path_or_url) as f:
        return Tokenizer.from_gguf(f)
