"""The models the API serves, loaded in the background: `/health` answers 503 until each has loaded (or
failed), requests for one still loading get 503, an unknown id 404."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realm_web.server.protocol import APIError


@dataclass
class Entry:
    id: str
    path: Path
    model: Any = None  # realm_web.Model once loaded
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def state(self) -> str:
        return "ready" if self.model is not None else "error" if self.error else "loading"


class ModelPool:
    def __init__(self, paths: list[Path], options: dict[str, Any], *, log: bool = True):
        self.entries: dict[str, Entry] = {}
        for p in paths:
            if p.stem in self.entries:
                raise ValueError(f"two models have the id {p.stem!r}: {self.entries[p.stem].path} and {p}")
            self.entries[p.stem] = Entry(p.stem, p)
        self.options, self.log = options, log
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Load every model in a background thread, one after another."""
        self._thread = threading.Thread(target=self._load_all, name="realm-web-load", daemon=True)
        self._thread.start()

    def _load_all(self) -> None:
        import realm_web

        for e in self.entries.values():
            if self._closed:
                return
            t0 = time.perf_counter()
            try:
                model = realm_web.load(str(e.path), **self.options)
            except Exception as err:  # a model that cannot load is reported, the others still serve
                e.error = f"{type(err).__name__}: {err}"
                print(f"realm-web serve: cannot load {e.path.name}: {e.error}", file=sys.stderr, flush=True)
                continue
            if self._closed:
                model.close()
                return
            e.model = model
            if self.log:
                print(f"realm-web serve: model {e.id!r} ready ({time.perf_counter() - t0:.1f} s, "
                      f"{model.device.info.name})", flush=True)  # fmt: skip

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every load attempt ended (tests); True if they did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.loading is False

    @property
    def loading(self) -> bool:
        return any(e.state == "loading" for e in self.entries.values())

    def ready(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.model is not None]

    def get(self, model_id: str) -> Any:
        e = self.entries.get(model_id)
        if e is None:
            have = ", ".join(self.entries) or "none"
            raise APIError(404, f"the model '{model_id}' does not exist (served: {have})", param="model",
                           code="model_not_found")  # fmt: skip
        if e.model is None:
            if e.error:
                raise APIError(503, f"the model '{model_id}' failed to load: {e.error}", type="server_error",
                               code="model_unavailable")  # fmt: skip
            raise APIError(503, f"the model '{model_id}' is still loading", type="server_error",
                           code="model_loading", headers={"Retry-After": "1"})  # fmt: skip
        return e.model

    def health(self) -> tuple[int, dict[str, Any]]:
        states = {e.id: e.state for e in self.entries.values()}
        errors = {e.id: e.error for e in self.entries.values() if e.error}
        if self.loading:
            return 503, {"status": "loading", "models": states}
        if self.entries and not self.ready():
            return 503, {"status": "error", "models": states, "errors": errors}
        body: dict[str, Any] = {"status": "ok", "models": states}
        if errors:
            body["errors"] = errors
        return 200, body

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._thread.join()
        for e in self.entries.values():
            if e.model is not None:
                e.model.close()
                e.model = None
