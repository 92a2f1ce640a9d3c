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
    def __init__(self, paths: list[Path], options: dict[str, Any], *, log: bool = True,
                 loras: list[tuple[str, Path]] = ()):  # fmt: skip
        """`loras`: (id, adapter path) pairs, each loaded into the first model it fits and served as model `id`
        (that model with the adapter at scale 1)."""
        self.entries: dict[str, Entry] = {}
        for p in paths:
            if p.stem in self.entries:
                raise ValueError(f"two models have the id {p.stem!r}: {self.entries[p.stem].path} and {p}")
            self.entries[p.stem] = Entry(p.stem, p)
        self.loras: dict[str, Path] = {}
        for name, path in loras:
            if name in self.entries or name in self.loras:
                raise ValueError(f"the id {name!r} is taken twice (models and adapters need distinct ids)")
            self.loras[name] = path
        self.lora_base: dict[str, str] = {}  # adapter id -> the model it is loaded into
        self.lora_errors: dict[str, str] = {}
        self.options, self.log = options, log
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Load every model in a background thread, one after another."""
        self._thread = threading.Thread(target=self._load_all, name="realm-web-load", daemon=True)
        self._thread.start()

    def _load_all(self) -> None:
        import realm_web

        if self.loras:  # room for every adapter given, of the largest rank among them
            self.options = {"max_loras": max(4, len(self.loras)), "max_lora_rank": self._max_rank(), **self.options}
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
            self._load_loras(e.id, model)
            e.model = model
            if self.log:
                print(f"realm-web serve: model {e.id!r} ready ({time.perf_counter() - t0:.1f} s, "
                      f"{model.device.info.name})", flush=True)  # fmt: skip
        for name in self.loras.keys() - self.lora_base.keys():
            self.lora_errors.setdefault(name, "no served model loaded")
            print(f"realm-web serve: cannot serve adapter {name!r}: {self.lora_errors[name]}", file=sys.stderr,
                  flush=True)  # fmt: skip

    def _max_rank(self) -> int:
        from realm_web.errors import RealmError
        from realm_web.gguf import open_gguf

        ranks = [16]
        for path in self.loras.values():
            try:
                with open_gguf(path) as gf:
                    ranks += [t.shape[-1] for t in gf.tensors if t.name.endswith(".lora_a")]
            except RealmError:  # reported when it is loaded
                pass
        return max(ranks)

    def _load_loras(self, model_id: str, model: Any) -> None:
        """Load the adapters not yet placed that fit `model`."""
        from realm_web.errors import RealmError

        for name, path in self.loras.items():
            if name in self.lora_base:
                continue
            try:
                model.load_lora(str(path), name)
            except RealmError as err:  # fits another model, maybe
                self.lora_errors[name] = f"{type(err).__name__}: {err}"
                continue
            self.lora_base[name] = model_id
            self.lora_errors.pop(name, None)

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

    def resolve(self, model_id: str) -> tuple[Any, dict[str, float] | None]:
        """The model serving `model_id`, and the adapters that id stands for (None: a base model's id)."""
        if model_id in self.loras and model_id not in self.entries:
            base = self.lora_base.get(model_id)
            if base is None:
                if self.loading:
                    raise APIError(503, f"the adapter '{model_id}' is still loading", type="server_error",
                                   code="model_loading", headers={"Retry-After": "1"})  # fmt: skip
                raise APIError(503, f"the adapter '{model_id}' failed to load: {self.lora_errors.get(model_id)}",
                               type="server_error", code="model_unavailable")  # fmt: skip
            return self.get(base), {model_id: 1.0}
        return self.get(model_id), None

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
        if not self.loading:
            errors.update({n: self.lora_errors.get(n, "") for n in self.loras.keys() - self.lora_base.keys()})
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
