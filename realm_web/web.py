"""The engine's entry for the browser: what the JS SDK (js/src/runtime.js) calls under Pyodide.

The browser twin of `cli.py`: it turns JS arguments into `Model` calls and results back into JS values.
Model bytes come from a JS `read(offset, length) => Promise<Uint8Array>` (the SDK reads its OPFS cache or
the network with HTTP Range), so the file is never whole in wasm memory; weights go to the GPU in bounded
chunks. Everything that touches the GPU awaits through `run_sync`: JS must call these functions with
`callPromising`, one at a time (js/src/runtime.js serializes them). Requests are submitted to the batched
engine and the SDK drives its steps; per step, Python and JS cross a constant few times plus one `on_event`
call per request in the step.
"""

from __future__ import annotations

import random
import time
from typing import Any

import js
from pyodide.ffi import run_sync, to_js

from realm_web.bench import bench_batched, bench_model, bench_speculative
from realm_web.device import get_device
from realm_web.errors import DeviceLostError, SourceError
from realm_web.gguf import read_gguf
from realm_web.model import Model, TextStream
from realm_web.profile import profile_decode
from realm_web.sequence import Event, Sequence
from realm_web.source import check_length, check_range

_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed")


def _py(value: Any) -> Any:
    """A JS argument as Python data (undefined/null -> None)."""
    if value is None or type(value).__name__ == "JsNull":
        return None
    return value.to_py() if hasattr(value, "to_py") else value


def _js(value: Any) -> Any:
    return to_js(value, dict_converter=js.Object.fromEntries)


class JSSource:
    """A `Source` over a JS `read(offset, length) => Promise<Uint8Array>`; each read awaits with run_sync."""

    def __init__(self, read: Any, size: int, name: str = "<browser>"):
        self._read, self.size, self.name = read, int(size), name

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length, self.name)
        try:
            data = run_sync(self._read(offset, length)).to_bytes()
        except Exception as e:  # a JS rejection (network, storage) arrives as JsException
            raise SourceError(f"{self.name}: reading {length} bytes at offset {offset} failed: {e}") from e
        return check_length(data, offset, length, self.name)


def _lora(value: Any) -> dict[str, float] | None:
    """A request's `lora`: [{id, scale}] (the SDK's form) or {name: scale}; None: the model's defaults."""
    if value is None:
        return None
    if isinstance(value, list):
        return {str(x["id"]): float(x.get("scale", 1.0)) for x in value}
    return dict(value)


def _usage(seq: Sequence) -> dict[str, Any]:
    """A finished request's usage record, with its timings."""
    u = seq.usage()
    n_new, t_end = u["completion_tokens"], time.perf_counter()
    prefill_s = (seq.t_first or t_end) - seq.t_submit
    decode_s = t_end - seq.t_first if seq.t_first is not None else 0.0
    u.update(
        prefill_ms=prefill_s * 1e3,
        decode_ms=decode_s * 1e3,
        time_to_first_token_ms=prefill_s * 1e3,
        prefill_tokens_per_s=u["prompt_tokens"] / prefill_s if prefill_s > 0 else 0.0,
        # the first token comes out of prefill; decode produced the other n_new - 1
        decode_tokens_per_s=(n_new - 1) / decode_s if n_new > 1 and decode_s > 0 else 0.0,
    )
    return u


