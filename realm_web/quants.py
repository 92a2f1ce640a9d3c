"""GGML tensor types: block geometry of every type a GGUF file may hold (pure Python).

Sizes are ggml's (ggml/src/ggml.c `type_traits`); gguf-py's GGML_QUANT_SIZES holds the same table.
`COMPUTE_TYPES` are the ones realm_web has kernels for; the reader accepts every known type so it can
describe any file, and refuses only unknown type ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    block_elems: int  # elements per block
    block_bytes: int  # bytes per block

    def row_bytes(self, n_elems: int) -> int:
        """Bytes of `n_elems` consecutive elements; n_elems must be a multiple of block_elems."""
        return n_elems // self.block_elems * self.block_bytes


_TABLE = [
    ("F32", 0, 1, 4), ("F16", 1, 1, 2), ("Q4_0", 2, 32, 18), ("Q4_1", 3, 32, 20),
    ("Q5_0", 6, 32, 22), ("Q5_1", 7, 32, 24), ("Q8_0", 8, 32, 34), ("Q8_1", 9, 32, 40),
    ("Q2_K", 10, 256, 84), ("Q3_K", 11, 256, 110), ("Q4_K", 12, 256, 144), ("Q5_K", 13, 256, 176),
    ("Q6_K", 14, 256, 210), ("Q8_K", 15, 256, 292), ("IQ2_XXS", 16, 256, 66), ("IQ2_XS", 17, 256, 74),
    ("IQ3_XXS", 18, 256, 98), ("IQ1_S", 19, 256, 50), ("IQ4_NL", 20, 32, 18), ("IQ3_S", 21, 256, 110),
    ("IQ2_S", 22, 256, 82), ("IQ4_XS", 23, 256, 136), ("I8", 24, 1, 1), ("I16", 25, 1, 2),
    ("I32", 26, 1, 4), ("I64", 27, 1, 8), ("F64", 28, 1, 8), ("IQ1_M", 29, 256, 56),
    ("BF16", 30, 1, 2), ("TQ1_0", 34, 256, 54), ("TQ2_0", 35, 256, 66), ("MXFP4", 39, 32, 17),
]  # fmt: skip

TYPES: dict[int, GGMLType] = {t[1]: GGMLType(*t) for t in _TABLE}
BY_NAME: dict[str, GGMLType] = {t.name: t for t in TYPES.values()}

# Types with dequantize+matmul kernels (the GGUF quant types llama-family models use).
COMPUTE_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                 "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")  # fmt: skip

# Byte offsets of each block's f16 scale fields (d, and dmin/m where present), from ggml-common.h.
# Random bytes elsewhere make a valid block of these types; benchmarks and tests use that.
SCALE_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip
