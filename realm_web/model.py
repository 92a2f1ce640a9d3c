"""The model a user holds: `load()` a GGUF file or URL, then tokenize, score, generate and chat.

Generation follows gpt-fast's shape: `_prefill` runs the prompt in chunks and samples the first token,
`_decode_one` replays the recorded one-token step, `generate` streams text as each token arrives.
"""

from __future__ import annotations

import asyncio
import queue
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from realm_web.chat import BUILTIN_TEMPLATES, ChatTemplate
from realm_web.config import Config
from realm_web.device import Buffer, Device, get_device
from realm_web.engine import Engine
from realm_web.errors import DeviceError, OutOfMemoryError, RealmError
from realm_web.gguf import GGUFFile, open_gguf
from realm_web.kernels.attention import KV_TYPES
from realm_web.kv_cache import PagedKVCache
from realm_web.lora import Adapter, Adapters, LoraError, LoraPool, read_adapter
from realm_web.sampling import SamplingParams
from realm_web.sequence import Event
from realm_web.sequence import Sequence as _Seq
from realm_web.speculative import DraftError, DraftModel, SpecConfig, check_compatible
from realm_web.tokenizer import Tokenizer
from realm_web.transformer import Transformer, bucket
from realm_web.weights import DEFAULT_CHUNK, Progress, upload_gguf


class ContextError(RealmError):
    """A prompt (plus what is asked of it) does not fit in the context."""


def _f32_vector(gf: GGUFFile, name: str) -> bytes:
    """A 1-D tensor (norm weight, bias) as f32 bytes; these are small, so they are converted on the host."""
    info = gf.tensor(name)
    raw = gf.tensor_bytes(info)
    n = info.n_elements
    if info.type.name == "F32":
        return raw
    if info.type.name == "F16":
        return struct.pack(f"<{n}f", *struct.unpack(f"<{n}e", raw))
    if info.type.name == "BF16":
        return struct.pack(f"<{n}I", *(h << 16 for h in struct.unpack(f"<{n}H", raw)))
    raise RealmError(f"tensor {name!r}: 1-D tensors of type {info.type.name} are not supported")


def _source_name(src: Any) -> str:
    """A path or URL as given, or an opened file's source name (a stream in the browser: "<adapter>")."""
    if isinstance(src, GGUFFile):
        return str(getattr(src.source, "name", None) or getattr(src.source, "path", None) or "<stream>")
    return str(src)


def _close_opened(adapters: list[tuple[Adapter, float, str]], given: Any) -> None:
    """Close the adapter files load() opened itself (not those the caller passed in opened)."""
    given = [given] if isinstance(given, str | GGUFFile) else given
    for adapter, _, _ in adapters:
        if not any(adapter.gguf is (x[0] if isinstance(x, tuple) else x) for x in given):
            adapter.gguf.close()


def _upload(dev: Device, gf: GGUFFile, **options: Any) -> tuple[dict, dict[str, Buffer]]:
    """A model's tensors on the GPU: matrices streamed in chunks (split to fit bindings), 1-D tensors as f32."""
    mats = [t.name for t in gf.tensors if len(t.shape) >= 2]
    weights = upload_gguf(dev, gf, mats, **options)
    vectors: dict[str, Buffer] = {}
    for t in gf.tensors:
        if len(t.shape) == 1:
            data = _f32_vector(gf, t.name)
            vectors[t.name] = buf = dev.create_buffer(len(data), t.name)
            dev.write(buf, data)
    return weights, vectors


