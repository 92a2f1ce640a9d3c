"""The OpenAI API's request bodies, checked: every field's type and range, with an OpenAI error body
(`{"error": {"message", "type", "param", "code"}}`) naming what is wrong. Nothing here touches a model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_N = 16  # choices per request
MAX_STOP = 4  # stop strings (OpenAI's limit)
MAX_LOGPROBS_COMPLETIONS = 5  # legacy completions: `logprobs` is a count
MAX_TOP_LOGPROBS = 20  # chat: `top_logprobs`


class APIError(Exception):
    """An HTTP error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body: UTF-8 JSON holding an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_utf8") from None
    if not text.strip():
        raise APIError(400, "the request body is empty: expected a JSON object", code="invalid_json")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       code="invalid_json") from None  # fmt: skip
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_kind(body)}", code="invalid_json")
    return body


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


class Fields:
    """Typed reads of a body's fields; absent or null fields give the default."""

    def __init__(self, body: dict[str, Any]):
        self.body = body

    def _get(self, name: str) -> Any:
        return self.body.get(name)

    def required(self, name: str) -> Any:
        if self.body.get(name) is None:
            raise APIError(400, f"missing required parameter: '{name}'", param=name, code="missing_required_parameter")
        return self.body[name]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self.required(name) if required else self._get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise invalid(name, f"'{name}' must be a string, not {_kind(v)}", "invalid_type")
        return v

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self._get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise invalid(name, f"'{name}' must be a boolean, not {_kind(v)}", "invalid_type")
        return v

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self._get(name)
        if v is None:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise invalid(name, f"'{name}' must be an integer, not {_kind(v)}", "invalid_type")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise invalid(name, f"'{name}' is {v}; it must be {_range(lo, hi)}")
        return v

    def number(self, name: str, default: float, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:  # fmt: skip
        v = self._get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise invalid(name, f"'{name}' must be a number, not {_kind(v)}", "invalid_type")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            bound = f"greater than {lo}" if lo_open and hi is None else _range(lo, hi, lo_open)
            raise invalid(name, f"'{name}' is {v}; it must be {bound}")
        return float(v)


def _range(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'above' if lo_open else 'at least'} {lo} and at most {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


@dataclass
class GenerationParams:
    """What /v1/completions and /v1/chat/completions share."""

    model: str
    max_tokens: int | None  # None: up to the end of the context
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None  # None: a fresh one per request
    logprobs: int | None = None  # None: off; else how many top alternatives per token (0..)
    cache_salt: str | None = None
    ignore_eos: bool = False  # llama.cpp's: generate max_tokens even past an end-of-generation token
    lora: dict[str, float] | None = None  # adapters by name and scale (the SDK's [{id, scale}], or {name: scale})

    def sampling_options(self, seed: int) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "repeat_penalty": self.repeat_penalty, "repeat_last_n": self.repeat_last_n, "seed": seed}  # fmt: skip


def _lora(v: Any) -> dict[str, float] | None:
    """The `lora` field: [{"id": name, "scale": s}, ...] (scale 1 when absent) or {name: scale}."""
    if v is None:
        return None
    items = list(v.items()) if isinstance(v, dict) else None
    if isinstance(v, list):
        items = []
        for x in v:
            if not isinstance(x, dict) or not isinstance(x.get("id", x.get("name")), str):
                raise invalid("lora", "each entry of 'lora' must be an object with a string 'id'", "invalid_type")
            items.append((x.get("id", x.get("name")), x.get("scale", 1.0)))
    if items is None:
        raise invalid("lora", f"'lora' must be an array of {{id, scale}} or an object, not {_kind(v)}", "invalid_type")
    out = {}
    for name, scale in items:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise invalid("lora", f"the scale of adapter '{name}' must be a number, not {_kind(scale)}", "invalid_type")
        out[name] = float(scale)
    return out


def _common(f: Fields, max_tokens_names: tuple[str, ...]) -> GenerationParams:
    model = f.string("model", required=True)
    max_tokens = None
    for name in max_tokens_names:
        v = f.integer(name, None, 1)
        if v is not None:
            max_tokens = v
    stream = f.boolean("stream")
    opts = f.body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if not isinstance(opts, dict):
            raise invalid("stream_options", f"'stream_options' must be an object, not {_kind(opts)}", "invalid_type")
        include_usage = Fields(opts).boolean("include_usage")
    stop = f.body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP:
            raise invalid("stop", f"'stop' holds {len(stop)} strings; at most {MAX_STOP} are allowed")
        stops = list(stop)
    else:
        raise invalid("stop", "'stop' must be a string or an array of strings", "invalid_type")
    for name in ("presence_penalty", "frequency_penalty"):
        if f.number(name, 0.0, -2.0, 2.0) != 0.0:
            raise invalid(name, f"'{name}' is not supported (only 0); use 'repeat_penalty' (llama.cpp's)",
                          "unsupported_parameter")  # fmt: skip
    if f.body.get("logit_bias"):
        raise invalid("logit_bias", "'logit_bias' is not supported", "unsupported_parameter")
    seed = f.integer("seed", None)
    lora = _lora(f.body.get("lora"))
    return GenerationParams(
        lora=lora,
        model=model,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        n=f.integer("n", 1, 1, MAX_N),  # type: ignore[arg-type]
        stream=stream,
        include_usage=include_usage,
        stop=stops,
        temperature=f.number("temperature", 0.8, 0.0, 2.0),
        top_p=f.number("top_p", 0.95, 0.0, 1.0, lo_open=True),
        top_k=f.integer("top_k", 40, 0),  # type: ignore[arg-type]
        min_p=f.number("min_p", 0.05, 0.0, 1.0),
        repeat_penalty=f.number("repeat_penalty", 1.0, 0.0, lo_open=True),
        repeat_last_n=f.integer("repeat_last_n", 64, 0, 1024),  # type: ignore[arg-type]
        seed=None if seed is None else seed & 0xFFFFFFFF,
        cache_salt=f.string("cache_salt"),
        ignore_eos=f.boolean("ignore_eos"),
    )


@dataclass
class CompletionRequest:
    params: GenerationParams
    prompts: list[str | list[int]]  # text, or token ids


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    f = Fields(body)
    p = _common(f, ("max_tokens",))
    if p.max_tokens is None and "max_tokens" not in body:
        p.max_tokens = 16  # the legacy endpoint's default
    p.logprobs = f.integer("logprobs", None, 0, MAX_LOGPROBS_COMPLETIONS)
    if f.boolean("echo"):
        raise invalid("echo", "'echo' is not supported", "unsupported_parameter")
    if f.string("suffix"):
        raise invalid("suffix", "'suffix' is not supported", "unsupported_parameter")
    prompt = f.required("prompt")
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(x) for x in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(x, list) and x and all(_is_int(t) for t in x)
                                                     for x in prompt):  # fmt: skip
        prompts = [list(x) for x in prompt]
    else:
        raise invalid("prompt", "'prompt' must be a string, an array of strings, an array of token ids or an "
                      "array of arrays of token ids (none empty)", "invalid_type")  # fmt: skip
    return CompletionRequest(p, prompts)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class ChatRequest:
    params: GenerationParams
    messages: list[dict[str, Any]]


ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    f = Fields(body)
    p = _common(f, ("max_tokens", "max_completion_tokens"))
    if f.boolean("logprobs"):
        p.logprobs = f.integer("top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    if body.get("tools") or body.get("functions"):
        raise invalid("tools", "tool and function calling are not supported", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise invalid("response_format", "only 'response_format': {'type': 'text'} is supported",
                      "unsupported_parameter")  # fmt: skip
    messages = f.required("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty array of messages", "invalid_type")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, f"'{where}' must be an object, not {_kind(m)}", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}; got {role!r}")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return ChatRequest(p, out)


def _content(c: Any, where: str) -> str:
    """A message's text: a string, or an array of text parts (other part types are refused)."""
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        texts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{where}.content[{j}]", f"'{where}.content[{j}]' must be a text part "
                              "({'type': 'text', 'text': ...}); images and audio are not supported")  # fmt: skip
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{where}.content", f"'{where}.content' must be a string or an array of text parts, not {_kind(c)}",
                  "invalid_type")  # fmt: skip
