"""Device on wgpu-py (Vulkan, Metal, D3D12; Mesa's lavapipe when there is no GPU).

The only module that imports wgpu. See `realm_web.device` for the interface it implements.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import wgpu

from realm_web.device import MAX_QUERIES, DeviceInfo
from realm_web.errors import DeviceError

# Optional features used when the adapter has them. wgpu-py spells the WebGPU "subgroups" feature "subgroup".
_WANTED_FEATURES = ("subgroup", "timestamp-query")


@dataclass
class NativeBuffer:
    handle: Any  # wgpu.GPUBuffer
    size: int
    label: str


@dataclass
class NativeDispatch:
    name: str
    pipeline: Any
    bind_group: Any
    groups: tuple[int, int, int]

    def __post_init__(self) -> None:
        # the C handles, for _encode_raw (the Python objects above keep them alive)
        self.raw = (self.pipeline._internal, self.bind_group._internal, *self.groups)


# Encoding a decode step is a few hundred dispatches, replayed every token. wgpu-py's pass methods check their
# arguments and wrap every C call in an error check (~12 µs a dispatch, 4 ms a step for a 22-layer model); the
# dispatches were validated when built, so a step's commands go straight to wgpu-native's C functions. Errors
# still surface: wgpu-native reports them at the pass's end / the submission, which go through wgpu-py.
try:
    from wgpu.backends.wgpu_native._ffi import ffi as _ffi
    from wgpu.backends.wgpu_native._ffi import lib as _RAW
except ImportError:  # another wgpu-py layout: use the public API
    _RAW = None


def _encode_raw(cpass: Any, dispatches: list[NativeDispatch]) -> None:
    set_pipeline = _RAW.wgpuComputePassEncoderSetPipeline
    set_bind_group = _RAW.wgpuComputePassEncoderSetBindGroup
    dispatch = _RAW.wgpuComputePassEncoderDispatchWorkgroups
    null, last = _ffi.NULL, None
    for d in dispatches:
        pipe, bg, gx, gy, gz = d.raw
        if pipe != last:
            set_pipeline(cpass, pipe)
            last = pipe
        set_bind_group(cpass, 0, bg, 0, null)
        dispatch(cpass, gx, gy, gz)


def _no_adapter(reason: str) -> str:
    """One line for a machine where wgpu finds no adapter: what wgpu says (the last line of its multi-line
    message lists each backend's reason, e.g. "vulkan drivers/libraries could not be loaded") and what to install.
    On Linux (no Metal/D3D12) WebGPU needs a Vulkan loader and driver; Mesa's lavapipe runs on any CPU."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    why = f" ({lines[-1]})" if lines else ""
    return (
        f"no usable WebGPU adapter{why}. Install a Vulkan loader and driver: on Debian/Ubuntu "
        "`sudo apt-get install libvulkan1 mesa-vulkan-drivers` (Mesa's lavapipe runs on the CPU, no GPU needed), "
        "on Fedora `sudo dnf install vulkan-loader mesa-vulkan-drivers`, or your GPU vendor's Vulkan driver"
    )


def _host_memory() -> int | None:
    """MemAvailable of /proc/meminfo: what a CPU adapter (lavapipe), whose buffers are host memory, can still
    allocate; None where it cannot be read. (wgpu reports no memory size for GPUs.)"""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class NativeDevice:
    def __init__(self, adapter: Any, device: Any, info: DeviceInfo):
        self.adapter = adapter
        self.device = device
        self.info = info
        self._modules: dict[str, Any] = {}
        self._pipelines: dict[tuple, Any] = {}
        self._buffers: list[NativeBuffer] = []
        self._query_sets: list[Any] = []  # timestamp query sets of MAX_QUERIES each, made on first use
        self._resolve: Any = None  # QUERY_RESOLVE buffer the timestamps land in, grown on demand

    @classmethod
    def create(
        cls,
        *,
        power_preference: str = "high-performance",
        max_storage_binding: int | None = None,
        features: tuple[str, ...] | None = None,
    ) -> NativeDevice:
        """Open the best adapter. `max_storage_binding` lowers the binding limit the runtime plans with
        (tests use it to force weight splitting); `features` restricts the optional features used."""
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # Mesa warns without it
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as e:  # wgpu raises plain RuntimeError when no adapter exists
            raise DeviceError(_no_adapter(str(e))) from e
        if adapter is None:
            raise DeviceError(_no_adapter(""))
        wanted = _WANTED_FEATURES if features is None else features
        feats = [f for f in wanted if f in adapter.features]
        al = adapter.limits
        limits = {
            k: al[k]
            for k in (
                "max-storage-buffer-binding-size",
                "max-buffer-size",
                "max-compute-workgroup-storage-size",
                "max-compute-invocations-per-workgroup",
                "max-compute-workgroup-size-x",
                "max-storage-buffers-per-shader-stage",
            )
        }
        try:
            device = adapter.request_device_sync(required_features=feats, required_limits=limits)
        except Exception as e:
            raise DeviceError(f"could not open a device on {adapter.info['description']}: {e}") from e
        ai = adapter.info
        binding = limits["max-storage-buffer-binding-size"]
        if max_storage_binding is not None:
            binding = min(binding, max_storage_binding)
        info = DeviceInfo(
            name=ai.get("device") or ai.get("description") or "unknown",
            backend=ai.get("backend_type", "unknown"),
            adapter_type=ai.get("adapter_type", "unknown"),
            features=frozenset(feats),
            max_storage_binding=binding,
            max_buffer=limits["max-buffer-size"],
            max_workgroup_storage=limits["max-compute-workgroup-storage-size"],
            max_invocations=limits["max-compute-invocations-per-workgroup"],
            max_workgroups_per_dim=al["max-compute-workgroups-per-dimension"],
            max_storage_buffers_per_stage=limits["max-storage-buffers-per-shader-stage"],
            memory=_host_memory() if ai.get("adapter_type") == "CPU" else None,
        )
        return cls(adapter, device, info)

    # -- buffers -------------------------------------------------------------------------------------------
    def create_buffer(self, size: int, label: str = "", *, uniform: bool = False) -> NativeBuffer:
        # WebGPU copies and writes are multiples of 4 bytes; 16 covers the smallest vec4<f32> binding
        size = max(16, (size + 3) & ~3)
        if size > self.info.max_buffer:
            raise DeviceError(f"buffer {label!r} of {size} bytes exceeds the device limit {self.info.max_buffer}")
        u = wgpu.BufferUsage
        usage = (u.UNIFORM | u.COPY_DST) if uniform else (u.STORAGE | u.COPY_SRC | u.COPY_DST)
        try:
            handle = self.device.create_buffer(size=size, usage=usage, label=label)
        except Exception as e:
            raise DeviceError(f"could not allocate buffer {label!r} of {size} bytes: {e}") from e
        buf = NativeBuffer(handle, size, label)
        self._buffers.append(buf)
        return buf

    def write(self, buf: NativeBuffer, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        mv = memoryview(data).cast("B")
        n = len(mv)
        if n % 4:  # queue.writeBuffer needs a multiple of 4 bytes
            mv = memoryview(bytes(mv) + bytes(4 - n % 4))
        self.device.queue.write_buffer(buf.handle, offset, mv)

    def read(self, buf: NativeBuffer, offset: int = 0, size: int | None = None) -> bytes:
        size = buf.size - offset if size is None else size
        padded = (size + 3) & ~3
        return bytes(self.device.queue.read_buffer(buf.handle, offset, padded))[:size]

    def allocated_bytes(self) -> int:
        """Bytes of every buffer this device holds now (weights, KV cache, activations, uniforms)."""
        return sum(b.size for b in self._buffers)

    def destroy(self, buf: NativeBuffer) -> None:
        buf.handle.destroy()
        self._buffers = [b for b in self._buffers if b is not buf]

    def close(self) -> None:
        """Free every buffer this device allocated (the wgpu device itself goes with its last reference)."""
        for b in self._buffers:
            b.handle.destroy()
        self._buffers.clear()
        for q in self._query_sets:
            q.destroy()
        self._query_sets.clear()
        if self._resolve is not None:
            self._resolve.destroy()
            self._resolve = None
        self._pipelines.clear()
        self._modules.clear()

    # -- pipelines and dispatches --------------------------------------------------------------------------
    def _pipeline(self, name: str, wgsl: str, constants: dict[str, int | float]) -> Any:
        key = (name, tuple(sorted(constants.items())))
        pipe = self._pipelines.get(key)
        if pipe is None:
            module = self._modules.get(name)
            if module is None:
                # Naga (wgpu-native 0.32) implements subgroup builtins but rejects the standard
                # `enable subgroups;` directive that browsers require; the device feature gates them here.
                code = wgsl.replace("enable subgroups;", "")
                module = self._modules[name] = self.device.create_shader_module(code=code, label=name)
            pipe = self.device.create_compute_pipeline(
                layout="auto",
                compute={"module": module, "entry_point": "main", "constants": dict(constants)},
                label=name,
            )
            self._pipelines[key] = pipe
        return pipe

    def dispatch(
        self,
        name: str,
        wgsl: str,
        constants: dict[str, int | float],
        buffers: list[Any],
        groups: tuple[int, int, int],
    ) -> NativeDispatch:
        """Build a dispatch: `buffers[i]` is bound at @binding(i) as a whole buffer or (buffer, offset, size)."""
        pipe = self._pipeline(name, wgsl, constants)
        entries = []
        for i, b in enumerate(buffers):
            buf, off, size = (b.handle, 0, b.size) if isinstance(b, NativeBuffer) else (b[0].handle, b[1], b[2])
            entries.append({"binding": i, "resource": {"buffer": buf, "offset": off, "size": size}})
        bg = self.device.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=entries, label=name)
        for g in groups:
            if not 0 < g <= self.info.max_workgroups_per_dim:
                raise DeviceError(f"{name}: grid {groups} outside 1..{self.info.max_workgroups_per_dim}")
        return NativeDispatch(name, pipe, bg, groups)

    def submit(self, dispatches: list[NativeDispatch]) -> None:
        """Record the dispatches into one compute pass and submit them as one command buffer."""
        enc = self.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        if _RAW is None:
            for d in dispatches:
                cp.set_pipeline(d.pipeline)
                cp.set_bind_group(0, d.bind_group)
                cp.dispatch_workgroups(*d.groups)
        else:
            _encode_raw(cp._internal, dispatches)
        cp.end()
        self.device.queue.submit([enc.finish()])

    # -- timing --------------------------------------------------------------------------------------------
    def timed_submit(self, dispatches: list[NativeDispatch], per_dispatch: bool = True) -> list[int] | None:
        """Submit with a timestamp pair around each compute pass (one pass per dispatch, or one for the whole
        list) and wait: GPU nanoseconds per pass, in order. None when the device has no "timestamp-query"."""
        if not self.info.timestamps:
            return None
        if not dispatches:
            return []
        passes = [[d] for d in dispatches] if per_dispatch else [list(dispatches)]
        n_q = 2 * len(passes)
        n_sets = -(-n_q // MAX_QUERIES)
        while len(self._query_sets) < n_sets:
            self._query_sets.append(self.device.create_query_set(type="timestamp", count=MAX_QUERIES, label="timing"))
        if self._resolve is None or self._resolve.size < 8 * n_q:
            if self._resolve is not None:
                self._resolve.destroy()
            u = wgpu.BufferUsage
            self._resolve = self.device.create_buffer(size=8 * n_q, usage=u.QUERY_RESOLVE | u.COPY_SRC, label="timing")
        enc = self.device.create_command_encoder()
        for i, group in enumerate(passes):
            q, j = divmod(2 * i, MAX_QUERIES)
            writes = {"query_set": self._query_sets[q], "beginning_of_pass_write_index": j,
                      "end_of_pass_write_index": j + 1}  # fmt: skip
            cp = enc.begin_compute_pass(timestamp_writes=writes)
            for d in group:
                cp.set_pipeline(d.pipeline)
                cp.set_bind_group(0, d.bind_group)
                cp.dispatch_workgroups(*d.groups)
            cp.end()
        for q in range(n_sets):  # each set lands at a multiple of 32 KiB: the 256-byte resolve alignment holds
            count = min(MAX_QUERIES, n_q - q * MAX_QUERIES)
            enc.resolve_query_set(self._query_sets[q], 0, count, self._resolve, 8 * q * MAX_QUERIES)
        self.device.queue.submit([enc.finish()])
        ticks = struct.unpack(f"<{n_q}Q", bytes(self.device.queue.read_buffer(self._resolve, 0, 8 * n_q)))
        period = self._timestamp_period()
        return [max(0, round((ticks[k + 1] - ticks[k]) * period)) for k in range(0, n_q, 2)]

    def _timestamp_period(self) -> float:
        """Nanoseconds per timestamp tick. WebGPU resolves nanoseconds, but wgpu-native resolves raw ticks
        unless the instance normalizes them (wgpu.h, WGPUInstanceFlag_AutomaticTimestampNormalization), and
        wgpu-py 0.32 wraps no getter: ask the C API directly (1.0 on lavapipe and on NVIDIA)."""
        try:
            from wgpu.backends.wgpu_native._api import libf

            return float(libf.wgpuQueueGetTimestampPeriod(self.device.queue._internal))
        except Exception:  # another backend or a later wgpu-py without it: assume nanoseconds
            return 1.0
