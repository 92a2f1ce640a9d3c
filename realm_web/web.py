"""The engine's entry for the browser: what the JS SDK (js/src/runtime.js) calls under Pyodide.

The browser twin of `cli.py`: it turns JS arguments into `Model` calls and results back into JS values.
Model bytes come from a JS `read(offset, length) => Promise<Uint8Array>` (the SDK reads its OPFS cache or
the network with HTTP Range), so the file is never whole in wasm memory; weights go to the GPU in bounded
chunks. Everything that touches the GPU awaits through `run_sync`: JS must call these functions with
`callPromising`. Per generated token, Python and JS cross a constant few times (write the position, replay
the recorded step, read the sampled id, hand the text piece to `on_token`).
"""

from __future__ import annotations

import random
import time
from typing import Any

import js
from pyodide.ffi import run_sync, to_js

from realm_web.bench import bench_model
from realm_web.device import get_device
from realm_web.errors import SourceError
from realm_web.gguf import read_gguf
from realm_web.model import Model, TextStream
from realm_web.sampling import SamplingParams
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


class WebModel:
    """A loaded model as the SDK sees it (one per engine)."""

    def __init__(self, model: Model):
        self.model = model

    def info(self) -> Any:
        m, c, d = self.model, self.model.config, self.model.device.info
        return _js({
            "architecture": c.arch, "n_ctx": m.n_ctx, "n_ctx_train": c.n_ctx_train, "n_vocab": c.n_vocab,
            "n_layer": c.n_layer, "n_embd": c.n_embd, "adapter": d.name, "adapter_type": d.adapter_type,
            "features": sorted(d.features), "subgroups": d.subgroups,
            "max_storage_binding": d.max_storage_binding, "max_buffer": d.max_buffer,
        })  # fmt: skip

    def generate(self, request: Any, on_token: Any) -> Any:
        """Run one request ({prompt} or {messages} plus sampling settings); `on_token(piece)` is called once per
        token and stops generation by returning true. Returns the usage record."""
        req = _py(request) or {}
        m = self.model
        msgs = req.get("messages")
        ids = m.chat_ids(msgs) if msgs is not None else m.tokenize(str(req.get("prompt", "")))
        max_tokens = int(req.get("max_tokens") or 256)
        given = {k: req[k] for k in _SAMPLING_KEYS if req.get(k) is not None}
        given.setdefault("seed", random.getrandbits(32))  # as OpenAI's API: no seed, a different draw each time
        sp = SamplingParams(**given)
        stream = TextStream(m.tokenizer, [str(s) for s in req.get("stop") or ()])
        t0 = time.perf_counter()
        t_first = None
        aborted = False
        gen = m.generate_ids(ids, max_tokens, sp)
        for tok in gen:
            if t_first is None:
                t_first = time.perf_counter()
            piece = stream.feed(tok)
            if stream.stopped:
                m.last_usage["finish_reason"] = "stop"
            if on_token(piece) or stream.stopped:
                aborted = not stream.stopped
                gen.close()
                break
        else:
            tail = stream.flush()
            if tail:
                on_token(tail)
        t_end = time.perf_counter()
        u = dict(m.last_usage)
        n_new = u["completion_tokens"]
        prefill_s = (t_first or t_end) - t0
        decode_s = t_end - t_first if t_first is not None else 0.0
        u.update(
            total_tokens=u["prompt_tokens"] + n_new,
            finish_reason="abort" if aborted else u["finish_reason"],
            time_to_first_token_ms=prefill_s * 1e3,
            prefill_ms=prefill_s * 1e3,
            decode_ms=decode_s * 1e3,
            prefill_tokens_per_s=u["prompt_tokens"] / prefill_s if prefill_s > 0 else 0.0,
            # the first token comes out of prefill; decode produced the other n_new - 1
            decode_tokens_per_s=(n_new - 1) / decode_s if n_new > 1 and decode_s > 0 else 0.0,
        )
        return _js(u)

    def logits(self, ids: Any) -> Any:
        """Teacher-forced logits: a Uint8Array of little-endian f32 [len(ids), n_vocab]."""
        return to_js(self.model.logits_bytes([int(i) for i in _py(ids)]))

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> Any:
        return _js(self.model.tokenize(str(text), bool(add_special), bool(parse_special)))

    def detokenize(self, ids: Any) -> str:
        return self.model.detokenize([int(i) for i in _py(ids)])

    def apply_chat_template(self, messages: Any) -> str:
        return self.model.chat_template.render(_py(messages), add_generation_prompt=True)

    def bench(self, n_prompt: int = 64, n_gen: int = 64, prompt: Any = None) -> Any:
        """`realm-web bench`'s measurement, in the browser: prefill and decode tokens/s (greedy, EOS ignored).
        `prompt`: a JS array of token ids to prefill exactly (default: bench_model's fixed prompt of `n_prompt`)."""
        ids = _py(prompt)
        ids = [int(i) for i in ids] if ids is not None else None
        return _js(bench_model(self.model, int(n_prompt), int(n_gen), prompt=ids))

    def unload(self) -> None:
        self.model.close()


def load(read: Any, size: int, progress: Any = None, options: Any = None) -> WebModel:
    """Parse the GGUF behind `read`, open the browser's WebGPU device and stream the weights into it.
    `progress(phase, done, total)` reports the upload; options: n_ctx, max_batch, chat_template, features."""
    given = {k: v for k, v in (_py(options) or {}).items() if v is not None}
    opts = {k: v for k, v in given.items() if k in ("n_ctx", "max_batch", "chat_template")}
    gf = read_gguf(JSSource(read, size))
    if "features" in given:  # restrict the optional WebGPU features used (e.g. [] for no subgroups)
        opts.update(device=get_device(features=tuple(given["features"])), owns_device=True)

    def upload(done: int, total: int) -> None:
        if progress is not None:
            progress("upload", done, total)

    return WebModel(Model(gf, progress=upload, **opts))


def lose_device(handle: WebModel) -> None:
    """Test hook: destroy the GPUDevice under a loaded model, as a driver reset would."""
    handle.model.device.lose()