class Model:
    def __init__(
        self,
        gf: GGUFFile,
        *,
        device: Device | None = None,
        n_ctx: int | None = None,
        n_parallel: int = 4,
        kv_cache_tokens: int | None = None,
        block_size: int = 16,
        kv_type: str = "f16",
        max_batch: int = 64,
        prefix_caching: bool = True,
        chat_template: str | None = None,
        max_binding: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK,
        progress: Progress | None = None,
        owns_device: bool = False,
        draft_model: str | GGUFFile | None = None,
        speculative: str | None = None,
        draft_max: int = 16,
        draft_min: int = 0,
        draft_p_min: float = 0.8,
        ngram_n: int = 3,
        draft_greedy: bool = False,
        lora: Sequence[str | GGUFFile | tuple[str | GGUFFile, float]] = (),
        max_loras: int = 4,
        max_lora_rank: int | None = None,
    ):
        """`owns_device`: close() also closes a `device` passed in (one opened for this model alone).
        Speculative decoding: `draft_model` (a path, URL or opened GGUF with this model's vocabulary) or
        `speculative="ngram"` (prompt lookup), with llama.cpp's `draft_max`, `draft_min`, `draft_p_min`; `ngram_n`
        (the lookup's n-gram); `draft_greedy` drafts greedily even for sampling requests (llama.cpp's way).
        LoRA: `lora` adapters (paths, URLs or opened GGUFs, each maybe as (adapter, scale)) are loaded and used by
        every request that names none; `max_loras` adapters may be loaded at once (0: no LoRA support), of rank up
        to `max_lora_rank` (default: the largest of `lora`'s, at least 16). `kv_type`: the KV cache's element type,
        "f16" (half the memory; logits within ~1e-4 relative RMS of f32's) or "f32"."""
        if n_parallel < 1 or block_size < 1 or max_batch < 1:
            raise RealmError(
                f"n_parallel, block_size and max_batch must be >= 1: {n_parallel}, {block_size}, {max_batch}"
            )
        self.gguf = gf
        self.config = cfg = Config.from_gguf(gf)
        self.tokenizer = Tokenizer.from_gguf(gf)
        self._owns_device = device is None or owns_device
        self.device = dev = device or get_device()
        self.n_ctx = min(n_ctx or min(cfg.n_ctx_train, 4096), cfg.n_ctx_train)
        self.n_parallel = n_parallel
        self.kv_type = kv_type
        if kv_type not in KV_TYPES:
            raise RealmError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        spec = None
        if draft_model is not None or speculative is not None:
            mode = speculative or "draft"
            if (mode == "draft") != (draft_model is not None):
                raise DraftError("speculative='draft' needs draft_model=, and a draft_model means speculative='draft'")
            spec = SpecConfig(mode, draft_max, draft_min, draft_p_min, ngram_n, draft_greedy)
        draft_gf = None
        if draft_model is not None:  # checked before anything is uploaded
            draft_gf = draft_model if isinstance(draft_model, GGUFFile) else open_gguf(draft_model)
            self.draft_config = Config.from_gguf(draft_gf)
            check_compatible(self.tokenizer, Tokenizer.from_gguf(draft_gf), cfg.n_vocab, self.draft_config.n_vocab)
        adapters = self._read_adapters(lora, max_loras)  # checked before anything is uploaded
        batch = max(max_batch, n_parallel)
        n_blocks = self._kv_blocks(kv_cache_tokens, block_size)
        self._check_fits([gf] + ([draft_gf] if draft_gf is not None else []), n_blocks * block_size, bucket(batch))
        upload = {"chunk_bytes": chunk_bytes, "max_binding": max_binding, "progress": progress}
        weights, vectors = _upload(dev, gf, **upload)
        self.kv = self._kv_cache(n_blocks, block_size)
        self.transformer = Transformer(dev, cfg, weights, vectors, self.kv, max_batch=batch)
        self.draft = None
        if draft_gf is not None:
            d_weights, d_vectors = _upload(dev, draft_gf, **upload)
            self.draft = DraftModel(dev, self.draft_config, d_weights, d_vectors, self.kv, n_parallel, batch, spec,
                                    cfg.n_vocab, self.tokenizer.is_eog)  # fmt: skip
        self.speculative = spec
        self.adapters: Adapters | None = None
        self.default_lora: dict[str, float] = {}  # what requests that name no adapters use
        if max_loras:
            rank_cap = max_lora_rank or max([16] + [a.max_rank for a, _, _ in adapters])
            pool = LoraPool(dev, weights, max_loras=max_loras, rank_cap=rank_cap, max_rows=bucket(batch),
                            chunk_bytes=chunk_bytes, max_binding=max_binding)  # fmt: skip
            self.transformer.lora, self.adapters = pool, Adapters(pool)
            for adapter, scale, source in adapters:
                self.default_lora[self.adapters.add(adapter, source)] = scale
        _close_opened(adapters, lora)  # their tensors are on the GPU now
        self.engine = Engine(dev, self.transformer, self.kv, self.tokenizer, n_ctx=self.n_ctx, n_parallel=n_parallel,
                             prefix_caching=prefix_caching, threaded=sys.platform != "emscripten", speculative=spec,
                             draft=self.draft)  # fmt: skip
        self.chat_template = self._chat_template(chat_template)
        self.last_usage: dict[str, Any] = {}

    def _kv_blocks(self, tokens: int | None, block_size: int) -> int:
        """Blocks of the pool: `tokens` positions (default: n_parallel contexts of up to 1024 tokens, at least one
        whole context), as many as one binding of the device holds when no number is given."""
        c, info = self.config, self.device.info
        per_token = KV_TYPES[self.kv_type] * c.kv_dim  # bytes per position per layer in K (and in V)
        fit = min(info.max_storage_binding, info.max_buffer) // per_token // block_size * block_size
        if tokens is None:
            tokens = min(max(self.n_ctx, self.n_parallel * min(self.n_ctx, 1024)), fit)
        return max(1, -(-int(tokens) // block_size))

    def _kv_cache(self, n_blocks: int, block_size: int) -> PagedKVCache:
        c = self.config
        max_blocks = -(-self.n_ctx // block_size)
        return PagedKVCache(self.device, c.n_layer, c.kv_dim, n_blocks, block_size, self.n_parallel, max_blocks,
                            kv_type=self.kv_type)  # fmt: skip

    def _check_fits(self, gfs: list[GGUFFile], kv_tokens: int, batch: int) -> None:
        """Before anything is uploaded: every matrix row fits one storage binding, and the estimated total fits
        what the device can still allocate where it says (a CPU adapter: the host's available memory)."""
        info = self.device.info
        for gf in gfs:
            for t in gf.tensors:
                if len(t.shape) >= 2 and t.row_bytes > min(info.max_storage_binding, info.max_buffer):
                    raise DeviceError(
                        f"tensor {t.name!r}: one row is {t.row_bytes} bytes, more than the device's storage binding "
                        f"limit of {info.max_storage_binding} bytes ({info.name})"
                    )
        if info.memory is None:
            return
        from realm_web.registry import gpu_memory_parts  # (lazily: `python -m realm_web.registry` runs that module)

        # a draft model's KV pools hold as many positions as the target's (the same blocks: DraftModel)
        parts = [gpu_memory_parts(gf, Config.from_gguf(gf), kv_tokens, batch, self.kv_type) for gf in gfs]
        need = sum(sum(p.values()) for p in parts)
        if need > info.memory:
            p = parts[0]
            gib = 2**30
            raise OutOfMemoryError(
                f"the model needs about {need / gib:.2f} GiB of GPU memory (weights {p['weights'] / gib:.2f} GiB, KV "
                f"cache {p['kv_cache'] / gib:.2f} GiB for {kv_tokens} positions, activations "
                f"{p['activations'] / gib:.2f} GiB{', and the draft model' if len(parts) > 1 else ''}); the device "
                f"({info.name}) can allocate {info.memory / gib:.2f} GiB: load with a smaller kv_cache_tokens or "
                "n_ctx, or a smaller quantization"
            )

    # -- LoRA adapters ----------------------------------------------------------------------------------------
    def _read_adapters(self, lora, max_loras: int) -> list[tuple[Adapter, float, str]]:
        if isinstance(lora, str | GGUFFile):
            lora = [lora]
        if len(lora) > max_loras:
            raise LoraError(f"{len(lora)} adapters given, but max_loras is {max_loras}")
        out: list[tuple[Adapter, float, str]] = []
        try:
            for item in lora:
                src, scale = item if isinstance(item, tuple) else (item, 1.0)
                out.append((self._read_adapter(src), float(scale), _source_name(src)))
        except BaseException:
            _close_opened(out, lora)
            raise
        return out

    def _read_adapter(self, src: str | GGUFFile, name: str | None = None) -> Adapter:
        gf = src if isinstance(src, GGUFFile) else open_gguf(src)
        shapes = {t.name: t.shape for t in self.gguf.tensors if len(t.shape) >= 2}
        try:
            return read_adapter(gf, self.config.arch, shapes, name)
        except BaseException:
            if gf is not src:  # a file this call opened
                gf.close()
            raise

    def load_lora(self, path_or_url: str | GGUFFile, name: str | None = None) -> str:
        """Load a LoRA adapter (llama.cpp's GGUF adapter format) without applying it; requests use it by name
        (`lora={name: scale}`). Works while the model serves; returns the name (default: the file's
        general.name, made unique)."""
        if self.adapters is None:
            raise LoraError("this model was loaded with max_loras=0: it takes no adapters")
        adapter = self._read_adapter(path_or_url, name)
        try:
            with self.engine._step_lock:  # the pools change between steps, never under one
                return self.adapters.add(adapter, _source_name(path_or_url), name)
        finally:
            if not isinstance(path_or_url, GGUFFile):
                adapter.gguf.close()

    def unload_lora(self, name: str) -> None:
        """Unload adapter `name`: new requests cannot use it; those using it finish with it, then its slot is
        free for another adapter."""
        if self.adapters is None:
            raise LoraError("this model was loaded with max_loras=0: it takes no adapters")
        with self.engine._step_lock:
            self.adapters.remove(name)
        self.default_lora.pop(name, None)

    @property
    def loras(self) -> dict[str, dict[str, Any]]:
        """The loaded adapters by name: alpha, rank, targets, source, requests using it, default scale."""
        if self.adapters is None:
            return {}
        return {n: {**lo.info(), "default_scale": self.default_lora.get(n)} for n, lo in self.adapters.by_name.items()}

    # -- text <-> ids -----------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    # -- scoring ----------------------------------------------------------------------------------------------
    def logits_bytes(self, ids: Sequence[int], lora: Mapping[str, float] | None = None) -> bytes:
        """Teacher-forced logits at every position as raw little-endian f32 [len(ids), n_vocab] (no numpy:
        this is what the browser returns). Runs through the engine beside any other request; `lora` as for
        generate()."""
        ids = self._check_prompt(ids, 0)
        stream = Generation(self, Request(ids, None, 0, lora=lora))
        for _ in stream:
            pass
        return b"".join(stream.seq.logits)

    def logits(self, ids: Sequence[int], lora: Mapping[str, float] | None = None):
        """Teacher-forced logits at every position: numpy float32 [len(ids), n_vocab] (needs numpy)."""
        import numpy as np

        return np.frombuffer(self.logits_bytes(ids, lora), np.float32).reshape(len(ids), self.config.n_vocab)

    # -- generation -------------------------------------------------------------------------------------------
    def _check_prompt(self, ids: Sequence[int], max_tokens: int) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise ContextError("the prompt is empty (no tokens)")
        bad = [i for i in ids if not 0 <= i < self.config.n_vocab]
        if bad:
            raise RealmError(f"token ids outside the vocabulary (0..{self.config.n_vocab - 1}): {bad[:5]}")
        if len(ids) + min(max_tokens, 1) > self.n_ctx:
            raise ContextError(
                f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx} "
                f"(load with a larger n_ctx, up to {self.config.n_ctx_train}, or shorten the prompt)"
            )
        return ids

    def request(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int = 0,
        stop: Sequence[str] = (),
        *,
        cache_salt: str | None = None,
        ignore_eos: bool = False,
        add_special: bool = True,
        parse_special: bool = False,
        logprobs: bool = False,
        speculative: bool = True,
        lora: Mapping[str, float] | None = None,
    ) -> Request:
        """A checked request (what generate, agenerate and generate_batch submit): bad input fails here."""
        sp = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        ids = prompt if not isinstance(prompt, str) else self.tokenize(prompt, add_special, parse_special)
        ids = self._check_prompt(ids, max_tokens)
        if isinstance(stop, str):
            stop = [stop]
        if lora is not None and not isinstance(lora, Mapping):
            raise LoraError(f"lora must map adapter names to scales, got {type(lora).__name__}")
        return Request(ids, sp, int(max_tokens), [str(s) for s in stop], cache_salt, ignore_eos, logprobs, speculative,
                       None if lora is None else dict(lora))  # fmt: skip

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any) -> Generation:
        """Stream the continuation of `prompt` (text, or token ids) piece by piece as tokens are produced.
        Calls from several threads at once are decoded together. Options: temperature, top_k, top_p, min_p,
        repeat_penalty, repeat_last_n, seed, stop, cache_salt, ignore_eos, add_special, parse_special, logprobs,
        speculative (False: no draft tokens for this request on a speculative model), lora ({name: scale} of
        loaded adapters; default: those given to load(), {} for none). The
        returned stream's `usage` (also `model.last_usage`) fills in as it runs."""
        g = Generation(self, self.request(prompt, max_tokens, **options))
        self.last_usage = g.usage
        return g

    def generate_ids(self, ids: Sequence[int], max_tokens: int, sp: SamplingParams) -> Iterator[int]:
        """The new token ids one by one (what generate streams as text)."""
        g = Generation(self, Request(self._check_prompt(ids, max_tokens), sp, max_tokens), text=False)
        self.last_usage = g.usage
        return g.ids()

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], **options: Any) -> list[str]:
        """Complete every prompt, decoded together (offline work); the replies in order."""
        streams = [self.generate(p, **options) for p in prompts]
        return ["".join(s) for s in streams]

    async def agenerate(self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any):
        """generate() for asyncio: an async iterator of text pieces. Concurrent calls are decoded together;
        cancelling the task (or leaving the loop) cancels the request and frees its blocks."""
        stream = AsyncGeneration(self, self.request(prompt, max_tokens, **options))
        self.last_usage = stream.usage
        async for piece in stream:
            yield piece

    def chat(self, messages: Sequence[Mapping[str, Any]], stream: bool = True, **options: Any) -> Iterator[str] | str:
        """Reply to a conversation rendered with the model's chat template. Options are generate()'s."""
        pieces = self.generate(self.chat_ids(messages), **options)
        return pieces if stream else "".join(pieces)

    async def achat(self, messages: Sequence[Mapping[str, Any]], **options: Any):
        """chat() for asyncio: an async iterator of the reply's text pieces."""
        async for piece in self.agenerate(self.chat_ids(messages), **options):
            yield piece

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template, ready for a reply."""
        prompt = self.chat_template.render(messages, add_generation_prompt=True)
        bos = self._token_text(self.tokenizer.bos_id)
        return self.tokenize(prompt, add_special=not (bos and prompt.startswith(bos)), parse_special=True)

    def session(self, system: str | None = None, *, cache_salt: str | None = None, **options: Any) -> Session:
        """A conversation whose history stays cached between turns (prefix caching); cheap to create, and
        isolated from every other session. `options` are the defaults of its turns (generate()'s)."""
        return Session(self, system, cache_salt, options)

    def submit(self, seq: _Seq, lora: Mapping[str, float] | None = None) -> None:
        """Hand a built sequence to the engine with its adapters ({name: scale}; None: the defaults), which stay
        loaded until it ends."""
        choice = lora if lora is not None else self.default_lora
        if choice:
            adapters = self.adapters
            if adapters is None:
                raise LoraError("this model was loaded with max_loras=0: it takes no adapters")
            seq.lora, seq.lora_key, used = adapters.acquire(choice)
            seq.release = lambda: adapters.release(used)
        try:
            self.engine.submit(seq)
        except BaseException:
            release, seq.release = seq.release, None
            if release is not None:
                release()
            raise

    def stats(self) -> dict[str, Any]:
        """The engine's counters: waiting and running sequences, KV blocks used/free/cached, prefix-cache hits."""
        return self.engine.stats()

    def close(self) -> None:
        """Stop the engine and free the model's GPU memory when it opened its own device (a device passed in
        belongs to the caller, who closes it). The model cannot be used afterwards."""
        self.engine.close()
        if self._owns_device:
            self.device.close()

    # -- helpers ----------------------------------------------------------------------------------------------
    def _token_text(self, i: int | None) -> str:
        return "" if i is None else self.tokenizer.token_to_piece(i, special=True).decode("utf-8", "replace")

    def _chat_template(self, choice: str | None) -> ChatTemplate:
        tk = self.tokenizer
        tokens = {"bos_token": self._token_text(tk.bos_id), "eos_token": self._token_text(tk.eos_id)}
        if choice in BUILTIN_TEMPLATES:
            return ChatTemplate.builtin(choice, **tokens)
        if choice:
            return ChatTemplate(choice, name="user", **tokens)
        src = self.gguf.metadata.get("tokenizer.chat_template")
        if isinstance(src, str) and src:
            return ChatTemplate(src, name="gguf", **tokens)
        return ChatTemplate.builtin("chatml", **tokens)


@dataclass
class Request:
    """What a caller asks of the engine: prompt ids and settings (`sampling=None`: teacher-forced logits)."""

    ids: list[int]
    sampling: SamplingParams | None
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    cache_salt: str | None = None
    ignore_eos: bool = False
    logprobs: bool = False  # each event carries the logits row its token was sampled from
    speculative: bool = True  # draft tokens for it when the model decodes speculatively
    lora: dict[str, float] | None = None  # adapters by name and scale (None: the model's default ones)


class _Stream:
    """A request submitted to the engine, and its usage as of the events its caller has consumed."""

    def __init__(self, model: Model, req: Request, emit: Callable[[Event], None], text: bool = True):
        self.model, self.usage, self._n, self.req_lora = model, {}, 0, req.lora
        self.seq = _Seq(req.ids, req.sampling, req.max_tokens, emit, req.stop, req.cache_salt, req.ignore_eos,
                        req.logprobs, req.speculative)  # fmt: skip
        if text and req.sampling is not None:
            self.seq.text = TextStream(model.tokenizer, req.stop)
        self._update(None)

    def _submit(self) -> None:
        self.model.submit(self.seq, self.req_lora)

    def _update(self, ev: Event | None) -> None:
        """Usage as of `ev` (the engine thread may already be further on)."""
        if ev is not None and ev.token is not None:
            self._n += 1
        u = self.seq.usage()
        u.update(completion_tokens=self._n, total_tokens=self.seq.n_prompt + self._n)
        if not (ev is not None and ev.finished):
            u["finish_reason"] = "length"  # until told otherwise (as a stream cut short by its caller)
        self.usage.update(u)


class Generation(_Stream):
    """A request in flight, as a blocking iterator of text pieces (or ids, `ids()`); `usage` fills in as it
    runs. Leaving the loop early (or `close()`) cancels the request."""

    def __init__(self, model: Model, req: Request, text: bool = True):
        self._done = True
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        super().__init__(model, req, self._events.put, text)
        self._it: Iterator[str] | None = None
        self._submit()
        self._done = False

    def _next_event(self) -> Event:
        eng = self.model.engine
        if eng._thread is None:  # no engine thread (Pyodide): this caller drives the steps
            eng.run_until(lambda: not self._events.empty())
        return self._events.get()

    def _events_iter(self) -> Iterator[Event]:
        while not self._done:
            ev = self._next_event()
            self._update(ev)
            if ev.finished:
                self._done = True
                if ev.error is not None:
                    raise ev.error
            yield ev

    def ids(self) -> Iterator[int]:
        """The new token ids instead of text."""
        try:
            for ev in self._events_iter():
                if ev.token is not None:
                    yield ev.token
        finally:
            self.close()

    def _pieces(self) -> Iterator[str]:
        try:
            for ev in self._events_iter():
                if ev.piece:
                    yield ev.piece
        finally:
            self.close()

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        if self._it is None:
            self._it = self._pieces()
        return next(self._it)

    def text(self) -> str:
        return "".join(self)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the request if it is still running (its blocks are freed at the next step boundary)."""
        if not self._done:
            self._done = True
            self.model.engine.cancel(self.seq)


class AsyncGeneration(_Stream):
    """A request in flight for asyncio: an async iterator of text pieces. The engine thread hands events to
    the event loop; cancelling the consuming task cancels the request."""

    def __init__(self, model: Model, req: Request):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        super().__init__(model, req, self._emit)
        self._submit()

    def _emit(self, ev: Event) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, ev)

    async def events(self):
        """Every event of the request (token, piece, logits row, the end), usage updated before each."""
        eng, done = self.model.engine, False
        try:
            while not done:
                if eng._thread is None:
                    eng.run_until(lambda: not self._events.empty())
                ev = await self._events.get()
                self._update(ev)
                done = ev.finished
                if ev.error is not None:
                    raise ev.error
                yield ev
        finally:
            if not done:
                self.cancel()

    def cancel(self) -> None:
        """Stop the request (its blocks are freed at the next step boundary, at once when the engine is idle)."""
        self.model.engine.cancel(self.seq)

    async def __aiter__(self):
        events = self.events()
        try:
            async for ev in events:
                if ev.piece:
                    yield ev.piece
        finally:
            await events.aclose()  # cancels the request when the caller left early


class Session:
    """One conversation over a shared model: its messages, kept between turns. Each turn renders the whole
    conversation; the prefix cache finds the blocks of every earlier turn, so only the new text is computed.
    Nothing is shared with other sessions but the weights (and, without a `cache_salt`, identical prefixes)."""

    def __init__(self, model: Model, system: str | None, cache_salt: str | None, options: dict[str, Any]):
        self.model, self.cache_salt, self.options = model, cache_salt, options
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.last_usage: dict[str, Any] = {}

    def chat(self, text: str, stream: bool = False, **options: Any) -> Iterator[str] | str:
        """Add the user's `text`, reply (streamed, or whole), and keep the reply in the history."""
        self.messages.append({"role": "user", "content": text})
        opts = {**self.options, **options, "cache_salt": self.cache_salt}
        try:
            g = self.model.generate(self.model.chat_ids(self.messages), **opts)
        except BaseException:
            self.messages.pop()
            raise
        self.last_usage = g.usage
        if not stream:
            reply = "".join(g)
            self.messages.append({"role": "assistant", "content": reply})
            return reply
        return self._stream(g)

    def _stream(self, g: Generation) -> Iterator[str]:
        parts = []
        for piece in g:
            parts.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(parts)})


