"""The model a user holds: `load()` a GGUF file or URL, then tokenize, score, generate and chat.

Generation follows gpt-fast's shape: `_prefill` runs the prompt in chunks and samples the first token,
`_decode_one` replays the recorded one-token step, `generate` streams text as each token arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from realm_web.chat import BUILTIN_TEMPLATES, ChatTemplate
from realm_web.config import Config
from realm_web.device import Buffer, Device, get_device
from realm_web.errors import RealmError
from realm_web.gguf import GGUFFile, open_gguf
from realm_web.sampling import Sampler, SamplingParams
from realm_web.tokenizer import Tokenizer
from realm_web.transformer import Transformer
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


class Model:
    def __init__(
        self,
        gf: GGUFFile,
        *,
        device: Device | None = None,
        n_ctx: int | None = None,
        max_batch: int = 64,
        chat_template: str | None = None,
        max_binding: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK,
        progress: Progress | None = None,
        owns_device: bool = False,
    ):
        """`owns_device`: close() also closes a `device` passed in (one opened for this model alone)."""
        self.gguf = gf
        self.config = cfg = Config.from_gguf(gf)
        self.tokenizer = Tokenizer.from_gguf(gf)
        self._owns_device = device is None or owns_device
        self.device = dev = device or get_device()
        self.n_ctx = min(n_ctx or min(cfg.n_ctx_train, 4096), cfg.n_ctx_train)
        mats = [t.name for t in gf.tensors if len(t.shape) >= 2]
        weights = upload_gguf(dev, gf, mats, chunk_bytes=chunk_bytes, max_binding=max_binding, progress=progress)
        vectors: dict[str, Buffer] = {}
        for t in gf.tensors:
            if len(t.shape) == 1:
                data = _f32_vector(gf, t.name)
                vectors[t.name] = buf = dev.create_buffer(len(data), t.name)
                dev.write(buf, data)
        self.transformer = Transformer(dev, cfg, weights, vectors, n_ctx=self.n_ctx, max_batch=max_batch)
        self.sampler = Sampler(dev, self.transformer.logits, self.transformer.ids, cfg.n_vocab)
        self.chat_template = self._chat_template(chat_template)
        self.last_usage: dict[str, Any] = {}

    # -- text <-> ids -----------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    # -- scoring ----------------------------------------------------------------------------------------------
    def logits_bytes(self, ids: Sequence[int]) -> bytes:
        """Teacher-forced logits at every position as raw little-endian f32 [len(ids), n_vocab] (no numpy:
        this is what the browser returns)."""
        ids = self._check_prompt(ids, 0)
        t = self.transformer
        rows = []
        for start in range(0, len(ids), t.max_batch):
            chunk = ids[start : start + t.max_batch]
            t.run(chunk, list(range(start, start + len(chunk))), [0] * len(chunk), all_logits=True)
            rows.append(t.read_logits(len(chunk)))
        return b"".join(rows)

    def logits(self, ids: Sequence[int]):
        """Teacher-forced logits at every position: numpy float32 [len(ids), n_vocab] (needs numpy)."""
        import numpy as np

        return np.frombuffer(self.logits_bytes(ids), np.float32).reshape(len(ids), self.config.n_vocab)

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

    def _prefill(self, ids: list[int]) -> int:
        """Run the prompt through the model; the first new token is sampled on the GPU and returned."""
        t = self.transformer
        for start in range(0, len(ids), t.max_batch):
            chunk = ids[start : start + t.max_batch]
            last = start + len(chunk) == len(ids)
            t.run(chunk, list(range(start, start + len(chunk))), [0] * len(chunk),
                  extra=[self.sampler.dispatch] if last else ())  # fmt: skip
        return self._read_sampled()

    def _decode_one(self, pos: int) -> int:
        """One token at `pos`: its id is already on the GPU (the sampler wrote it); returns the next id."""
        self.transformer.run(None, [pos], [0], extra=[self.sampler.dispatch])
        return self._read_sampled()

    def _read_sampled(self) -> int:
        return struct.unpack("<I", self.device.read(self.transformer.ids, 0, 4))[0]

    def generate_ids(self, ids: Sequence[int], max_tokens: int, sp: SamplingParams) -> Iterator[int]:
        """Yield new token ids one by one until an end-of-generation token, `max_tokens` or a full context."""
        ids = self._check_prompt(ids, max_tokens)
        self.sampler.reset(sp, ids)
        self.last_usage.clear()  # updated in place: a streaming caller holds this dict
        self.last_usage.update(prompt_tokens=len(ids), completion_tokens=0, finish_reason="length")
        if max_tokens <= 0:
            return
        tok = self._prefill(ids)
        pos = len(ids)
        for n in range(1, max_tokens + 1):
            if self.tokenizer.is_eog(tok):
                self.last_usage["finish_reason"] = "stop"
                return
            self.last_usage["completion_tokens"] = n
            yield tok
            if n == max_tokens or pos >= self.n_ctx:
                return
            tok = self._decode_one(pos)
            pos += 1

    def generate(
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
        add_special: bool = True,
        parse_special: bool = False,
    ) -> Iterator[str]:
        """Stream the continuation of `prompt` (text, or token ids) piece by piece as tokens are produced."""
        sp = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        ids = prompt if not isinstance(prompt, str) else self.tokenize(prompt, add_special, parse_special)
        self._check_prompt(ids, max_tokens)  # bad input fails here, not at the first iteration
        return _stream_text(self.tokenizer, self.generate_ids(ids, max_tokens, sp), list(stop), self.last_usage)

    def chat(self, messages: Sequence[Mapping[str, Any]], stream: bool = True, **options: Any) -> Iterator[str] | str:
        """Reply to a conversation rendered with the model's chat template. Options are generate()'s."""
        pieces = self.generate(self.chat_ids(messages), **options)
        return pieces if stream else "".join(pieces)

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template, ready for a reply."""
        prompt = self.chat_template.render(messages, add_generation_prompt=True)
        bos = self._token_text(self.tokenizer.bos_id)
        return self.tokenize(prompt, add_special=not (bos and prompt.startswith(bos)), parse_special=True)

    def close(self) -> None:
        """Free the model's GPU memory when it opened its own device (a device passed in belongs to the caller,
        who closes it). The model cannot be used afterwards."""
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


def _stream_text(tk: Tokenizer, ids: Iterator[int], stop: list[str], usage: dict) -> Iterator[str]:
    """Text pieces of `ids` (see TextStream); a stop string ends generation with finish_reason "stop"."""
    ts = TextStream(tk, stop)
    for i in ids:
        piece = ts.feed(i)
        if piece:
            yield piece
        if ts.stopped:
            usage["finish_reason"] = "stop"
            ids.close()
            return
    tail = ts.flush()
    if tail:
        yield tail


def load(path_or_url: str, *, progress: Callable[[int, int], None] | None = None, **options: Any) -> Model:
    """Load a GGUF model from a path or http(s) URL onto the GPU. Options: device, n_ctx, max_batch,
    chat_template (a built-in name or Jinja source), max_binding (force weight splitting), chunk_bytes."""
    return Model(open_gguf(path_or_url), progress=progress, **options)


def load_tokenizer(path_or_url: str) -> Tokenizer:
    """The tokenizer of a GGUF file (vocab-only files work: no tensors are read)."""
    return Tokenizer.from_gguf(open_gguf(path_or_url))
