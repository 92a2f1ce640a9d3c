"""Weights on the GPU: tensors streamed from a byte source in bounded chunks, split to fit binding limits.

A tensor of `n_rows` rows (GGUF: the product of dims after ne0) is cut into parts of whole rows, each part in
a buffer no larger than the device's `max_storage_binding`; kernels are dispatched once per part. The bytes
stay in the file's block layout. Host memory used while loading is bounded by `chunk_bytes`, whatever the
model size: the whole model never sits in host (or wasm) memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from realm_web.device import Buffer, Device
from realm_web.errors import DeviceError, GGUFError
from realm_web.quants import GGMLType

DEFAULT_CHUNK = 8 << 20  # bytes read from the source and written to the GPU at a time

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class WeightPart:
    buffer: Buffer
    row_begin: int  # first tensor row held by this part
    n_rows: int


@dataclass
class Weight:
    """A tensor on the GPU: `n_rows` rows of `row_elems` elements of `type`, in one or more parts."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]  # GGUF order: ne0 (contiguous) first
    parts: list[WeightPart]

    @property
    def row_elems(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def row_bytes(self) -> int:
        return self.type.row_bytes(self.row_elems)

    @property
    def n_bytes(self) -> int:
        return self.row_bytes * self.n_rows


def plan_parts(name: str, n_rows: int, row_bytes: int, max_binding: int) -> list[tuple[int, int]]:
    """Cut `n_rows` rows into balanced parts of whole rows, each ≤ max_binding bytes (padded to 4)."""
    rows_fit = (max_binding & ~3) // row_bytes if row_bytes else n_rows  # pad4(n*rb) <= mb
    if rows_fit < 1:
        raise DeviceError(
            f"tensor {name!r}: one row is {row_bytes} bytes, more than the device's storage binding limit "
            f"of {max_binding} bytes"
        )
    n_parts = -(-n_rows // rows_fit)
    per = -(-n_rows // n_parts)
    return [(r, min(per, n_rows - r)) for r in range(0, n_rows, per)]


def upload(
    dev: Device,
    name: str,
    gtype: GGMLType,
    shape: tuple[int, ...],
    read: Callable[[int, int], bytes],
    *,
    chunk_bytes: int = DEFAULT_CHUNK,
    max_binding: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Weight:
    """Stream one tensor to the GPU. `read(offset, length)` returns the tensor's bytes [offset, +length).

    `max_binding` lowers the part size below the device's binding limit (tests force splitting with it)."""
    w = Weight(name, gtype, tuple(shape), [])
    if w.row_elems % gtype.block_elems:
        raise GGUFError(f"row of {w.row_elems} elements is not a multiple of {gtype.name}'s block", tensor=name)
    chunk_bytes = max(4, chunk_bytes & ~3)
    limit = min(dev.info.max_storage_binding, max_binding or dev.info.max_storage_binding)
    for row_begin, n_rows in plan_parts(name, w.n_rows, w.row_bytes, limit):
        size = n_rows * w.row_bytes
        buf = dev.create_buffer(size, f"{name}[{row_begin}:{row_begin + n_rows}]")
        start = row_begin * w.row_bytes
        for off in range(0, size, chunk_bytes):
            n = min(chunk_bytes, size - off)
            data = read(start + off, n)
            if len(data) != n:
                raise GGUFError(f"short read: {len(data)} of {n} bytes at {start + off}", tensor=name)
            dev.write(buf, data, off)
            if progress:
                progress(n)
        w.parts.append(WeightPart(buf, row_begin, n_rows))
    return w


def upload_bytes(dev: Device, name: str, gtype: GGMLType, shape: tuple[int, ...], data: bytes, **kw) -> Weight:
    """Upload a tensor held in memory (tests, small derived tensors) through the same chunked path."""
    mv = memoryview(data)
    return upload(dev, name, gtype, shape, lambda o, n: bytes(mv[o : o + n]), **kw)


def upload_gguf(
    dev: Device,
    gguf,
    names: Iterable[str] | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK,
    max_binding: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Weight]:
    """Stream the tensors `names` (default: all) of a parsed GGUF file to the GPU, reporting progress."""
    infos = [gguf.tensor(n) for n in names] if names is not None else list(gguf.tensors)
    total = sum(i.n_bytes for i in infos)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if progress:
        progress(0, total)
    out = {}
    for info in infos:
        out[info.name] = upload(
            dev,
            info.name,
            info.type,
            info.shape,
            lambda o, n, info=info: gguf.tensor_bytes(info, o, n),
            chunk_bytes=chunk_bytes,
            max_binding=max_binding,
            progress=step,
        )
    return out
