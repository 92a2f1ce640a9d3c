"""GGUF reader: metadata and tensor infos from a byte source, without reading tensor data (pure Python).

Layout, from the GGUF spec (ggml docs/gguf.md), all little-endian:

    header      magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
    metadata    kv_count x (key: string | value_type u32 | value)
    tensor info tensor_count x (name: string | n_dims u32 | ne[n_dims] u64 | ggml_type u32 | offset u64)
    padding     to `general.alignment` (default 32)
    data        tensor bytes; each tensor's `offset` is relative to here and a multiple of the alignment

    string = len u64 | UTF-8 bytes (no NUL);  array = item_type u32 | count u64 | count x item

The parser is sans-IO: `_parse` is a generator that yields `(offset, length)` read requests and is sent
the bytes back, so one parser serves the sync driver (`read_gguf`) and the async one (`read_gguf_async`,
the browser's fetch). Every count and length is checked against the bytes left in the file before
anything is allocated or read, so a malformed file fails fast with a GGUFError naming what and where.
"""

from __future__ import annotations

import inspect
import os
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

from realm_web.errors import GGUFError
from realm_web.quants import TYPES, GGMLType
from realm_web.source import AsyncSource, Source, check_length, open_source

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used u32 counts and lengths; llama.cpp dropped it too
DEFAULT_ALIGNMENT = 32  # spec: GGUF_DEFAULT_ALIGNMENT
MAX_DIMS = 4  # ggml.h GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays nest this deep at most: bounds the parser's recursion
INT64_MAX = 2**63 - 1  # ggml's ne[] are int64_t

_FIRST_CHUNK = 64 * 1024  # the first read covers the header of a small model
_MAX_CHUNK = 1024 * 1024  # doubling up to here: big vocabularies take a few reads, not thousands


