"""Generate realm_web/unicode_ranges.py: llama.cpp's code point classes as a range table.

The tokenizer must classify code points exactly as llama.cpp does, whatever Unicode version the running
interpreter's `unicodedata` has (Python 3.11: 14.0, 3.13: 15.1, Pyodide's 3.14: 16.0). So the table is read,
as data, from llama.cpp's own `src/unicode-data.cpp` (made by its scripts/gen-unicode-data.py from the UCD):
`unicode_ranges_flags` (the general category as a flag, one entry per range start) and
`unicode_set_whitespace` (the White_Space property), merged into one list of (start, flags).

Usage:
    python scripts/make_unicode_ranges.py [path/to/unicode-data.cpp] [--check-with DIR]

The default source is the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist
(`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp`, then unpack).
`--check-with DIR` imports `unicodedata2` from DIR (e.g. `pip install --target DIR unicodedata2==15.1.0`, a
generation-time tool only, never a runtime dependency) and checks every code point against it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "realm_web" / "unicode_ranges.py"
SOURCE_DEFAULT = Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/src/unicode-data.cpp")
SOURCE_NAME = "llama.cpp src/unicode-data.cpp (llama-cpp-python 0.3.36 sdist)"
MAX_CODEPOINTS = 0x110000
WS = 0x100  # unicode.h unicode_cpt_flags::WHITESPACE
CATEGORY_FLAGS = {  # gen-unicode-data.py UNICODE_CATEGORY_TO_FLAG
    "Cn": 0x01, "Cc": 0x80, "Cf": 0x80, "Co": 0x80, "Cs": 0x80,
    "Ll": 0x04, "Lm": 0x04, "Lo": 0x04, "Lt": 0x04, "Lu": 0x04,
    "Mc": 0x10, "Me": 0x10, "Mn": 0x10,
    "Nd": 0x02, "Nl": 0x02, "No": 0x02,
    "Pc": 0x20, "Pd": 0x20, "Pe": 0x20, "Pf": 0x20, "Pi": 0x20, "Po": 0x20, "Ps": 0x20,
    "Sc": 0x40, "Sk": 0x40, "Sm": 0x40, "So": 0x40,
    "Zl": 0x08, "Zp": 0x08, "Zs": 0x08,
}  # fmt: skip

# Code points whose class tells Unicode versions apart (the UCD version the table was made from is not written
# in unicode-data.cpp): (code point, flags it has in that version). U+2EBF0 (CJK Ext. I) is new in 15.1,
# U+1C89 (Cyrillic) in 16.0, U+31350 (CJK Ext. H) and U+11F04 (Kawi) in 15.0, U+1F6DC in 15.0.
VERSION_PROBES = {
    "15.1.0": {0x2EBF0: 0x04, 0x1C89: 0x01, 0x31350: 0x04, 0x11F04: 0x04, 0x1F6DC: 0x40},
}


def _block(src: str, name: str) -> str:
    m = re.search(re.escape(name) + r"\s*=\s*\{(.*?)\n\};", src, re.S)
    if m is None:
        raise SystemExit(f"{name} not found")
    return m.group(1)


def parse(src: str) -> list[int]:
    """Per-code-point flags (category | whitespace), as llama.cpp's unicode_cpt_flags_array builds them."""
    body = _block(src, "unicode_ranges_flags")
    ranges = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-Fa-f]+),\s*0x([0-9A-Fa-f]+)\}", body)]
    assert ranges[-1] == (MAX_CODEPOINTS, 0), "table must end with its {0x110000, 0} sentinel"
    ranges.pop()
    assert ranges and ranges[0][0] == 0, "table must start at U+0000"
    assert all(a < b for (a, _), (b, _) in zip(ranges, ranges[1:], strict=False)), "starts must ascend"
    flags = [0] * MAX_CODEPOINTS
    for i, (start, f) in enumerate(ranges):
        end = ranges[i + 1][0] if i + 1 < len(ranges) else MAX_CODEPOINTS
        assert f and not f & ~0xFF, f"U+{start:04X}: unexpected flags {f:#x}"
        flags[start:end] = [f] * (end - start)
    ws = [int(x, 16) for x in re.findall(r"0x([0-9A-Fa-f]+)", _block(src, "unicode_set_whitespace"))]
    assert len(ws) == 25, len(ws)
    for c in ws:
        flags[c] |= WS
    return flags


def detect_version(flags: list[int]) -> str:
    for version, probes in VERSION_PROBES.items():
        if all(flags[c] == f for c, f in probes.items()):
            return version
    raise SystemExit("unicode-data.cpp matches no known Unicode version: extend VERSION_PROBES")


def check(flags: list[int], version: str, where: str) -> None:
    sys.path.insert(0, where)
    import unicodedata2  # noqa: PLC0415  (a generation-time tool only)

    assert unicodedata2.unidata_version == version, (unicodedata2.unidata_version, version)
    bad = [c for c in range(MAX_CODEPOINTS) if flags[c] & 0xFF != CATEGORY_FLAGS[unicodedata2.category(chr(c))]]
    assert not bad, f"{len(bad)} code points differ from unicodedata2 {version}, first U+{bad[0]:04X}"
    print(f"checked: every code point agrees with unicodedata2 {unicodedata2.unidata_version}")


def render(flags: list[int], version: str) -> str:
    starts = [0] + [c for c in range(1, MAX_CODEPOINTS) if flags[c] != flags[c - 1]]
    values = [flags[c] for c in starts]

    def rows(xs: list[int], fmt: str, per: int) -> str:
        lines = (" ".join(fmt.format(x) + "," for x in xs[i : i + per]) for i in range(0, len(xs), per))
        return "\n".join("    " + line for line in lines)

    return f'''"""llama.cpp's code point classes (unicode.h unicode_cpt_flags), generated: do not edit.

Unicode version: {version}. Generated by scripts/make_unicode_ranges.py from
{SOURCE_NAME}:
its tables unicode_ranges_flags and unicode_set_whitespace.

Code point c has flags RANGE_FLAGS[i] for the last i with RANGE_STARTS[i] <= c (bisect_right(...) - 1):
0x01 undefined, 0x02 number, 0x04 letter, 0x08 separator, 0x10 mark, 0x20 punctuation, 0x40 symbol,
0x80 control, 0x100 whitespace (White_Space).
"""

UNICODE_VERSION = "{version}"
SOURCE = "{SOURCE_NAME}"

# fmt: off
RANGE_STARTS = (
{rows(starts, "0x{:X}", 12)}
)

RANGE_FLAGS = (
{rows(values, "0x{:X}", 16)}
)
# fmt: on
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", type=Path, default=SOURCE_DEFAULT)
    ap.add_argument("--check-with", metavar="DIR", help="directory holding unicodedata2 of the same version")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    flags = parse(args.source.read_text())
    version = detect_version(flags)
    if args.check_with:
        check(flags, version, args.check_with)
    text = render(flags, version)
    args.out.write_text(text)
    print(f"wrote {args.out} (Unicode {version}, {text.count(chr(10))} lines, {len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
