"""The GGUF reader and byte sources, cross-checked against gguf-py's GGUFReader (the reference reader).

Well-formed files come from gguf-py's GGUFWriter; malformed ones are hand-assembled (gguf_fixtures.build)
because the writer refuses to produce them. Every malformed case must fail with a GGUFError that names
what is wrong and where, quickly, without another exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import pytest
from gguf_fixtures import UNICODE, build, gstr, kv, kv_u32, tinfo, u32, u64, write_model

from realm_web.errors import GGUFError, SourceError
from realm_web.gguf import (
    ArrayType,
    GGUFFile,
    MetaType,
    ValueType,
    open_gguf,
    read_gguf,
    read_gguf_async,
)
from realm_web.source import AsyncFromSync, BytesSource, FileSource, HTTPSource, open_source

F32, F16, Q4_0 = 0, 1, 2

# ---- helpers ---------------------------------------------------------------------------------------------


class RecordingSource(BytesSource):
    """A BytesSource that remembers every read, to prove what a parse fetched."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(offset, length)


def parse(data: bytes) -> GGUFFile:
    return read_gguf(BytesSource(data))


def parse_error(data: bytes) -> GGUFError:
    with pytest.raises(GGUFError) as e:
        parse(data)
    return e.value


def type_path(t: MetaType) -> list[int]:
    """Our type as GGUFReader spells it: [ARRAY, ARRAY, INT32] (taken from the first inner array)."""
    if isinstance(t, ValueType):
        return [t]
    return [ValueType.ARRAY, *(type_path(t.inner[0]) if t.item is ValueType.ARRAY else [t.item])]


def flatten(v: object) -> list[object]:
    """GGUFReader flattens nested arrays; flatten ours to compare."""
    return [x for item in v for x in flatten(item)] if isinstance(v, list) else [v]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("gguf") / "model.gguf")


@pytest.fixture(scope="module")
def model_bytes(model_path: Path) -> bytes:
    return model_path.read_bytes()


# ---- agreement with gguf-py ------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_matches_gguf_reader(tmp_path: Path, alignment: int | None) -> None:
    path = write_model(tmp_path / "m.gguf", alignment=alignment)
    ref = gguf.GGUFReader(path)
    with FileSource(path) as src:
        f = read_gguf(src)
        assert f.version == 3
        assert f.alignment == ref.alignment == (alignment or 32)
        assert f.data_offset == ref.data_offset
        assert f.data_offset % f.alignment == 0
        assert f.file_size == path.stat().st_size

        ref_fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(f.metadata) == list(ref_fields)
        for key, field in ref_fields.items():
            assert type_path(f.metadata_types[key]) == field.types, key
            assert flatten(f.metadata[key]) == flatten(field.contents()), key

        assert [t.name for t in f.tensors] == [t.name for t in ref.tensors]
        for ours, theirs in zip(f.tensors, ref.tensors, strict=True):
            assert ours.shape == tuple(int(d) for d in theirs.shape)
            assert ours.type.id == int(theirs.tensor_type)
            assert ours.type.name == theirs.tensor_type.name
            assert ours.abs_offset == theirs.data_offset
            assert ours.offset == theirs.data_offset - ref.data_offset
            assert ours.offset % f.alignment == 0
            assert (ours.n_elements, ours.n_bytes) == (theirs.n_elements, theirs.n_bytes)
            assert f.tensor_bytes(ours) == theirs.data.tobytes()


def test_metadata_values_and_types_exact(model_bytes: bytes) -> None:
    f = parse(model_bytes)
    m, t = f.metadata, f.metadata_types
    assert (m["t.u64"], m["t.i64"], m["t.i8"]) == (2**64 - 1, -(2**63), -128)
    assert m["t.f32"] != 0.1 and abs(m["t.f32"] - 0.1) < 1e-8  # the float32 value, widened exactly
    assert m["t.true"] is True and m["t.false"] is False
    assert m["t.str"] == UNICODE and m["t.empty_str"] == ""
    assert m["t.arr_str"] == ["a", UNICODE, "", "<s>"]
    assert m["t.nested"] == [[1, 2], [3, 4, 5]]
    assert m["t.nested3"] == [[[1], [2, 3]], [[4]]]
    assert t["t.f32"] is ValueType.FLOAT32 and t["t.f64"] is ValueType.FLOAT64
    assert t["t.arr_u8"] == ArrayType(ValueType.UINT8)
    assert t["t.nested"] == ArrayType(ValueType.ARRAY, (ArrayType(ValueType.INT32),) * 2)