class ValueType(IntEnum):
    """Metadata value types (spec: enum gguf_metadata_value_type)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALARS: dict[ValueType, struct.Struct] = {
    t: struct.Struct("<" + c)
    for t, c in zip(
        (ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32,
         ValueType.INT32, ValueType.FLOAT32, ValueType.BOOL, ValueType.UINT64, ValueType.INT64,
         ValueType.FLOAT64),
        "BbHhIif?Qqd",
        strict=True,
    )
}  # fmt: skip
_U32 = _SCALARS[ValueType.UINT32]
_U64 = _SCALARS[ValueType.UINT64]
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset
_MIN_ARRAY_BYTES = 4 + 8  # an empty inner array: item type and count


@dataclass(frozen=True)
class ArrayType:
    """The type of an array value: its item type and, for an array of arrays, each inner array's type
    (the format gives every inner array its own item type, so they need not agree)."""

    item: ValueType
    inner: tuple[ArrayType, ...] = ()


MetaType = ValueType | ArrayType


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is. `shape` is as GGUF stores it: ne0 (contiguous) first."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int  # bytes from the start of the data section
    abs_offset: int  # bytes from the start of the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        return self.type.row_bytes(self.n_elements)

    @property
    def row_elems(self) -> int:
        """ne0: the elements of one row, the unit a matmul kernel dequantizes along."""
        return self.shape[0] if self.shape else 1

    @property
    def n_rows(self) -> int:
        """Product of ne1.. : the tensor seen as a 2-D [n_rows, row_elems] matrix."""
        return self.n_elements // self.row_elems

    @property
    def row_bytes(self) -> int:
        return self.type.row_bytes(self.row_elems)


class _Header(NamedTuple):
    version: int
    metadata: dict[str, Any]
    metadata_types: dict[str, MetaType]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int


@dataclass
class GGUFFile:
    """A parsed GGUF header plus the source its tensor data is read from."""

    version: int
    metadata: dict[str, Any] = field(repr=False)
    metadata_types: dict[str, MetaType] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)  # in file order
    alignment: int
    data_offset: int
    file_size: int
    source: Source | AsyncSource = field(compare=False)  # two parses of one file compare equal
    _by_name: dict[str, TensorInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    @classmethod
    def _from_header(cls, header: _Header, source: Source | AsyncSource) -> GGUFFile:
        return cls(*header, file_size=source.size, source=source)

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise GGUFError("no such tensor in the file", tensor=name) from None

    def tensor_range(self, info: TensorInfo | str, start: int = 0, length: int | None = None) -> tuple[int, int]:
        """Absolute (offset, length) of bytes [start, start+length) of a tensor; length None = to its end."""
        if isinstance(info, str):
            info = self.tensor(info)
        if length is None:
            length = info.n_bytes - start
        if start < 0 or length < 0 or start + length > info.n_bytes:
            raise GGUFError(
                f"byte range [{start}, {start + length}) is outside the tensor's {info.n_bytes} bytes",
                tensor=info.name,
            )
        return info.abs_offset + start, length

    def tensor_bytes(self, info: TensorInfo | str, start: int = 0, length: int | None = None) -> bytes:
        """Raw bytes of part of a tensor from a sync source. Streamed uploads ask for bounded chunks."""
        offset, length = self.tensor_range(info, start, length)
        data = self.source.read(offset, length)
        if inspect.isawaitable(data):
            data.close()  # type: ignore[attr-defined]
            raise TypeError("this GGUFFile reads from an async source: use tensor_bytes_async")
        return data

    async def tensor_bytes_async(self, info: TensorInfo | str, start: int = 0, length: int | None = None) -> bytes:
        """`tensor_bytes` for an async source (the browser's fetch)."""
        offset, length = self.tensor_range(info, start, length)
        return await self.source.read(offset, length)  # type: ignore[misc]

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- drivers ---------------------------------------------------------------------------------------------


def read_gguf(source: Source) -> GGUFFile:
    """Parse the header of a GGUF file from a sync source; tensor data is not read."""
    parser = _parse(source.size)
    data: bytes | None = None
    try:
        while True:
            offset, length = parser.send(data)
            data = check_length(source.read(offset, length), offset, length, repr(source))
    except StopIteration as done:
        return GGUFFile._from_header(done.value, source)


async def read_gguf_async(source: AsyncSource) -> GGUFFile:
    """Parse the header of a GGUF file from an async source (same parser as `read_gguf`)."""
    parser = _parse(source.size)
    data: bytes | None = None
    try:
        while True:
            offset, length = parser.send(data)
            data = check_length(await source.read(offset, length), offset, length, repr(source))
    except StopIteration as done:
        return GGUFFile._from_header(done.value, source)


def open_gguf(path_or_url: str | os.PathLike[str]) -> GGUFFile:
    """Open a local path or an http(s) URL and parse its header. Close with `.close()` or `with`."""
    source = open_source(path_or_url)
    try:
        return read_gguf(source)
    except BaseException:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        raise


# ---- the sans-IO parser ----------------------------------------------------------------------------------

T = TypeVar("T")
Reads = Generator[tuple[int, int], bytes, T]  # yields (offset, length), is sent the bytes, returns T


class _Cursor:
    """A read position over `size` bytes with one buffered window. `take` serves from the window and,
    when it runs dry, yields one request for the missing bytes plus read-ahead, never past `size`."""

    def __init__(self, size: int):
        self.size = size
        self.pos = 0
        self._buf = b""
        self._buf_start = 0
        self._chunk = _FIRST_CHUNK

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> Reads[bytes]:
        end = self.pos + n
        if end > self._buf_start + len(self._buf):
            yield from self._fill(n, what)
        i = self.pos - self._buf_start
        self.pos = end
        return self._buf[i : i + n]

    def string_in_window(self) -> str | None:
        """A whole valid string already in the window, else None (the caller then takes the checked,
        generator path). Vocabularies hold 150k+ strings: this makes them ~4x faster to parse."""
        i = self.pos - self._buf_start
        if i + 8 > len(self._buf):
            return None
        end = i + 8 + _U64.unpack_from(self._buf, i)[0]
        if end > len(self._buf):
            return None
        try:
            s = self._buf[i + 8 : end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        self.pos = self._buf_start + end
        return s

    def _fill(self, n: int, what: str) -> Reads[None]:
        if n > self.remaining():
            raise GGUFError(
                f"truncated file: {what} needs {n} bytes, only {self.remaining()} left (file is {self.size} bytes)",
                offset=self.pos,
            )
        buf_end = self._buf_start + len(self._buf)
        want = min(max(self.pos + n - buf_end, self._chunk), self.size - buf_end)
        data = yield (buf_end, want)  # the drivers check it is exactly `want` bytes
        self._buf = self._buf[self.pos - self._buf_start :] + data
        self._buf_start = self.pos
        self._chunk = min(2 * self._chunk, _MAX_CHUNK)


def _u32(cur: _Cursor, what: str) -> Reads[int]:
    return _U32.unpack((yield from cur.take(4, what)))[0]


def _u64(cur: _Cursor, what: str) -> Reads[int]:
    return _U64.unpack((yield from cur.take(8, what)))[0]


def _count(cur: _Cursor, what: str, min_item_bytes: int) -> Reads[int]:
    """A u64 count of items each at least `min_item_bytes` long, refused if they cannot fit in the file."""
    at = cur.pos
    n = yield from _u64(cur, what)
    if n * min_item_bytes > cur.remaining():
        raise GGUFError(
            f"{what} {n} is impossible: {n} items of at least {min_item_bytes} bytes do not fit in the "
            f"{cur.remaining()} bytes left in the file",
            offset=at,
        )
    return n


def _string(cur: _Cursor, what: str) -> Reads[str]:
    at = cur.pos
    n = yield from _count(cur, f"{what} length", 1)
    raw = yield from cur.take(n, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GGUFError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})", offset=at) from None


def _value_type(cur: _Cursor, key: str) -> Reads[ValueType]:
    at = cur.pos
    t = yield from _u32(cur, f"value type of {key!r}")
    try:
        return ValueType(t)
    except ValueError:
        raise GGUFError(f"unknown metadata value type {t} for key {key!r}", offset=at) from None


def _value(cur: _Cursor, vtype: ValueType, key: str) -> Reads[tuple[Any, MetaType]]:
    if vtype is ValueType.STRING:
        return (yield from _string(cur, f"string value of {key!r}")), vtype
    if vtype is ValueType.ARRAY:
        return (yield from _array(cur, key, depth=1))
    fmt = _SCALARS[vtype]
    return fmt.unpack((yield from cur.take(fmt.size, f"value of {key!r}")))[0], vtype


def _array(cur: _Cursor, key: str, depth: int) -> Reads[tuple[list[Any], ArrayType]]:
    if depth > MAX_ARRAY_DEPTH:
        raise GGUFError(f"arrays in {key!r} nest deeper than {MAX_ARRAY_DEPTH} levels", offset=cur.pos)
    item = yield from _value_type(cur, key)
    what = f"array length of {key!r}"
    if item in _SCALARS:
        fmt = _SCALARS[item]
        n = yield from _count(cur, what, fmt.size)
        raw = yield from cur.take(n * fmt.size, f"array {key!r}")
        return list(struct.unpack(f"<{n}{fmt.format[1:]}", raw)), ArrayType(item)
    if item is ValueType.STRING:
        n = yield from _count(cur, what, 8)
        strings = []
        for _ in range(n):
            s = cur.string_in_window()
            strings.append(s if s is not None else (yield from _string(cur, f"string in array {key!r}")))
        return strings, ArrayType(item)
    n = yield from _count(cur, what, _MIN_ARRAY_BYTES)
    values, types = [], []
    for _ in range(n):
        value, vtype = yield from _array(cur, key, depth + 1)
        values.append(value)
        types.append(vtype)
    return values, ArrayType(item, tuple(types))


def _metadata(cur: _Cursor, count: int) -> Reads[tuple[dict[str, Any], dict[str, MetaType]]]:
    metadata: dict[str, Any] = {}
    types: dict[str, MetaType] = {}
    for _ in range(count):
        at = cur.pos
        key = yield from _string(cur, "metadata key")
        if key in metadata:
            raise GGUFError(f"duplicate metadata key {key!r}", offset=at)
        vtype = yield from _value_type(cur, key)
        metadata[key], types[key] = yield from _value(cur, vtype, key)
    return metadata, types


class _RawTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int


def _tensor_info(cur: _Cursor) -> Reads[_RawTensor]:
    name = yield from _string(cur, "tensor name")
    at = cur.pos
    n_dims = yield from _u32(cur, "tensor n_dims")
    if n_dims > MAX_DIMS:
        raise GGUFError(f"tensor has {n_dims} dimensions, ggml allows at most {MAX_DIMS}", offset=at, tensor=name)
    dims_at = cur.pos
    shape = struct.unpack(f"<{n_dims}Q", (yield from cur.take(8 * n_dims, f"dims of tensor {name!r}")))
    at = cur.pos
    type_id = yield from _u32(cur, f"type of tensor {name!r}")
    if type_id not in TYPES:
        raise GGUFError(f"unknown tensor type id {type_id}", offset=at, tensor=name)
    offset = yield from _u64(cur, f"offset of tensor {name!r}")
    tensor = _RawTensor(name, shape, TYPES[type_id], offset)
    _check_shape(tensor, cur.size, dims_at)
    return tensor


def _check_shape(t: _RawTensor, file_size: int, at: int) -> None:
    """Dims positive and int64, ne0 whole blocks, and the byte size no bigger than the file itself."""
    n = 1
    for i, d in enumerate(t.shape):
        if d == 0 or d > INT64_MAX:
            shown = d if d == 0 else d - 2**64
            raise GGUFError(f"dimension {i} is {shown}; dims must be positive", offset=at, tensor=t.name)
        n *= d
    if n > INT64_MAX:
        raise GGUFError(f"shape {t.shape} has more elements than int64 can count", offset=at, tensor=t.name)
    ne0 = t.shape[0] if t.shape else 1
    if ne0 % t.type.block_elems:
        raise GGUFError(
            f"ne0 = {ne0} is not a multiple of the {t.type.name} block size {t.type.block_elems}",
            offset=at,
            tensor=t.name,
        )
    n_bytes = t.type.row_bytes(n)
    if n_bytes > file_size:
        raise GGUFError(
            f"shape {t.shape} of {t.type.name} needs {n_bytes} bytes, more than the whole file ({file_size} bytes)",
            offset=at,
            tensor=t.name,
        )


def _place_tensors(raw: list[_RawTensor], data_offset: int, alignment: int, file_size: int) -> list[TensorInfo]:
    """Resolve offsets and refuse unaligned, truncated or overlapping tensor data."""
    tensors = []
    for t in raw:
        info = TensorInfo(t.name, t.shape, t.type, t.offset, data_offset + t.offset)
        if t.offset % alignment:
            raise GGUFError(f"data offset {t.offset} is not a multiple of the alignment {alignment}", tensor=t.name)
        if info.abs_offset + info.n_bytes > file_size:
            raise GGUFError(
                f"truncated tensor data: {info.n_bytes} bytes at offset {info.abs_offset} end past the end "
                f"of the file ({file_size} bytes)",
                tensor=t.name,
            )
        tensors.append(info)
    by_start = sorted(tensors, key=lambda t: t.offset)
    for prev, cur in zip(by_start, by_start[1:], strict=False):
        if cur.offset < prev.offset + prev.n_bytes:
            raise GGUFError(
                f"tensor data overlaps {prev.name!r} (which spans data offsets {prev.offset}.."
                f"{prev.offset + prev.n_bytes}) at data offset {cur.offset}",
                tensor=cur.name,
            )
    return tensors


def _alignment(metadata: dict[str, Any], types: dict[str, MetaType]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    if types["general.alignment"] is not ValueType.UINT32:
        raise GGUFError(f"general.alignment must be a uint32, not {types['general.alignment']}")
    a = metadata["general.alignment"]
    if a <= 0 or a & (a - 1):
        raise GGUFError(f"general.alignment = {a} is not a positive power of two")
    return a


def _version(cur: _Cursor) -> Reads[int]:
    magic = yield from cur.take(4, "magic")
    if magic != GGUF_MAGIC:
        raise GGUFError(f"bad magic {magic!r}: not a GGUF file (expected {GGUF_MAGIC!r})", offset=0)
    version = yield from _u32(cur, "version")
    if version in SUPPORTED_VERSIONS:
        return version
    if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        raise GGUFError("big-endian GGUF files are not supported (the version field is byte-swapped)", offset=4)
    raise GGUFError(f"unsupported GGUF version {version} (supported: 2, 3)", offset=4)


def _parse(size: int) -> Reads[_Header]:
    """The whole header, from magic to the start of tensor data."""
    cur = _Cursor(size)
    version = yield from _version(cur)
    n_tensors = yield from _count(cur, "tensor count", _MIN_TENSOR_INFO_BYTES)
    n_kv = yield from _count(cur, "metadata kv count", _MIN_KV_BYTES)
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > cur.remaining():
        raise GGUFError(f"{n_tensors} tensors and {n_kv} metadata keys cannot fit in the file", offset=8)
    metadata, types = yield from _metadata(cur, n_kv)
    raw: list[_RawTensor] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        at = cur.pos
        t = yield from _tensor_info(cur)
        if t.name in names:
            raise GGUFError("duplicate tensor name", offset=at, tensor=t.name)
        names.add(t.name)
        raw.append(t)
    alignment = _alignment(metadata, types)
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = _place_tensors(raw, data_offset, alignment, size)
    return _Header(version, metadata, types, tensors, alignment, data_offset)
