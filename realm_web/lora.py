"""LoRA adapters: llama.cpp's GGUF adapter files, checked against the base, kept unmerged on the GPU.

An adapter (`general.type = adapter`, `adapter.type = lora`, tensors `<base tensor>.lora_a` [rank, K] and
`.lora_b` [N, rank], as llama.cpp's convert_lora_to_gguf.py writes them) changes a projection to
y = W·x + s·B(A·x), s = scale × alpha / rank (alpha 0: scale alone), llama.cpp's rule.

`LoraPool` owns the GPU side: one f32 pool per target weight with a slot per loaded adapter, filled by
streaming the adapter's tensors to the GPU in their own type and dequantizing them there (the weights'
get_rows kernels: every GGUF type); a table of (rank, alpha / rank) per slot and target; and the per-token
selection a step reads (`sel`). The transformer adds `lora_apply` after a projection's product in the steps
that carry adapters, so the base weights are read once for a batch whatever adapters its tokens use.
`Adapters` is the user's view: names, which slot each holds, and how many requests still use it (an adapter
unloaded while requests use it keeps its slot until they end).
"""

from __future__ import annotations

import itertools
import struct
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from realm_web.device import Buffer, Device, Dispatch
from realm_web.errors import RealmError
from realm_web.gguf import GGUFFile, TensorInfo
from realm_web.kernels.lora import lora_apply
from realm_web.kernels.matmul import get_rows
from realm_web.quants import COMPUTE_TYPES
from realm_web.weights import DEFAULT_CHUNK, Weight, upload

# projections an adapter may change: a block's (blk.N.<name>.weight) and the output head
BLOCK_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
HEAD_TARGET = "output.weight"
NONE_SLOT = 0xFFFFFFFF


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


class LoraError(RealmError):
    """An adapter file is not a LoRA adapter for this model, or an adapter is used wrongly."""


def is_target(name: str) -> bool:
    """Whether `name` is a projection LoRA applies to."""
    if name == HEAD_TARGET:
        return True
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in BLOCK_TARGETS \
        and parts[3] == "weight"  # fmt: skip


@dataclass
class Adapter:
    """A parsed adapter file, checked against the base: `pairs` maps a base tensor to its (lora_a, lora_b)."""

    gguf: GGUFFile
    name: str
    alpha: float
    pairs: dict[str, tuple[TensorInfo, TensorInfo]]

    def rank(self, target: str) -> int:
        return self.pairs[target][0].shape[1]

    @property
    def max_rank(self) -> int:
        return max(self.rank(t) for t in self.pairs)

    def factor(self, target: str) -> float:
        """s / scale: alpha / rank, or 1 when alpha is 0 (llama.cpp's llama_adapter_lora_weight::get_scale)."""
        return self.alpha / self.rank(target) if self.alpha else 1.0