def test_tensor_geometry(model_bytes: bytes) -> None:
    f = parse(model_bytes)
    q = f.tensor("blk.0.attn_q.weight")  # numpy (16, 64) -> GGUF ne = (64, 16)
    assert (q.shape, q.type.name, q.row_elems, q.n_rows, q.row_bytes) == ((64, 16), "Q8_0", 64, 16, 68)
    assert q.n_bytes == 16 * 68
    k = f.tensor("blk.0.attn_v.weight")
    assert (k.type.name, k.row_elems, k.n_rows, k.row_bytes, k.n_bytes) == ("Q6_K", 512, 3, 420, 1260)
    cube = f.tensor("blk.0.cube")
    assert (cube.shape, cube.n_rows, cube.n_elements) == ((32, 3, 2), 6, 192)
    with pytest.raises(GGUFError, match="no_such"):
        f.tensor("no_such")


def test_tensor_bytes_ranges(model_bytes: bytes) -> None:
    f = parse(model_bytes)
    t = f.tensor("blk.0.ffn_up.weight")
    whole = model_bytes[t.abs_offset : t.abs_offset + t.n_bytes]
    assert f.tensor_bytes(t) == whole
    assert f.tensor_bytes(t.name, 18, 36) == whole[18:54]
    assert f.tensor_bytes(t, start=200) == whole[200:]
    assert f.tensor_range(t, 18, 36) == (t.abs_offset + 18, 36)
    for start, length in [(-1, 4), (0, t.n_bytes + 1), (t.n_bytes, 1)]:
        with pytest.raises(GGUFError, match="blk.0.ffn_up.weight"):
            f.tensor_bytes(t, start, length)


def test_version_2(model_bytes: bytes, tmp_path: Path) -> None:
    """v2 differs from v3 only in the version field (v3 added big-endian files): patch it."""
    data = model_bytes[:4] + u32(2) + model_bytes[8:]
    (tmp_path / "v2.gguf").write_bytes(data)
    f = parse(data)
    assert f.version == 2 == int(gguf.GGUFReader(tmp_path / "v2.gguf").fields["GGUF.version"].contents())
    v3 = parse(model_bytes)
    assert (f.metadata, f.tensors, f.data_offset) == (v3.metadata, v3.tensors, v3.data_offset)


def test_handwritten_edge_values() -> None:
    """What the writer cannot make: empty arrays, inner arrays of different types, zero tensors."""
    empty = kv("empty", ValueType.ARRAY, u32(ValueType.INT32) + u64(0))
    mixed = kv(
        "mixed",
        ValueType.ARRAY,
        u32(ValueType.ARRAY) + u64(2)
        + u32(ValueType.UINT8) + u64(2) + b"\x07\x08"
        + u32(ValueType.STRING) + u64(1) + gstr("z"),
    )  # fmt: skip
    f = parse(build([empty, mixed, kv_u32("general.alignment", 64)], version=2))
    assert f.metadata["empty"] == [] and f.metadata_types["empty"] == ArrayType(ValueType.INT32)
    assert f.metadata["mixed"] == [[7, 8], ["z"]]
    inner = (ArrayType(ValueType.UINT8), ArrayType(ValueType.STRING))
    assert f.metadata_types["mixed"] == ArrayType(ValueType.ARRAY, inner)
    assert (f.version, f.tensors, f.alignment, f.data_offset % 64) == (2, [], 64, 0)


# ---- malformed files -------------------------------------------------------------------------------------


def one_tensor(*, name: str = "w", dims: tuple[int, ...] = (32, 2), type_id: int = F32, offset: int = 0) -> bytes:
    """A file with one tensor and 256 bytes of data: room enough for the default (32, 2) F32."""
    return build(tensors=[tinfo(name, dims, type_id, offset)], data=bytes(256))


def test_bad_magic() -> None:
    e = parse_error(b"GGML" + bytes(60))
    assert "magic" in str(e) and e.offset == 0


@pytest.mark.parametrize(
    ("version", "words"),
    [(1, "version 1"), (4, "version 4"), (0, "version 0"), (0x03000000, "big-endian"), (0x02000000, "big-endian")],
)
def test_unsupported_versions(version: int, words: str) -> None:
    e = parse_error(build(version=version))
    assert words in str(e) and e.offset == 4


def test_every_truncation_raises_gguf_error(model_bytes: bytes) -> None:
    """Cut anywhere before the end of the last tensor's data: a GGUFError. Only trailing padding may go."""
    f = parse(model_bytes)
    end = max(t.abs_offset + t.n_bytes for t in f.tensors)
    t0 = time.perf_counter()
    for n in range(end):
        with pytest.raises(GGUFError):
            parse(model_bytes[:n])
    assert time.perf_counter() - t0 < 10
    for n in range(end, len(model_bytes) + 1):
        assert parse(model_bytes[:n]).tensors == f.tensors


