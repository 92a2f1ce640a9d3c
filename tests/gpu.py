"""Test helpers: numpy <-> GPU buffers and random GGUF blocks with their gguf-py reference values."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from realm_web.quants import BY_NAME, SCALE_FIELDS
from realm_web.weights import Weight, upload_bytes


def upload_array(dev, a: np.ndarray) -> object:
    buf = dev.create_buffer(a.nbytes, "test")
    dev.write(buf, np.ascontiguousarray(a).tobytes())
    return buf


def read_f32(dev, buf, n: int) -> np.ndarray:
    return np.frombuffer(dev.read(buf, 0, 4 * n), dtype=np.float32).copy()


def random_tensor(type_name: str, n_rows: int, k: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Random GGUF data of `type_name` with shape [n_rows, k] and its float64 values per gguf-py."""
    if type_name == "F32":
        a = rng.standard_normal((n_rows, k)).astype(np.float32)
        return a.tobytes(), a.astype(np.float64)
    if type_name == "F16":
        with np.errstate(under="ignore"):  # values below the f16 range round to (sub)normal halves
            a = rng.standard_normal((n_rows, k)).astype(np.float32).astype(np.float16)
        return a.tobytes(), a.astype(np.float64)
    if type_name == "BF16":
        bits = (rng.standard_normal((n_rows, k)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        ref = dequantize(bits.view(np.uint8).reshape(n_rows, -1), GGMLQuantizationType.BF16)
        return bits.tobytes(), ref.astype(np.float64)
    t = BY_NAME[type_name]
    nb = k // t.block_elems
    raw = rng.integers(0, 256, size=(n_rows * nb, t.block_bytes), dtype=np.uint8)
    for off in SCALE_FIELDS[type_name]:
        scales = rng.uniform(0.002, 0.05, size=n_rows * nb).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(n_rows, nb * t.block_bytes)
    ref = dequantize(raw, GGMLQuantizationType[type_name]).reshape(n_rows, k)
    return raw.tobytes(), ref.astype(np.float64)


def weight(dev, type_name: str, data: bytes, n_rows: int, k: int, max_binding: int | None = None) -> Weight:
    return upload_bytes(dev, "w", BY_NAME[type_name], (k, n_rows), data, max_binding=max_binding)