def read_adapter(gf: GGUFFile, base_arch: str, base: Mapping[str, tuple[int, ...]], name: str | None = None) -> Adapter:
    """Check that `gf` is a LoRA adapter for a model of `base_arch` whose 2-D tensors have the shapes `base`
    (GGUF order, ne0 first), and pair its tensors. Every mismatch is a LoraError naming the tensor."""
    md = gf.metadata
    if md.get("general.type") != "adapter":
        raise LoraError(f"not an adapter file: general.type is {md.get('general.type')!r}, expected 'adapter'")
    if md.get("adapter.type") != "lora":
        raise LoraError(f"adapter.type is {md.get('adapter.type')!r}: only 'lora' adapters are supported")
    arch = md.get("general.architecture")
    if arch != base_arch:
        raise LoraError(f"the adapter is for architecture {arch!r}, the model is {base_arch!r}")
    if "adapter.alora.invocation_tokens" in md:
        raise LoraError("activated LoRA (adapter.alora.invocation_tokens) is not supported")
    alpha = md.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha != alpha or alpha < 0:
        raise LoraError(f"adapter.lora.alpha must be a number >= 0, got {alpha!r}")
    halves: dict[str, dict[str, TensorInfo]] = {}
    ignored = []
    for t in gf.tensors:
        stem, _, kind = t.name.rpartition(".")
        if kind in ("lora_a", "lora_b"):
            halves.setdefault(stem, {})[kind] = t
        elif t.name.endswith("_norm.weight"):
            ignored.append(t.name)  # llama.cpp ignores norm vectors in adapters too
        else:
            raise LoraError(f"unexpected tensor {t.name!r}: adapter tensors end in .lora_a or .lora_b")
    if ignored:
        warnings.warn(f"adapter norm tensors are ignored (as llama.cpp does): {', '.join(ignored)}", stacklevel=3)
    if not halves:
        raise LoraError("the adapter has no lora_a/lora_b tensors")
    pairs = {}
    for stem, h in sorted(halves.items()):
        if set(h) != {"lora_a", "lora_b"}:
            missing = ({"lora_a", "lora_b"} - set(h)).pop()
            raise LoraError(f"tensor {stem}.{missing} is missing (its pair {stem}.{set(h).pop()} is there)")
        a, b = h["lora_a"], h["lora_b"]
        if stem.startswith("token_embd"):
            raise LoraError(f"{stem}: adapters on the token embeddings are not supported")
        if stem not in base:
            raise LoraError(f"{stem}: the model has no such tensor (an adapter for another model?)")
        if not is_target(stem):
            raise LoraError(f"{stem}: LoRA on this tensor is not supported (only attention/FFN projections, output)")
        for t in (a, b):
            if len(t.shape) != 2:
                raise LoraError(f"{t.name}: expected a 2-D tensor, got shape {list(t.shape)}")
            if t.type.name not in COMPUTE_TYPES:
                raise LoraError(f"{t.name}: tensor type {t.type.name} is not supported")
        K, N = base[stem][0], base[stem][1]
        if a.shape[0] != K or b.shape[1] != N:
            raise LoraError(
                f"{stem}: lora_a {list(a.shape)} / lora_b {list(b.shape)} do not fit the model's tensor "
                f"{list(base[stem])} (GGUF order; an adapter for another model?)"
            )
        if a.shape[1] != b.shape[0] or a.shape[1] < 1:
            raise LoraError(f"{stem}: ranks disagree: lora_a has rank {a.shape[1]}, lora_b {b.shape[0]}")
        pairs[stem] = (a, b)
    label = name or md.get("general.name") or "lora"
    return Adapter(gf, str(label), float(alpha), pairs)


