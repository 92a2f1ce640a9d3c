"""Device on the browser's WebGPU (`navigator.gpu`) through Pyodide's JS FFI.

The browser twin of `native.py`; see `realm_web.device` for the interface. WebGPU's asynchronous calls
(adapter, device, pipeline creation, buffer mapping, error scopes) are awaited with `pyodide.ffi.run_sync`, so
the engine above stays synchronous; that needs JSPI, i.e. the Python entry must be called from JS with
`callPromising` (realm_web.web documents this). Per token the engine crosses into JS a constant few times: the
recorded step is handed to JS once as an array and replayed by `encode` in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import js  # Pyodide's module of JS globals
from pyodide.code import run_js
from pyodide.ffi import JsException, run_sync, to_js

from realm_web.device import MAX_QUERIES, DeviceInfo
from realm_web.errors import DeviceError, DeviceLostError, OutOfMemoryError

# WebGPU spells the features as the WGSL enables them; only those the kernels use are requested.
_WANTED_FEATURES = ("subgroups", "timestamp-query")
_LIMITS = (
    "maxStorageBufferBindingSize",
    "maxBufferSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxStorageBuffersPerShaderStage",
    "maxComputeWorkgroupsPerDimension",
)
_SCOPED_BYTES = 1 << 20  # buffers at least this large are allocated inside an out-of-memory error scope

# The JS half of the device: everything that would otherwise cost one FFI crossing per dispatch or per await.
_JS = r"""
({
  async open(wantedFeatures, limitNames) {
    if (!globalThis.navigator || !navigator.gpu) return { error: "nogpu" };
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) return { error: "noadapter" };
    const features = wantedFeatures.filter((f) => adapter.features.has(f));
    const requiredLimits = {};
    for (const k of limitNames) requiredLimits[k] = adapter.limits[k];
    const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
    const state = { device, adapter, features, limits: requiredLimits, lost: "", errors: [],
                    staging: null };
    device.lost.then((info) => { state.lost = `${info.reason}: ${info.message}`; });
    device.onuncapturederror = (ev) => { state.errors.push(ev.error.message); };
    const i = adapter.info || {};
    state.name = i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(" ") || "WebGPU";
    state.fallback = !!(i.isFallbackAdapter ?? adapter.isFallbackAdapter);
    return state;
  },
  async createBuffer(state, size, usage, label, scoped) {
    const d = state.device;
    if (!scoped) return d.createBuffer({ size, usage, label });
    d.pushErrorScope("out-of-memory");
    const buf = d.createBuffer({ size, usage, label });
    const err = await d.popErrorScope();
    if (err) { buf.destroy(); return err.message || "out of memory"; }
    return buf;
  },
  async pipeline(state, name, code, constants) {
    const d = state.device;
    const module = d.createShaderModule({ code, label: name });
    try {
      return await d.createComputePipelineAsync({
        layout: "auto", label: name, compute: { module, entryPoint: "main", constants } });
    } catch (e) {
      const info = await module.getCompilationInfo();
      const msgs = info.messages.map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message}`).join("; ");
      return `${e.message}${msgs ? " (" + msgs + ")" : ""}`;
    }
  },
  bindGroup(state, pipeline, name, entries) {
    const e = [];
    for (let i = 0; i < entries.length; i += 3)
      e.push({ binding: i / 3, resource: { buffer: entries[i], offset: entries[i + 1], size: entries[i + 2] } });
    return state.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: e, label: name });
  },
  encode(state, list) {
    const enc = state.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (const d of list) {
      pass.setPipeline(d[0]);
      pass.setBindGroup(0, d[1]);
      pass.dispatchWorkgroups(d[2], d[3], d[4]);
    }
    pass.end();
    state.device.queue.submit([enc.finish()]);
  },
  async timed(state, list, perDispatch, maxQueries) {
    // timed_submit: a timestamp pair around each pass (one per dispatch, or one for the list), read back.
    const d = state.device;
    const passes = perDispatch ? list.map((x) => [x]) : [list];
    const nQ = 2 * passes.length, nSets = Math.ceil(nQ / maxQueries), bytes = 8 * nQ;
    state.querySets ??= [];
    while (state.querySets.length < nSets)
      state.querySets.push(d.createQuerySet({ type: "timestamp", count: maxQueries, label: "timing" }));
    if (!state.resolve || state.resolve.size < bytes) {
      state.resolve?.destroy();
      state.resolveRead?.destroy();
      const u = GPUBufferUsage;
      state.resolve = d.createBuffer({ size: bytes, usage: u.QUERY_RESOLVE | u.COPY_SRC, label: "timing" });
      state.resolveRead = d.createBuffer({ size: bytes, usage: u.MAP_READ | u.COPY_DST, label: "timing.read" });
    }
    const enc = d.createCommandEncoder();
    passes.forEach((group, i) => {
      const q = Math.floor((2 * i) / maxQueries), j = (2 * i) % maxQueries;
      const pass = enc.beginComputePass({ timestampWrites: {
        querySet: state.querySets[q], beginningOfPassWriteIndex: j, endOfPassWriteIndex: j + 1 } });
      for (const x of group) {
        pass.setPipeline(x[0]);
        pass.setBindGroup(0, x[1]);
        pass.dispatchWorkgroups(x[2], x[3], x[4]);
      }
      pass.end();
    });
    for (let q = 0; q < nSets; q++)
      enc.resolveQuerySet(state.querySets[q], 0, Math.min(maxQueries, nQ - q * maxQueries), state.resolve,
                          8 * q * maxQueries);
    enc.copyBufferToBuffer(state.resolve, 0, state.resolveRead, 0, bytes);
    d.queue.submit([enc.finish()]);
    try {
      await state.resolveRead.mapAsync(GPUMapMode.READ, 0, bytes);
    } catch (e) {
      return state.lost ? null : String(e.message || e);
    }
    const t = new BigUint64Array(state.resolveRead.getMappedRange(0, bytes).slice(0));
    state.resolveRead.unmap();
    const out = [];
    for (let k = 0; k < nQ; k += 2) out.push(t[k + 1] > t[k] ? Number(t[k + 1] - t[k]) : 0);
    return out;
  },
  write(state, buf, offset, bytes) {
    state.device.queue.writeBuffer(buf, offset, bytes);
  },
  async read(state, buf, offset, size) {
    const d = state.device;
    let st = state.staging;
    if (size > 65536) st = d.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    else if (!st) st = state.staging = d.createBuffer({
      size: 65536, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: "staging" });
    const enc = d.createCommandEncoder();
    enc.copyBufferToBuffer(buf, offset, st, 0, size);
    d.queue.submit([enc.finish()]);
    try {
      await st.mapAsync(GPUMapMode.READ, 0, size);
    } catch (e) {
      if (st !== state.staging) st.destroy();
      return state.lost ? null : String(e.message || e);
    }
    const out = new Uint8Array(st.getMappedRange(0, size).slice(0));
    st.unmap();
    if (st !== state.staging) st.destroy();
    return out;
  },
  takeErrors(state) {
    const e = state.errors.join("; ");
    state.errors.length = 0;
    return e;
  },
})
"""


@dataclass
class BrowserBuffer:
    handle: Any  # GPUBuffer (JsProxy)
    size: int
    label: str


@dataclass
class BrowserDispatch:
    name: str
    groups: tuple[int, int, int]
    js: Any  # [pipeline, bindGroup, x, y, z] as a JS array


def _obj(d: dict) -> Any:
    return to_js(d, dict_converter=js.Object.fromEntries)


class BrowserDevice:
    def __init__(self, helpers: Any, state: Any, info: DeviceInfo):
        self._js = helpers
        self.state = state
        self.info = info
        self._pipelines: dict[tuple, Any] = {}
        self._lists: dict[tuple[int, ...], tuple[list, Any]] = {}
        self._buffers: list[BrowserBuffer] = []

    @classmethod
    def create(cls, *, max_storage_binding: int | None = None, features: tuple[str, ...] | None = None):
        """Open the browser's best adapter with every limit it allows and the optional features we use."""
        helpers = run_js(_JS)
        wanted = _WANTED_FEATURES if features is None else features
        try:
            state = run_sync(helpers.open(to_js(list(wanted)), to_js(list(_LIMITS))))
        except JsException as e:
            raise DeviceError(f"could not open a WebGPU device: {e}") from e
        err = getattr(state, "error", None)
        if err == "nogpu":
            raise DeviceError("this browser has no WebGPU (navigator.gpu is missing): use a browser with WebGPU")
        if err == "noadapter":
            raise DeviceError("WebGPU is present but no adapter is available (blocked, or no usable GPU)")
        lim = state.limits
        binding = int(lim.maxStorageBufferBindingSize)
        if max_storage_binding is not None:
            binding = min(binding, max_storage_binding)
        info = DeviceInfo(
            name=str(state.name),
            backend="browser",
            adapter_type="CPU" if state.fallback else "GPU",
            features=frozenset(str(f) for f in state.features),
            max_storage_binding=binding,
            max_buffer=int(lim.maxBufferSize),
            max_workgroup_storage=int(lim.maxComputeWorkgroupStorageSize),
            max_invocations=int(lim.maxComputeInvocationsPerWorkgroup),
            max_workgroups_per_dim=int(lim.maxComputeWorkgroupsPerDimension),
            max_storage_buffers_per_stage=int(lim.maxStorageBuffersPerShaderStage),
        )
        return cls(helpers, state, info)

    # -- errors ------------------------------------------------------------------------------------------------
    def _check(self, doing: str) -> None:
        """Raise for a lost device or for validation errors the device reported since the last check."""
        if self.state.lost:
            raise DeviceLostError(f"the GPU device was lost ({self.state.lost}) while {doing}")
        errors = str(self._js.takeErrors(self.state))
        if errors:
            raise DeviceError(f"WebGPU reported an error while {doing}: {errors}")

    # -- buffers -----------------------------------------------------------------------------------------------
    def create_buffer(self, size: int, label: str = "", *, uniform: bool = False) -> BrowserBuffer:
        size = max(16, (size + 3) & ~3)
        if size > self.info.max_buffer:
            raise DeviceError(f"buffer {label!r} of {size} bytes exceeds the device limit {self.info.max_buffer}")
        u = js.GPUBufferUsage
        usage = (u.UNIFORM | u.COPY_DST) if uniform else (u.STORAGE | u.COPY_SRC | u.COPY_DST)
        self._check(f"allocating {label!r}")
        res = run_sync(self._js.createBuffer(self.state, size, usage, label, size >= _SCOPED_BYTES))
        if isinstance(res, str):
            raise OutOfMemoryError(f"out of GPU memory allocating {label!r} ({size / 2**20:.1f} MiB): {res}")
        buf = BrowserBuffer(res, size, label)
        self._buffers.append(buf)
        return buf

    def write(self, buf: BrowserBuffer, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) % 4:  # queue.writeBuffer needs a multiple of 4 bytes
            mv = memoryview(bytes(mv) + bytes(4 - len(mv) % 4))
        self._js.write(self.state, buf.handle, offset, to_js(mv))

    def read(self, buf: BrowserBuffer, offset: int = 0, size: int | None = None) -> bytes:
        size = buf.size - offset if size is None else size
        padded = (size + 3) & ~3
        try:
            res = run_sync(self._js.read(self.state, buf.handle, offset, padded))
        except JsException as e:
            self._check(f"reading {buf.label!r}")
            raise DeviceError(f"reading {buf.label!r} failed: {e}") from e
        if res is None or isinstance(res, str):
            self._check(f"reading {buf.label!r}")
            raise DeviceError(f"reading {buf.label!r} failed: {res}")
        self._check(f"reading {buf.label!r}")
        return res.to_bytes()[:size]

    def allocated_bytes(self) -> int:
        """Bytes of every buffer this device holds now (weights, KV cache, activations, uniforms)."""
        return sum(b.size for b in self._buffers)

    def destroy(self, buf: BrowserBuffer) -> None:
        buf.handle.destroy()
        self._buffers = [b for b in self._buffers if b is not buf]

    def close(self) -> None:
        """Free every buffer and the device itself."""
        for b in self._buffers:
            b.handle.destroy()
        self._buffers.clear()
        self._lists.clear()
        self._pipelines.clear()
        self.state.device.destroy()

    # -- pipelines and dispatches ------------------------------------------------------------------------------
    def _pipeline(self, name: str, wgsl: str, constants: dict[str, int | float]) -> Any:
        key = (name, tuple(sorted(constants.items())))
        pipe = self._pipelines.get(key)
        if pipe is None:
            self._check(f"compiling {name}")
            pipe = run_sync(self._js.pipeline(self.state, name, wgsl, _obj(dict(constants))))
            if isinstance(pipe, str):
                raise DeviceError(f"kernel {name} failed to compile on {self.info.name}: {pipe}")
            self._pipelines[key] = pipe
        return pipe

    def dispatch(
        self,
        name: str,
        wgsl: str,
        constants: dict[str, int | float],
        buffers: list[Any],
        groups: tuple[int, int, int],
    ) -> BrowserDispatch:
        """Build a dispatch: `buffers[i]` is bound at @binding(i) as a whole buffer or (buffer, offset, size)."""
        for g in groups:
            if not 0 < g <= self.info.max_workgroups_per_dim:
                raise DeviceError(f"{name}: grid {groups} outside 1..{self.info.max_workgroups_per_dim}")
        pipe = self._pipeline(name, wgsl, constants)
        flat: list[Any] = []
        for b in buffers:
            flat += [b.handle, 0, b.size] if isinstance(b, BrowserBuffer) else [b[0].handle, b[1], b[2]]
        bg = self._js.bindGroup(self.state, pipe, name, to_js(flat))
        return BrowserDispatch(name, tuple(groups), to_js([pipe, bg, *groups]))

    def _js_list(self, dispatches: list[BrowserDispatch]) -> Any:
        """The JS array of a list of dispatches, built once per list and replayed (the Python list is kept so
        that the ids in the key stay those of live objects)."""
        key = tuple(map(id, dispatches))
        hit = self._lists.get(key)
        if hit is None:
            hit = self._lists[key] = (list(dispatches), to_js([d.js for d in dispatches]))
        return hit[1]

    def submit(self, dispatches: list[BrowserDispatch]) -> None:
        """Submit the dispatches as one compute pass."""
        self._js.encode(self.state, self._js_list(dispatches))

    def timed_submit(self, dispatches: list[BrowserDispatch], per_dispatch: bool = True) -> list[int] | None:
        """As the native device's: GPU nanoseconds per pass, None without "timestamp-query" (browsers may also
        quantize timestamps against timing attacks; Chromium on SwiftShader here gives them unrounded)."""
        if not self.info.timestamps:
            return None
        if not dispatches:
            return []
        lst = self._js_list(dispatches)
        try:
            res = run_sync(self._js.timed(self.state, lst, per_dispatch, MAX_QUERIES))
        except JsException as e:
            self._check("timing dispatches")
            raise DeviceError(f"timing dispatches failed: {e}") from e
        self._check("timing dispatches")
        if res is None or isinstance(res, str):
            raise DeviceError(f"timing dispatches failed: {res}")
        return [int(v) for v in res.to_py()]

    def lose(self) -> None:
        """Destroy the GPUDevice under the engine (tests of the device-lost path)."""
        self.state.device.destroy()
