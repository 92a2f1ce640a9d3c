"""GGUF files for the reader's tests: well-formed ones from gguf-py's GGUFWriter (the reference writer) and
hand-assembled bytes for the malformed cases the writer refuses to produce (layout: ggml docs/gguf.md)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

UNICODE = "héllo wörld ✓ 日本語 🦙"


def write_model(path: Path, *, alignment: int | None = None, big_tensor_elems: int = 0) -> Path:
    """A v3 file with metadata of every value type and tensors of several types and ranks."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch="llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float32("t.f32", 0.1)  # not exact in float32: checks we keep the float32 value, not 0.1
    w.add_float64("t.f64", 1e300)
    w.add_bool("t.true", True)
    w.add_bool("t.false", False)
    w.add_string("t.str", UNICODE)
    w.add_key_value("t.empty_str", "", V.STRING)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.25, 3.0e-5])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_str", ["a", UNICODE, "", "<s>"])
    w.add_key_value("t.arr_u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("t.arr_u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.arr_f64", [1.5, -(2.0**-40)], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("t.nested", [[1, 2], [3, 4, 5]])
    w.add_array("t.nested_str", [["x", "y"], [UNICODE]])
    w.add_array("t.nested3", [[[1], [2, 3]], [[4]]])

    w.add_tensor("token_embd.weight", rng.standard_normal((8, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(64).astype(np.float16))
    w.add_tensor("blk.0.attn_q.weight", _quantized(rng, (16, 64), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", _quantized(rng, (4, 96), Q.Q4_0), raw_dtype=Q.Q4_0)
    # No K-quant quantizer in gguf-py: random bytes of the right size stand in (the reader never decodes).
    w.add_tensor("blk.0.ffn_down.weight", _raw(rng, 2, 256, Q.Q4_K), raw_dtype=Q.Q4_K)
    w.add_tensor("blk.0.attn_v.weight", _raw(rng, 3, 512, Q.Q6_K), raw_dtype=Q.Q6_K)
    w.add_tensor("blk.0.cube", rng.standard_normal((2, 3, 32), dtype=np.float32))
    w.add_tensor("ids", np.arange(5, dtype=np.int32))
    if big_tensor_elems:
        w.add_tensor("big", np.ones(big_tensor_elems, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _quantized(rng: np.random.Generator, shape: tuple[int, int], qtype: Q) -> np.ndarray:
    return gguf.quants.quantize(rng.standard_normal(shape, dtype=np.float32), qtype)


def _raw(rng: np.random.Generator, rows: int, row_elems: int, qtype: Q) -> np.ndarray:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, (rows, row_elems // block_elems * block_bytes), dtype=np.uint8)


# ---- hand-assembled bytes ----


def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def gstr(s: str | bytes) -> bytes:
    """A GGUF string: u64 byte length, then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, V.UINT32, u32(value))


def tinfo(name: str | bytes, dims: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(type_id) + u64(offset)


def build(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A GGUF file: header, kvs, tensor infos, padding to `alignment`, data. Counts default to the truth."""
    head = magic + u32(version)
    head += u64(len(tensors) if n_tensors is None else n_tensors) + u64(len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += bytes(-len(head) % alignment)
    return head + data