def test_truncated_header_names_offset() -> None:
    data = build([kv_u32("a.key", 1)])
    e = parse_error(data[:40])  # cut inside the value type, at 24 + 8 + len("a.key")
    assert "truncated file: value type of 'a.key' needs 4 bytes, only 3 left" in str(e) and e.offset == 37


def test_random_corruption_is_gguf_error_or_valid(model_bytes: bytes) -> None:
    """Flipped bytes anywhere in the header: a clean parse or a GGUFError, nothing else, never a hang."""
    f = parse(model_bytes)
    rnd = random.Random(0)
    for _ in range(400):
        data = bytearray(model_bytes)
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(f.data_offset)] = rnd.randrange(256)
        with contextlib.suppress(GGUFError):
            parse(bytes(data))


@pytest.mark.parametrize(
    ("data", "words", "offset"),
    [
        (build(n_tensors=2**63), "tensor count", 8),
        (build(n_tensors=10**6), "tensor count", 8),
        (build(n_kv=2**64 - 1), "kv count", 16),
        (build(n_tensors=2, n_kv=2) + bytes(40), "2 tensors and 2 metadata keys", 8),
        (build([u64(2**62) + b"key"]), "metadata key length", 24),
        (build([kv("k", ValueType.STRING, u64(10**9))]), "string value of 'k' length", 37),
        (build([kv("arr", ValueType.ARRAY, u32(ValueType.UINT64) + u64(2**61))]), "array length of 'arr'", 43),
        (build([kv("arr", ValueType.ARRAY, u32(ValueType.STRING) + u64(10**6))]), "array length of 'arr'", 43),
        (
            build([kv("nest", ValueType.ARRAY, u32(ValueType.ARRAY) + u64(1) + u32(ValueType.INT8) + u64(2**40))]),
            "array length of 'nest'",
            56,
        ),
    ],
)
def test_absurd_counts_and_lengths(data: bytes, words: str, offset: int) -> None:
    e = parse_error(data)
    assert words in str(e) and e.offset == offset


def test_array_nesting_is_bounded() -> None:
    deep = u32(ValueType.ARRAY) + u64(1)
    payload = deep * 100 + u32(ValueType.INT8) + u64(0)
    e = parse_error(build([kv("deep", ValueType.ARRAY, payload)]))
    assert "nest deeper" in str(e) and "'deep'" in str(e)


@pytest.mark.parametrize(
    ("dims", "type_id", "words"),
    [
        ((32, 1, 1, 1, 1), F32, "5 dimensions"),
        ((32, 0), F32, "dimension 1 is 0"),
        ((2**64 - 1, 2), F32, "dimension 0 is -1"),
        ((2**32, 2**32), F32, "more elements than int64"),
        ((1024, 1024), F32, "more than the whole file"),
        ((16, 2), Q4_0, "not a multiple of the Q4_0 block size 32"),
        ((32, 2), 99, "unknown tensor type id 99"),
        ((32, 2), 4, "unknown tensor type id 4"),  # Q4_2: removed from ggml, id never reused
    ],
)
def test_bad_tensor_infos(dims: tuple[int, ...], type_id: int, words: str) -> None:
    e = parse_error(one_tensor(name="blk.3.bad", dims=dims, type_id=type_id))
    assert words in str(e) and e.tensor == "blk.3.bad" and e.offset is not None


def test_truncated_tensor_data() -> None:
    data = build(tensors=[tinfo("w", (16,), F32, 0)], data=bytes(40))  # 64 bytes needed
    e = parse_error(data)
    assert "truncated tensor data" in str(e) and e.tensor == "w"


def test_unaligned_tensor_offset() -> None:
    e = parse_error(one_tensor(name="w", dims=(8,), offset=4))
    assert "not a multiple of the alignment 32" in str(e) and e.tensor == "w"


def test_overlapping_tensors() -> None:
    tensors = [tinfo("a", (32,), F32, 0), tinfo("b", (32,), F32, 256), tinfo("c", (8,), F32, 96)]
    e = parse_error(build(tensors=tensors, data=bytes(512)))
    assert "overlaps 'a'" in str(e) and e.tensor == "c"


def test_adjacent_tensors_are_fine() -> None:
    tensors = [tinfo("a", (8,), F32, 0), tinfo("b", (8,), F32, 32)]
    assert [t.abs_offset % 32 for t in parse(build(tensors=tensors, data=bytes(64))).tensors] == [0, 0]


