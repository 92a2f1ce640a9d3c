"""The OpenAI-compatible endpoints over the engine: /v1/models, /v1/completions, /v1/chat/completions.

A request becomes one engine sequence per choice (`n` per prompt). With n > 1 the first choice of a prompt goes
first and the others follow its first token, so they find the prompt in the prefix cache. Streams are
Server-Sent Events ending `data: [DONE]`; a client that goes away (streamed or not) cancels its sequences at
once, which frees their KV blocks at the engine's next step boundary."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from realm_web.errors import RealmError
from realm_web.model import AsyncGeneration, ContextError, Model, Request
from realm_web.sequence import Event
from realm_web.server.metrics import Metrics
from realm_web.server.pool import ModelPool
from realm_web.server.protocol import (
    APIError,
    GenerationParams,
    parse_chat,
    parse_completion,
    parse_json,
)

FINGERPRINT = "realm_web"


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_body(request: HTTPRequest, limit: int) -> dict[str, Any]:
    """The JSON object a request carries, at most `limit` bytes (413 beyond, before reading more)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


# ---- one request's sequences -------------------------------------------------------------------------------


@dataclass
class Choice:
    index: int
    prompt_index: int
    req: Request
    gen: AsyncGeneration | None = None
    parts: list[str] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)  # logprob entries, in order
    finish_reason: str | None = None
    t_last: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Job:
    """The sequences of one API request, their events merged into one queue as (choice, event)."""

    def __init__(self, model: Model, model_id: str, choices: list[Choice], n: int, top_logprobs: int | None,
                 metrics: Metrics):  # fmt: skip
        self.model, self.model_id, self.choices, self.n = model, model_id, choices, n
        self.top_logprobs, self.metrics = top_logprobs, metrics
        self.queue: asyncio.Queue[tuple[Choice, Event | BaseException]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.open = 0

    def start(self) -> None:
        """Submit the first choice of every prompt (errors raise here, before any response is sent)."""
        for c in self.choices:
            if c.index % self.n == 0:
                self._submit(c)

    def _submit(self, c: Choice) -> None:
        c.gen = AsyncGeneration(self.model, c.req)
        self.open += 1
        self.tasks.append(asyncio.ensure_future(self._forward(c)))

    async def _forward(self, c: Choice) -> None:
        first = True
        try:
            async for ev in c.gen.events():  # type: ignore[union-attr]
                if first and c.index % self.n == 0:  # the prompt is cached now: its other choices follow
                    first = False
                    for other in self.choices[c.index + 1 : c.index + self.n]:
                        try:
                            self._submit(other)
                        except RealmError as e:
                            self.open += 1
                            self.queue.put_nowait((other, e))
                self.queue.put_nowait((c, ev))
        except RealmError as e:  # the step failed, or the device was lost
            self.queue.put_nowait((c, e))

    async def events(self) -> AsyncIterator[tuple[Choice, Event]]:
        """Every event until all choices ended. Raises APIError(500) for a sequence that failed."""
        while self.open:
            c, ev = await self.queue.get()
            if isinstance(ev, BaseException):
                self.open -= 1
                raise APIError(500, f"generation failed: {ev}", type="server_error", code="generation_failed")
            self._account(c, ev)
            if ev.finished:
                self.open -= 1
            yield c, ev

    def _account(self, c: Choice, ev: Event) -> None:
        now, seq, m = time.perf_counter(), ev.seq, self.metrics
        if ev.token is not None:
            if c.t_last is None and seq.t_first is not None:
                m.ttft.labels(self.model_id).observe(seq.t_first - seq.t_submit)
                m.prompt_tokens.labels(self.model_id).inc(seq.n_prompt)
                m.cached_tokens.labels(self.model_id).inc(seq.n_cached)
            elif c.t_last is not None:
                m.itl.labels(self.model_id).observe(now - c.t_last)
            c.t_last = now
            m.generated_tokens.labels(self.model_id).inc()
            if self.top_logprobs is not None and ev.logits is not None:
                c.tokens.append(logprob_entry(self.model, ev.token, ev.logits, self.top_logprobs))
        if ev.piece:
            c.parts.append(ev.piece)
        if ev.finished:
            c.finish_reason = "length" if seq.finish_reason == "length" else "stop"
            if c.t_last is None:  # ended before any token (at once on an end-of-generation token)
                m.prompt_tokens.labels(self.model_id).inc(seq.n_prompt)
                m.cached_tokens.labels(self.model_id).inc(seq.n_cached)

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        for c in self.choices:
            if c.gen is not None:
                c.gen.cancel()

    def usage(self) -> dict[str, Any]:
        firsts = [c for c in self.choices if c.index % self.n == 0 and c.gen is not None]
        prompt = sum(c.gen.seq.n_prompt for c in firsts)  # type: ignore[union-attr]
        cached = sum(c.gen.seq.n_cached for c in firsts)  # type: ignore[union-attr]
        seqs = [c.gen.seq for c in self.choices if c.gen is not None]
        completion = sum(q.n_generated for q in seqs)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip
        drafted, accepted = sum(q.n_drafted for q in seqs), sum(q.n_accepted for q in seqs)
        if drafted:  # speculative decoding, in OpenAI's words for predicted tokens
            usage["completion_tokens_details"] = {"accepted_prediction_tokens": accepted,
                                                  "rejected_prediction_tokens": drafted - accepted}  # fmt: skip
        return usage


def logprob_entry(model: Model, token: int, logits: bytes, top: int) -> dict[str, Any]:
    """The token's log-probability under the distribution it was drawn from (log-softmax of its logits row,
    after the repetition penalty, before temperature and truncation) and the `top` most likely tokens."""
    import numpy as np

    x = np.frombuffer(logits, np.float32).astype(np.float64)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    entry = {**_token_fields(model, token), "logprob": float(lp[token]), "top_logprobs": []}
    if top:
        best = np.argpartition(-lp, top - 1)[:top]
        best = best[np.argsort(-lp[best], kind="stable")]
        entry["top_logprobs"] = [{**_token_fields(model, int(i)), "logprob": float(lp[i])} for i in best]
    return entry


def _token_fields(model: Model, token: int) -> dict[str, Any]:
    b = model.tokenizer.token_to_piece(token, special=True)
    return {"token": b.decode("utf-8", "replace"), "bytes": list(b)}


# ---- building the sequences --------------------------------------------------------------------------------


def _choices(model: Model, prompts: list[list[int]], p: GenerationParams, param: str,
             lora: dict[str, float] | None = None) -> list[Choice]:  # fmt: skip
    """One checked engine request per choice (`param`: the field the prompt came from, for errors)."""
    n_ctx = model.n_ctx
    choices = []
    base_seed = p.seed if p.seed is not None else secrets.randbits(32)
    for pi, ids in enumerate(prompts):
        if len(ids) >= n_ctx:
            raise APIError(400, f"this model's maximum context length is {n_ctx} tokens; the prompt has {len(ids)}",
                           param=param, code="context_length_exceeded")  # fmt: skip
        max_tokens = p.max_tokens if p.max_tokens is not None else n_ctx - len(ids)
        if len(ids) + max_tokens > n_ctx:
            raise APIError(400, f"this model's maximum context length is {n_ctx} tokens; {len(ids) + max_tokens} "
                           f"were requested ({len(ids)} in the prompt, {max_tokens} in the completion): lower "
                           "max_tokens or shorten the prompt", param="max_tokens",
                           code="context_length_exceeded")  # fmt: skip
        for j in range(p.n):
            try:
                req = model.request(ids, max_tokens, **p.sampling_options((base_seed + j) & 0xFFFFFFFF), stop=p.stop,
                                    cache_salt=p.cache_salt, ignore_eos=p.ignore_eos,
                                    logprobs=p.logprobs is not None, lora=lora)  # fmt: skip
            except ContextError as e:
                raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
            except RealmError as e:
                raise APIError(400, str(e), param=param) from None
            choices.append(Choice(pi * p.n + j, pi, req))
    return choices


def _tokenize(model: Model, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise APIError(400, "'prompt' is empty", param="prompt", code="invalid_value")
        return model.tokenize(prompt)
    bad = [t for t in prompt if not 0 <= t < model.config.n_vocab]
    if bad:
        raise APIError(400, f"'prompt' holds token ids outside the vocabulary (0..{model.config.n_vocab - 1}): "
                       f"{bad[:5]}", param="prompt", code="invalid_value")  # fmt: skip
    return prompt


# ---- the endpoints -------------------------------------------------------------------------------------------


class API:
    def __init__(self, pool: ModelPool, metrics: Metrics, max_body: int):
        self.pool, self.metrics, self.max_body = pool, metrics, max_body

    async def models(self, request: HTTPRequest) -> Response:
        data = []
        for e in self.pool.ready():
            m = e.model
            data.append({"id": e.id, "object": "model", "created": e.created, "owned_by": "realm_web",
                         "meta": {"n_ctx": m.n_ctx, "n_vocab": m.config.n_vocab, "n_parallel": m.n_parallel,
                                  "architecture": m.config.arch, "adapter": m.device.info.name}})  # fmt: skip
            for name, base in self.pool.lora_base.items():
                if base == e.id:
                    data.append({"id": name, "object": "model", "created": e.created, "owned_by": "realm_web",
                                 "parent": e.id, "root": self.pool.loras[name].name})  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: HTTPRequest) -> Response:
        return await self._endpoint(request, chat=False)

    async def chat_completions(self, request: HTTPRequest) -> Response:
        return await self._endpoint(request, chat=True)

    async def _endpoint(self, request: HTTPRequest, chat: bool) -> Response:
        try:
            body = await read_body(request, self.max_body)
            parsed = parse_chat(body) if chat else parse_completion(body)
            p = parsed.params
            model, lora = self.pool.resolve(p.model)
            if p.lora is not None:  # the body's adapters, beside the one the model id names
                lora = {**(lora or {}), **p.lora}
            if chat:
                try:
                    prompts = [model.chat_ids(parsed.messages)]  # type: ignore[union-attr]
                except RealmError as e:
                    raise APIError(400, str(e), param="messages") from None
            else:
                prompts = [_tokenize(model, x) for x in parsed.prompts]  # type: ignore[union-attr]
            choices = _choices(model, prompts, p, "messages" if chat else "prompt", lora)
            job = Job(model, p.model, choices, p.n, p.logprobs, self.metrics)
            try:
                job.start()
            except RealmError as e:
                job.cancel()
                raise APIError(400, str(e)) from None
        except APIError as e:
            return error_response(e)
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": p.model, "system_fingerprint": FINGERPRINT}  # fmt: skip
        if p.stream:
            return EventStream(self._stream(job, meta, chat, p.include_usage), job.cancel)
        return await until_disconnect(request.receive, self._whole(job, meta, chat), job.cancel)

    async def _whole(self, job: Job, meta: dict[str, Any], chat: bool) -> Response:
        try:
            async for _ in job.events():
                pass
        except APIError as e:
            job.cancel()
            return error_response(e)
        choices = []
        for c in job.choices:
            lp = _logprobs(job, c, c.tokens, chat)
            if chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": lp, "finish_reason": c.finish_reason})  # fmt: skip
            else:
                choices.append({"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**meta, "object": obj, "choices": choices, "usage": job.usage()})

    async def _stream(self, job: Job, meta: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if include_usage else {}

        def chunk(choice: dict[str, Any]) -> bytes:
            return sse({**meta, "object": obj, "choices": [choice], **extra})

        if chat:
            for c in job.choices:
                yield chunk({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})  # fmt: skip
        try:
            async for c, ev in job.events():
                if not ev.piece and not ev.finished and job.top_logprobs is None:
                    continue  # a token whose text is not final yet (inside a character, or a stop string's prefix)
                new_tokens = c.tokens[-1:] if ev.token is not None and c.tokens else []
                lp = _logprobs(job, c, new_tokens, chat, offset=len(c.text) - len(ev.piece))
                reason = c.finish_reason if ev.finished else None
                if chat:
                    delta = {"content": ev.piece} if ev.piece or not ev.finished else {}
                    if ev.finished and ev.piece:  # the last piece, then the finish on its own chunk
                        yield chunk({"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": None})
                        delta, lp = {}, None
                    yield chunk({"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": reason})
                else:
                    yield chunk({"index": c.index, "text": ev.piece, "logprobs": lp, "finish_reason": reason})
        except APIError as e:  # a sequence failed: say so in the stream, and stop the request's others
            job.cancel()
            yield sse(e.body())
            return
        if include_usage:
            yield sse({**meta, "object": obj, "choices": [], "usage": job.usage()})
        yield b"data: [DONE]\n\n"


def _logprobs(job: Job, c: Choice, tokens: list[dict[str, Any]], chat: bool, offset: int = 0) -> Any:
    if job.top_logprobs is None:
        return None
    if chat:
        return {"content": tokens, "refusal": None}
    text_offset, pos = [], offset
    for t in tokens:
        text_offset.append(pos)
        pos += len(t["token"])
    return {
        "tokens": [t["token"] for t in tokens],
        "token_logprobs": [t["logprob"] for t in tokens],
        "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in tokens],
        "text_offset": text_offset,
    }


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


# ---- responses that stop their work when the client goes away --------------------------------------------------


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[Response], on_disconnect: Callable[[], None]) -> Response:
    """`work`'s response, or (the client went away first) `on_disconnect()` and an empty 499 nobody reads."""
    work_t, gone_t = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(receive))
    done, _ = await asyncio.wait({work_t, gone_t}, return_when=asyncio.FIRST_COMPLETED)
    if work_t in done:
        gone_t.cancel()
        return work_t.result()
    work_t.cancel()
    on_disconnect()
    return Response(status_code=499)


class EventStream:
    """A text/event-stream response. It watches the connection while it streams: when the client disconnects,
    the body stops and `on_disconnect()` runs at once (not at the next write, as a plain StreamingResponse)."""

    def __init__(self, body: AsyncIterator[bytes], on_disconnect: Callable[[], None]):
        self.body, self.on_disconnect = body, on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]  # fmt: skip

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for data in self.body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        pump_t, gone_t = asyncio.ensure_future(pump()), asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({pump_t, gone_t}, return_when=asyncio.FIRST_COMPLETED)
            if pump_t not in done:
                pump_t.cancel()
                self.on_disconnect()
            else:
                pump_t.result()
        except OSError:  # the connection broke while writing
            self.on_disconnect()
        finally:
            gone_t.cancel()
            await self.body.aclose()  # type: ignore[attr-defined]