class LoraPool:
    """The GPU side: per target weight, an A pool [max_loras][rank_cap][ceil4(K)] and a B pool
    [max_loras][N][rank_cap] (f32, created when the first adapter for that weight arrives; a slot is zero past
    its adapter's rank, rank_cap a multiple of 4), the (rank, alpha / rank) table, and the
    per-token selection of the step being run. `version` changes whenever a pool is added: steps recorded with
    adapters are recorded again."""

    def __init__(self, dev: Device, weights: Mapping[str, Weight], *, max_loras: int, rank_cap: int, max_rows: int,
                 chunk_bytes: int = DEFAULT_CHUNK, max_binding: int | None = None):  # fmt: skip
        if max_loras < 1 or rank_cap < 1:
            raise LoraError(f"max_loras and max_lora_rank must be >= 1: {max_loras}, {rank_cap}")
        self.dev, self.weights = dev, weights
        self.requested_rank = rank_cap
        self.max_loras, self.rank_cap, self.max_rows = max_loras, (rank_cap + 3) & ~3, max_rows
        self.n_sel = max_loras  # adapters one token may use at once
        self.chunk_bytes, self.max_binding = chunk_bytes, max_binding
        self.index = {n: i for i, n in enumerate(sorted(n for n in weights if is_target(n)))}
        self.n_targets = max(1, len(self.index))
        self.ranks = dev.create_buffer(8 * max_loras * self.n_targets, "lora.ranks")
        self.sel = dev.create_buffer(8 * 2 * max_rows * self.n_sel, "lora.sel")  # token rows, then output rows
        self.t = dev.create_buffer(4 * max_rows * self.n_sel * self.rank_cap, "lora.t")
        self.pools: dict[str, tuple[Buffer, Buffer]] = {}
        self.free = list(range(max_loras))
        self.version = 0

    def _pool(self, target: str) -> tuple[Buffer, Buffer]:
        pool = self.pools.get(target)
        if pool is None:
            w = self.weights[target]
            size = 4 * self.max_loras * self.rank_cap
            pool = (self.dev.create_buffer(size * _ceil4(w.row_elems), f"lora.a.{target}"),
                    self.dev.create_buffer(size * w.n_rows, f"lora.b.{target}"))  # fmt: skip
            self.pools[target] = pool
            self.version += 1
        return pool

    def add(self, adapter: Adapter) -> int:
        """Stream `adapter`'s matrices into a free slot; returns the slot. Call with no step running."""
        if adapter.max_rank > self.requested_rank:
            raise LoraError(
                f"adapter {adapter.name!r} has rank {adapter.max_rank}, more than this model's max_lora_rank "
                f"{self.requested_rank}: load the model with max_lora_rank={adapter.max_rank} or more"
            )
        if not self.free:
            raise LoraError(
                f"all {self.max_loras} adapter slots are in use: unload an adapter first, or load the model with "
                "a larger max_loras"
            )
        slot = self.free[0]
        dev, staged = self.dev, []
        table = [0] * (2 * self.n_targets)
        try:
            for target, (a, b) in adapter.pairs.items():
                a_pool, b_pool = self._pool(target)
                K4, N, r = _ceil4(a.shape[0]), b.shape[1], a.shape[1]
                ds: list[Dispatch] = []
                cap = self.rank_cap
                for info, out, n_rows, stride, size in ((a, a_pool, r, K4, cap * K4), (b, b_pool, N, cap, N * cap)):
                    offset = slot * size
                    dev.write(out, bytes(4 * size), 4 * offset)  # zero past the rank (a previous tenant's values)
                    raw = self._stage(adapter.gguf, info)
                    ids = dev.create_buffer(4 * n_rows, f"lora.iota.{info.name}")
                    dev.write(ids, struct.pack(f"<{n_rows}I", *range(n_rows)))
                    staged += [*(p.buffer for p in raw.parts), ids]
                    ds += get_rows(dev, raw, ids, out, n_rows, out_stride=stride, out_offset=offset)
                dev.submit(ds)
                i = self.index[target]
                table[2 * i : 2 * i + 2] = [r, _f32_bits(adapter.factor(target))]
            dev.write(self.ranks, struct.pack(f"<{len(table)}I", *table), 8 * slot * self.n_targets)
            dev.read(self.ranks, 0, 8)  # waits for the conversions before their staging buffers go
        finally:
            for buf in staged:
                dev.destroy(buf)
        self.free.remove(slot)
        return slot

    def _stage(self, gf: GGUFFile, info: TensorInfo) -> Weight:
        return upload(self.dev, info.name, info.type, info.shape, lambda o, n: gf.tensor_bytes(info, o, n),
                      chunk_bytes=self.chunk_bytes, max_binding=self.max_binding)  # fmt: skip

    def release(self, slot: int) -> None:
        """Free `slot` (no request may still select it)."""
        self.dev.write(self.ranks, bytes(8 * self.n_targets), 8 * slot * self.n_targets)
        self.free.append(slot)
        self.free.sort()

    def write_sel(self, rows: list[tuple[tuple[int, float], ...]], out_rows: list[int], nb: int, ob: int) -> None:
        """Each token row's adapters (slot, scale) for `nb` rows (padding selects none), then for `ob` output
        rows the selection of the row each gathers."""
        outs = [rows[r] for r in out_rows] + [rows[out_rows[-1]]] * (ob - len(out_rows)) if ob else []
        for base, sels in ((0, list(rows) + [()] * (nb - len(rows))), (self.max_rows, outs)):
            words: list[int] = []
            for sel in sels:
                for slot, scale in sel:
                    words += [slot, _f32_bits(scale)]
                words += [NONE_SLOT, 0] * (self.n_sel - len(sel))
            if words:
                self.dev.write(self.sel, struct.pack(f"<{len(words)}I", *words), 8 * base * self.n_sel)

    def apply(self, target: str, x: Buffer, y: Buffer, n_tok: int, *, out_rows: bool = False) -> list[Dispatch]:
        """The dispatches adding the selected adapters' product for `target` (none if no adapter has it);
        `out_rows`: the tokens are the gathered output rows (the head), whose selections follow the rows'."""
        pool = self.pools.get(target)
        if pool is None:
            return []
        w = self.weights[target]
        return lora_apply(self.dev, pool[0], pool[1], self.ranks, self.sel, x, self.t, y, K=w.row_elems,
                          N=w.n_rows, rank_cap=self.rank_cap, n_tok=n_tok, n_sel=self.n_sel,
                          target=self.index[target], n_targets=self.n_targets,
                          sel_offset=self.max_rows if out_rows else 0)  # fmt: skip