def test_duplicate_tensor_names() -> None:
    tensors = [tinfo("w", (8,), F32, 0), tinfo("w", (8,), F32, 32)]
    e = parse_error(build(tensors=tensors, data=bytes(64)))
    assert "duplicate tensor name" in str(e) and e.tensor == "w"


def test_duplicate_metadata_keys() -> None:
    e = parse_error(build([kv_u32("general.x", 1), kv_u32("general.x", 2)]))
    assert "duplicate metadata key 'general.x'" in str(e) and e.offset == 24 + 25


@pytest.mark.parametrize(
    "data",
    [
        build([kv(b"k\xff", ValueType.UINT8, b"\x01")]),
        build([kv("k", ValueType.STRING, gstr(b"ok\xc3("))]),
        build([kv("k", ValueType.ARRAY, u32(ValueType.STRING) + u64(1) + gstr(b"\xed\xa0\x80"))]),
        build(tensors=[tinfo(b"w\x80", (8,), F32, 0)], data=bytes(32)),
    ],
)
def test_invalid_utf8(data: bytes) -> None:
    e = parse_error(data)
    assert "not valid UTF-8" in str(e) and e.offset is not None


def test_unknown_metadata_value_type() -> None:
    e = parse_error(build([kv("general.odd", 13, u32(0))]))
    assert "unknown metadata value type 13" in str(e) and "general.odd" in str(e) and e.offset == 24 + 19
    e = parse_error(build([kv("general.arr", ValueType.ARRAY, u32(77) + u64(0))]))
    assert "unknown metadata value type 77" in str(e) and "general.arr" in str(e)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (kv_u32("general.alignment", 0), "general.alignment = 0"),
        (kv_u32("general.alignment", 48), "general.alignment = 48"),
        (kv("general.alignment", ValueType.UINT64, u64(64)), "general.alignment must be a uint32"),
    ],
)
def test_bad_alignment(entry: bytes, words: str) -> None:
    assert words in str(parse_error(build([entry])))


# ---- reading patterns and async --------------------------------------------------------------------------


def test_header_parse_reads_little_and_stays_in_bounds(tmp_path: Path) -> None:
    data = write_model(tmp_path / "big.gguf", big_tensor_elems=2 * 1024 * 1024).read_bytes()  # 8 MiB tensor
    src = RecordingSource(data)
    f = read_gguf(src)
    assert f.tensor("big").n_bytes == 8 * 1024 * 1024
    assert all(off >= 0 and off + n <= len(data) for off, n in src.reads)
    assert src.reads[0] == (0, 64 * 1024) and sum(n for _, n in src.reads) < 2 * 1024 * 1024


def test_big_vocabulary_in_few_reads() -> None:
    """A 50k-token vocabulary (~0.6 MB) crosses chunk boundaries mid-string; reads grow, not multiply."""
    tokens = [f"tok{i}_{UNICODE[i % len(UNICODE)]}" for i in range(50_000)]
    payload = u32(ValueType.STRING) + u64(len(tokens)) + b"".join(gstr(t) for t in tokens)
    src = RecordingSource(build([kv("tokenizer.ggml.tokens", ValueType.ARRAY, payload)]))
    t0 = time.perf_counter()
    f = read_gguf(src)
    assert time.perf_counter() - t0 < 2
    assert f.metadata["tokenizer.ggml.tokens"] == tokens
    assert len(src.reads) <= 4


def test_async_matches_sync(model_path: Path) -> None:
    async def run() -> tuple[GGUFFile, bytes]:
        with FileSource(model_path) as src:
            f = await read_gguf_async(AsyncFromSync(src))
            return f, await f.tensor_bytes_async("blk.0.attn_q.weight", 34, 68)

    af, chunk = asyncio.run(run())
    with FileSource(model_path) as src:
        sf = read_gguf(src)
        assert af == sf
        assert chunk == sf.tensor_bytes("blk.0.attn_q.weight", 34, 68)


def test_sync_tensor_bytes_refuses_async_source(model_bytes: bytes) -> None:
    f = asyncio.run(read_gguf_async(AsyncFromSync(BytesSource(model_bytes))))
    with pytest.raises(TypeError, match="tensor_bytes_async"):
        f.tensor_bytes(f.tensors[0])


def test_open_gguf_path(model_path: Path) -> None:
    with open_gguf(model_path) as f:
        assert isinstance(f.source, FileSource) and len(f.tensors) == 8
    with pytest.raises(SourceError, match="closed"):
        f.tensor_bytes(f.tensors[0])