class TextStream:
    """Text of a stream of token ids, piece by piece: never a broken UTF-8 sequence, and cut before the first
    stop string. Text that could still become a stop string is held back until it cannot."""

    def __init__(self, tk: Tokenizer, stop: Sequence[str] = ()):
        self._dec = tk.stream_decoder(continuation=True)
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=0) - 1
        self._held = ""
        self.stopped = False  # a stop string was seen: feed nothing more

    def feed(self, token: int) -> str:
        """The text that became final with `token` (often "", e.g. inside a multi-byte character)."""
        self._held += self._dec.feed(token)
        if not self._stop:
            out, self._held = self._held, ""
            return out
        cut = min((j for j in (self._held.find(s) for s in self._stop) if j >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        safe = len(self._held) - self._hold if self._hold > 0 else len(self._held)
        if safe <= 0:
            return ""
        out, self._held = self._held[:safe], self._held[safe:]
        return out

    def flush(self) -> str:
        """What is left once the ids end (held-back text and an incomplete character's replacement)."""
        if self.stopped:
            return ""
        out, self._held = self._held + self._dec.flush(), ""
        return out


def load(path_or_url: str, *, progress: Callable[[int, int], None] | None = None, **options: Any) -> Model:
    """Load a GGUF model from a path or http(s) URL onto the GPU. Options: device, n_ctx, n_parallel (the most
    sequences decoded together, default 4), kv_cache_tokens (the paged KV pool's size in tokens), block_size
    (tokens per KV block, 16), kv_type (the KV cache's element type: "f16", the default, or "f32"), max_batch
    (tokens per step: the chunk a prompt is prefilled in), prefix_caching (True), chat_template (a built-in name or
    Jinja source), max_binding (force weight splitting), chunk_bytes; speculative decoding: draft_model (path or
    URL), or speculative="ngram", with draft_max (16), draft_min (0), draft_p_min (0.8), ngram_n (3), draft_greedy
    (False); LoRA: lora (adapters used by default: paths or URLs, each maybe as (path, scale)), max_loras (4),
    max_lora_rank."""
    return Model(open_gguf(path_or_url), progress=progress, **options)


def load_tokenizer(path_or_url: str) -> Tokenizer:
    """The tokenizer of a GGUF file (vocab-only files work: no tensors are read)."""
    return Tokenizer.from_gguf(open_gguf(path_or_url))
