"""The one interface to the GPU. Everything above this package speaks only `Device`.

Two implementations: `native` (wgpu-py, desktop) and, in the browser, `navigator.gpu` through Pyodide's JS
FFI. The interface is deliberately small: buffers, pipelines from shipped WGSL, pre-built dispatches
(pipeline + bind group + grid) that a step records once and replays, and read-back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

# Queries one GPUQuerySet may hold: WebGPU's createQuerySet rejects count > 4096 (a fixed number, not a limit).
MAX_QUERIES = 4096


@dataclass(frozen=True)
class DeviceInfo:
    """What the adapter is and what it allows. Limits are those the device was created with."""

    name: str  # adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)"
    backend: str  # "Vulkan", "Metal", "browser", ...
    adapter_type: str  # "CPU", "DiscreteGPU", ...
    features: frozenset[str] = field(default_factory=frozenset)
    max_storage_binding: int = 128 << 20  # bytes one storage binding may span
    max_buffer: int = 256 << 20  # bytes one buffer may hold
    max_workgroup_storage: int = 16 << 10  # bytes of var<workgroup> per workgroup
    max_invocations: int = 256  # threads per workgroup
    max_workgroups_per_dim: int = 65535
    max_storage_buffers_per_stage: int = 8
    memory: int | None = None  # bytes the device can still allocate, where the platform says (None: unknown)

    @property
    def subgroups(self) -> bool:
        return "subgroup" in self.features or "subgroups" in self.features

    @property
    def timestamps(self) -> bool:
        return "timestamp-query" in self.features


class Buffer(Protocol):
    size: int
    label: str


class Dispatch(Protocol):
    """A pipeline with its bind group and grid, built once and submitted any number of times."""

    name: str
    groups: tuple[int, int, int]


class Device(Protocol):
    info: DeviceInfo

    def create_buffer(self, size: int, label: str = "", *, uniform: bool = False) -> Buffer: ...

    def write(self, buf: Buffer, data: bytes | bytearray | memoryview, offset: int = 0) -> None: ...

    def read(self, buf: Buffer, offset: int = 0, size: int | None = None) -> bytes: ...

    def dispatch(
        self,
        name: str,
        wgsl: str,
        constants: dict[str, int | float],
        buffers: list[Any],
        groups: tuple[int, int, int],
    ) -> Dispatch: ...

    def submit(self, dispatches: list[Dispatch]) -> None: ...

    def timed_submit(self, dispatches: list[Dispatch], per_dispatch: bool = True) -> list[int] | None:
        """Submit `dispatches` with GPU timestamps and wait for them: the nanoseconds each dispatch took, in
        order (each in its own compute pass, which adds a pass boundary per dispatch), or with per_dispatch=False
        one value for the whole list run as one pass, as `submit` runs it. None without "timestamp-query"."""
        ...

    def destroy(self, buf: Buffer) -> None: ...

    def allocated_bytes(self) -> int:
        """Bytes of every buffer this device holds now."""
        ...

    def close(self) -> None:
        """Free every buffer this device allocated and release the device."""
        ...


def get_device(**options: Any) -> Device:
    """Open the default device for this platform: wgpu-py natively (`native.NativeDevice.create`), the
    browser's navigator.gpu under Pyodide (`browser.BrowserDevice.create`)."""
    if sys.platform == "emscripten":
        from realm_web.device import browser

        return browser.BrowserDevice.create(**options)
    from realm_web.device import native

    return native.NativeDevice.create(**options)