def test_reader_modules_do_not_import_numpy(model_path: Path) -> None:
    """The browser has no numpy: the reader must work with numpy made unimportable."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from realm_web.gguf import open_gguf\n"
        "f = open_gguf(sys.argv[1]); print(len(f.tensors), len(f.tensor_bytes(f.tensors[0])))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "2048"]


# ---- sources ---------------------------------------------------------------------------------------------


def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing.gguf"):
        FileSource(tmp_path / "missing.gguf")
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(100)))
    with FileSource(p) as src:
        assert src.read(90, 10) == bytes(range(90, 100)) and src.read(100, 0) == b""
        with pytest.raises(SourceError, match="past the end"):
            src.read(95, 10)
        with pytest.raises(SourceError, match="invalid read"):
            src.read(-1, 2)
        p.write_bytes(bytes(50))  # truncated under us
        with pytest.raises(SourceError, match="offset 40: asked for 20 bytes, got 10"):
            src.read(40, 20)


def test_bytes_source_and_open_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="past the end"):
        BytesSource(b"abc").read(2, 2)
    (tmp_path / "x").write_bytes(b"x")
    with contextlib.closing(open_source(str(tmp_path / "x"))) as src:
        assert isinstance(src, FileSource)
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'"):
        open_source("ftp://127.0.0.1/model.gguf")
    with pytest.raises(SourceError, match="model.gguf"):
        open_source(str(tmp_path / "model.gguf"))


# ---- HTTP ------------------------------------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


class _Stats:
    def __init__(self) -> None:
        self.body_bytes = 0
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()


@contextlib.contextmanager
def serve(data: bytes, *, honor_range: bool = True, allow_head: bool = True) -> Iterator[tuple[str, _Stats]]:
    """Serve `data` at http://127.0.0.1:PORT/model.gguf with (optionally) Range support; count bytes sent."""
    stats = _Stats()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            with stats.lock:
                stats.requests.append(("HEAD", None))
            if not allow_head:
                self.send_error(405)
                return
            if self._not_found():
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            with stats.lock:
                stats.requests.append(("GET", rng))
            if self._not_found():
                return
            m = _RANGE.fullmatch(rng or "")
            if m and honor_range:
                a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
                body = data[a : b + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)
                with stats.lock:
                    stats.body_bytes += len(body)

        def _not_found(self) -> bool:
            if self.path != "/model.gguf":
                self.send_error(404)
                return True
            return False

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.gguf", stats
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not be sent to a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_http_parse_matches_file_and_skips_tensor_data(tmp_path: Path) -> None:
    path = write_model(tmp_path / "big.gguf", big_tensor_elems=2 * 1024 * 1024)  # 8 MiB tensor
    data = path.read_bytes()
    with serve(data) as (url, stats):
        with open_gguf(url) as hf:
            assert isinstance(hf.source, HTTPSource) and hf.source.size == len(data)
            assert stats.body_bytes < 2 * 1024 * 1024
            with FileSource(path) as src:
                assert hf == read_gguf(src)
            t = hf.tensor("blk.0.attn_v.weight")
            assert hf.tensor_bytes(t, 100, 1000) == data[t.abs_offset + 100 : t.abs_offset + 1100]
        assert stats.requests[0] == ("HEAD", None)
        assert all(r is not None for method, r in stats.requests if method == "GET")


def test_http_size_without_head(model_bytes: bytes) -> None:
    with serve(model_bytes, allow_head=False) as (url, stats):
        src = HTTPSource(url)
        assert src.size == len(model_bytes)
        assert stats.requests[-1] == ("GET", "bytes=0-0")
        assert read_gguf(src) == parse(model_bytes)


def test_http_server_ignoring_range(model_bytes: bytes) -> None:
    with serve(model_bytes, honor_range=False) as (url, _):
        src = HTTPSource(url)  # HEAD gives the size; the first ranged read finds the problem
        with pytest.raises(SourceError, match="ignored the Range header"):
            src.read(0, 16)
    with (
        serve(model_bytes, honor_range=False, allow_head=False) as (url, _),
        pytest.raises(SourceError, match="ignored the Range header"),
    ):
        HTTPSource(url)


def test_http_404(model_bytes: bytes) -> None:
    with serve(model_bytes) as (url, _), pytest.raises(SourceError, match="404"):
        open_gguf(url.replace("model.gguf", "missing.gguf"))


def test_http_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="cannot connect"):
        HTTPSource(f"http://127.0.0.1:{port}/model.gguf", timeout=5)


def test_http_bad_url() -> None:
    with pytest.raises(SourceError):
        open_source("http://")