class WebModel:
    """A loaded model as the SDK sees it (one per engine). Requests are batched by the engine: the SDK submits
    them, then drives `step` while any is in flight (Pyodide has no threads: the engine runs when stepped)."""

    def __init__(self, model: Model):
        self.model = model
        self._requests: dict[int, Sequence] = {}

    def info(self) -> Any:
        m, c, d = self.model, self.model.config, self.model.device.info
        return _js({
            "architecture": c.arch, "n_ctx": m.n_ctx, "n_ctx_train": c.n_ctx_train, "n_vocab": c.n_vocab,
            "n_layer": c.n_layer, "n_embd": c.n_embd, "adapter": d.name, "adapter_type": d.adapter_type,
            "features": sorted(d.features), "subgroups": d.subgroups,
            "max_storage_binding": d.max_storage_binding, "max_buffer": d.max_buffer,
            "kv_type": m.kv_type,
        })  # fmt: skip

    def submit(self, request: Any, on_event: Any) -> int:
        """Queue one request ({prompt} or {messages} plus sampling settings) in the batched engine; returns its id.
        `on_event(piece, done, usage, error_type, error_message)` is called from `step` once per token (piece
        may be "") and a last time with done = true and the usage record. Bad input raises here."""
        req = _py(request) or {}
        m = self.model
        msgs = req.get("messages")
        prompt = m.chat_ids(msgs) if msgs is not None else m.tokenize(str(req.get("prompt", "")))
        given = {k: req[k] for k in _SAMPLING_KEYS if req.get(k) is not None}
        given.setdefault("seed", random.getrandbits(32))  # as OpenAI's API: no seed, a different draw each time
        stop = [str(s) for s in req.get("stop") or ()]
        r = m.request(prompt, int(req.get("max_tokens") or 256), stop=stop, cache_salt=req.get("cache_salt"),
                      lora=_lora(req.get("lora")), **given)  # fmt: skip
        seq = Sequence(r.ids, r.sampling, r.max_tokens, lambda ev: self._event(ev, on_event), r.stop, r.cache_salt)
        seq.text = TextStream(m.tokenizer, r.stop)
        m.submit(seq, r.lora)
        self._requests[seq.id] = seq
        return seq.id

    def _event(self, ev: Event, on_event: Any) -> None:
        if not ev.finished:
            on_event(ev.piece, False, None, None, None)
            return
        seq = self._requests.pop(ev.seq.id, None) or ev.seq
        err = ev.error
        on_event(ev.piece, True, _js(_usage(seq)), type(err).__name__ if err else None, str(err) if err else None)

    def cancel(self, request_id: int) -> None:
        """Stop request `request_id`: it ends (finish reason "abort") and frees its KV blocks at the next step."""
        seq = self._requests.get(int(request_id))
        if seq is not None:
            self.model.engine.cancel(seq)

    def step(self) -> bool:
        """Run one engine step for every request in flight (the SDK calls this in a loop while it returns true).
        Events go to the requests' `on_event`; a failure ends every request in flight and is raised."""
        e = self.model.engine
        try:
            e.step()
        except Exception as err:
            if isinstance(err, DeviceLostError):
                e.dead = err
            e.fail_all(err)
            raise
        return e.pending()

    def stats(self) -> Any:
        """The engine's counters (waiting, running, KV blocks, prefix-cache hits)."""
        return _js(self.model.stats())

    def logits(self, ids: Any, lora: Any = None) -> Any:
        """Teacher-forced logits: a Uint8Array of little-endian f32 [len(ids), n_vocab]; `lora` as in submit."""
        return to_js(self.model.logits_bytes([int(i) for i in _py(ids)], _lora(_py(lora))))

    def load_lora(self, read: Any, size: int, name: Any = None) -> str:
        """Stream a LoRA adapter's GGUF (read like a model) to the GPU beside the model; returns its name."""
        return self.model.load_lora(read_gguf(JSSource(read, size, "<adapter>")), _py(name))

    def unload_lora(self, name: str) -> None:
        self.model.unload_lora(str(name))

    def loras(self) -> Any:
        """The loaded adapters by name (alpha, rank, targets, requests using each)."""
        return _js(self.model.loras)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> Any:
        return _js(self.model.tokenize(str(text), bool(add_special), bool(parse_special)))

    def detokenize(self, ids: Any) -> str:
        return self.model.detokenize([int(i) for i in _py(ids)])

    def apply_chat_template(self, messages: Any) -> str:
        return self.model.chat_template.render(_py(messages), add_generation_prompt=True)

    def bench(self, n_prompt: int = 64, n_gen: int = 64, prompt: Any = None, n_streams: Any = None,
              speculative: Any = None, lora: Any = None, profile: Any = None) -> Any:  # fmt: skip
        """`realm-web bench`'s measurement, in the browser: prefill and decode tokens/s (greedy, EOS ignored).
        `prompt`: a JS array of token ids to prefill exactly (default: bench_model's fixed prompt of `n_prompt`).
        `n_streams`: instead, the aggregate decode tokens/s of that many concurrent streams (bench_batched).
        `speculative` ({temperature}): instead, decode with and without the engine's drafts (bench_speculative).
        `lora` (with `n_streams`): each stream's adapters, a list of [{id, scale}] cycled over the streams.
        `profile`: instead, `realm-web bench --profile`'s report of `n_gen` decode steps (GPU time per kernel from
        timestamp queries, host time per step)."""
        if _py(profile):
            return _js(profile_decode(self.model, n_steps=int(n_gen), n_prompt=int(n_prompt)))
        spec = _py(speculative)
        if spec is not None:
            return _js(bench_speculative(self.model, n_gen=int(n_gen), temperature=float(spec.get("temperature", 0))))
        if _py(n_streams) is not None:
            per_stream = [_lora(x) or {} for x in _py(lora) or []]
            return _js(bench_batched(self.model, int(n_streams), int(n_prompt), int(n_gen), per_stream or None))
        ids = _py(prompt)
        ids = [int(i) for i in ids] if ids is not None else None
        return _js(bench_model(self.model, int(n_prompt), int(n_gen), prompt=ids))

    def unload(self) -> None:
        self.model.close()


def load(read: Any, size: int, progress: Any = None, options: Any = None, draft_read: Any = None,
         draft_size: int = 0) -> WebModel:  # fmt: skip
    """Parse the GGUF behind `read`, open the browser's WebGPU device and stream the weights into it.
    `progress(phase, done, total)` reports the upload; options: n_ctx, max_batch, chat_template, n_parallel,
    kv_cache_tokens, kv_type, features, max_loras, max_lora_rank, and speculative decoding's speculative ("ngram"),
    draft_max, draft_min, draft_p_min, ngram_n, draft_greedy. `draft_read` / `draft_size`: a draft model's
    GGUF, read the same way."""
    given = {k: v for k, v in (_py(options) or {}).items() if v is not None}
    keys = ("n_ctx", "max_batch", "chat_template", "n_parallel", "kv_cache_tokens", "speculative", "draft_max",
            "draft_min", "draft_p_min", "ngram_n", "draft_greedy", "max_loras", "max_lora_rank", "kv_type")  # fmt: skip
    opts = {k: v for k, v in given.items() if k in keys}
    gf = read_gguf(JSSource(read, size))
    if _py(draft_read) is not None:
        opts["draft_model"] = read_gguf(JSSource(draft_read, draft_size, "<draft model>"))
    if "features" in given:  # restrict the optional WebGPU features used (e.g. [] for no subgroups)
        opts.update(device=get_device(features=tuple(given["features"])), owns_device=True)

    def upload(done: int, total: int) -> None:
        if progress is not None:
            progress("upload", done, total)

    return WebModel(Model(gf, progress=upload, **opts))


def lose_device(handle: WebModel) -> None:
    """Test hook: destroy the GPUDevice under a loaded model, as a driver reset would."""
    handle.model.device.lose()
