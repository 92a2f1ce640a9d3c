"""Kernels: the shipped WGSL variants and the host code that builds their dispatches.

Each family module (`matmul`, ...) mirrors its kernels' `Params` structs with exactly one packing function
next to the code that dispatches it. Dispatches are built once (pipeline, bind group, uniform buffer) and
replayed; nothing here runs per token.
"""

from __future__ import annotations

import struct
from functools import cache
from importlib import resources
from typing import Any

from realm_web.device import Device, Dispatch


@cache
def wgsl(name: str) -> str:
    """The WGSL source of variant `name`, as rendered by `python -m codegen` into realm_web/wgsl/."""
    return (resources.files("realm_web") / "wgsl" / f"{name}.wgsl").read_text()


def fold(n_groups: int, max_per_dim: int) -> tuple[int, int]:
    """Spread `n_groups` workgroups over grid x and y (each ≤ max_per_dim); kernels use x + y * groups_x."""
    gx = max(1, min(n_groups, max_per_dim))
    return gx, max(1, -(-n_groups // gx))


def u32s(*values: int) -> bytes:
    """Pack a params struct made of u32 fields."""
    return struct.pack(f"<{len(values)}I", *values)


def build(
    dev: Device,
    name: str,
    params: bytes,
    buffers: list[Any],
    groups: tuple[int, int, int],
    constants: dict[str, int | float] | None = None,
) -> Dispatch:
    """A dispatch of variant `name` with its own uniform buffer holding `params` at binding 0."""
    params += bytes(-len(params) % 16)  # uniform structs are read in 16-byte rows
    ubuf = dev.create_buffer(len(params), f"{name}.params", uniform=True)
    dev.write(ubuf, params)
    return dev.dispatch(name, wgsl(name), constants or {}, [ubuf, *buffers], groups)


def pow2_at_most(n: int, cap: int) -> int:
    """Largest power of two ≤ min(n, cap) (workgroup sizes of the tree reductions)."""
    v = 1
    while v * 2 <= min(n, cap):
        v *= 2
    return v
