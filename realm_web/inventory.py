"""`realm-web models`: find GGUF files and describe them from their headers (no tensor data is read)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from realm_web.errors import RealmError
from realm_web.gguf import open_gguf


def find_models(dirs: Iterable[str]) -> list[str]:
    found = []
    for d in dirs:
        if os.path.isfile(d) and d.endswith(".gguf"):
            found.append(d)
            continue
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".gguf")]
    return found


def describe(path: str) -> dict[str, Any]:
    """Architecture, quant mix (tensor count per type), parameters, size and context length of a GGUF file."""
    try:
        with open_gguf(path) as gf:
            md = gf.metadata
            arch = md.get("general.architecture", "?")
            return {
                "path": path,
                "name": md.get("general.name"),
                "arch": arch,
                "params": sum(t.n_elements for t in gf.tensors),
                "size": gf.file_size,
                "context_length": md.get(f"{arch}.context_length"),
                "quant_mix": dict(Counter(t.type.name for t in gf.tensors).most_common()),
                "vocab_size": len(md.get("tokenizer.ggml.tokens", ())),
                "type": md.get("adapter.type") if md.get("general.type") == "adapter" else "model",
            }
    except RealmError as e:
        return {"path": path, "error": str(e)}