_uids = itertools.count(1)


@dataclass
class Loaded:
    """An adapter in a slot: its name, file facts, and the requests using it."""

    name: str
    slot: int
    alpha: float
    ranks: dict[str, int]
    source: str
    uid: int = field(default_factory=lambda: next(_uids))  # never reused: keys the prefix cache
    refs: int = 0
    unloaded: bool = False

    def info(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "rank": max(self.ranks.values()),
                "targets": sorted(self.ranks), "source": self.source, "in_use": self.refs}  # fmt: skip


class Adapters:
    """The adapters a model has loaded, by name, and the requests using each."""

    def __init__(self, pool: LoraPool):
        self.pool = pool
        self.by_name: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def add(self, adapter: Adapter, source: str, name: str | None = None) -> str:
        """Put a checked adapter in a slot under `name` (default: its file's general.name, made unique)."""
        if name is not None and (not isinstance(name, str) or not name):
            raise LoraError(f"an adapter name must be a non-empty string, got {name!r}")
        with self._lock:
            if name is not None and name in self.by_name:
                raise LoraError(f"an adapter named {name!r} is already loaded: unload it first or pick another name")
            if name is None:
                name = adapter.name
                for i in itertools.count(2):
                    if name not in self.by_name:
                        break
                    name = f"{adapter.name}-{i}"
        slot = self.pool.add(adapter)
        ranks = {t: adapter.rank(t) for t in adapter.pairs}
        with self._lock:
            self.by_name[name] = Loaded(name, slot, adapter.alpha, ranks, source)
        return name

    def remove(self, name: str) -> None:
        """Unload `name`: no new request may use it; its slot is freed once the requests using it end."""
        with self._lock:
            lo = self._get(name)
            del self.by_name[name]
            lo.unloaded = True
            free = lo.refs == 0
        if free:
            self.pool.release(lo.slot)

    def _get(self, name: str) -> Loaded:
        lo = self.by_name.get(name)
        if lo is None:
            have = ", ".join(sorted(self.by_name)) or "none"
            raise LoraError(f"no adapter named {name!r} is loaded (loaded: {have})")
        return lo

    def acquire(self, choice: Mapping[str, float]) -> tuple[tuple[tuple[int, float], ...], str, list[Loaded]]:
        """For a request using `choice` {name: scale}: its selection (slot, scale), a key naming exactly these
        adapters at these scales (for the prefix cache), and the entries to `release` when it ends."""
        if not isinstance(choice, Mapping):
            raise LoraError(f"lora must be a mapping of adapter names to scales, got {type(choice).__name__}")
        with self._lock:
            items = []
            for name, scale in choice.items():
                lo = self._get(name)
                if not isinstance(scale, int | float) or isinstance(scale, bool) or not abs(scale) < float("inf"):
                    raise LoraError(f"the scale of adapter {name!r} must be a finite number, got {scale!r}")
                if scale:
                    items.append((lo, float(scale)))
            for lo, _ in items:
                lo.refs += 1
        sel = tuple((lo.slot, scale) for lo, scale in items)
        key = ",".join(f"{lo.uid}*{scale!r}" for lo, scale in items)
        return sel, key, [lo for lo, _ in items]

    def release(self, used: list[Loaded]) -> None:
        freed = []
        with self._lock:
            for lo in used:
                lo.refs -= 1
                if lo.unloaded and lo.refs == 0:
                    freed.append(lo.slot)
        for slot in freed:
            self.pool.release(slot)
