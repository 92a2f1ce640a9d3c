"""API keys and per-key limits, in front of /v1/ (the page, /health and /metrics need no key).

Bearer keys (`--api-key`, several allowed; none given: the API is open and limits apply per client address);
a missing or wrong key gets 401 with OpenAI's error body. Per key: requests per minute (a sliding 60 s window)
and requests in flight (a streamed response is in flight until its last byte); over either gets 429 with
Retry-After. Both answers leave the model untouched."""

from __future__ import annotations

import hmac
import json
import math
import time
from collections import deque
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from realm_web.server.protocol import APIError

WINDOW = 60.0  # seconds of the requests-per-minute window


class Limits:
    """The state of every key's limits (one per server)."""

    def __init__(self, rpm: int | None, concurrent: int | None):
        self.rpm, self.concurrent = rpm, concurrent
        self._times: dict[str, deque[float]] = {}
        self._active: dict[str, int] = {}

    def enter(self, key: str, now: float | None = None) -> None:
        """Count a request for `key`, or raise 429."""
        now = time.monotonic() if now is None else now
        if self.concurrent is not None and self._active.get(key, 0) >= self.concurrent:
            raise APIError(429, f"too many requests in flight for this key (the limit is {self.concurrent})",
                           type="rate_limit_error", code="concurrency_limit_exceeded",
                           headers={"Retry-After": "1"})  # fmt: skip
        if self.rpm is not None:
            times = self._times.setdefault(key, deque())
            while times and times[0] <= now - WINDOW:
                times.popleft()
            if len(times) >= self.rpm:
                wait = max(1, math.ceil(times[0] + WINDOW - now))
                raise APIError(429, f"rate limit reached for this key: {self.rpm} requests per minute; retry in "
                               f"{wait} s", type="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(wait)})  # fmt: skip
            times.append(now)
        self._active[key] = self._active.get(key, 0) + 1

    def leave(self, key: str) -> None:
        n = self._active.get(key, 0) - 1
        if n > 0:
            self._active[key] = n
        else:
            self._active.pop(key, None)


class KeysAndLimits:
    """ASGI middleware: checks the key and the limits of every /v1/ request (all on the event loop thread)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], limits: Limits, prefix: str = "/v1/"):
        self.app, self.keys, self.limits, self.prefix = app, [k.encode() for k in keys], limits, prefix

    def identify(self, scope: Scope) -> str:
        """The key a request is counted under (raises 401)."""
        if not self.keys:
            client = scope.get("client")
            return f"addr:{client[0] if client else '?'}"
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        ok = False
        for k in self.keys:  # compare with every key, in constant time each
            ok |= hmac.compare_digest(token, k)
        if not ok:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return "key:" + token.decode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        try:
            key = self.identify(scope)
            self.limits.enter(key)
        except APIError as e:
            await send_error(send, e)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limits.leave(key)


async def send_error(send: Send, e: APIError) -> None:
    data = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
