"""Sampling settings and the GPU sampler that applies them (host side of shaders/sample.wgsl.j2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from realm_web.device import Buffer, Device
from realm_web.errors import RealmError
from realm_web.kernels import wgsl

MAX_WINDOW = 1024  # longest repetition-penalty window (tokens)


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's defaults; temperature <= 0 means greedy."""

    temperature: float = 0.8
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1 = off
    min_p: float = 0.05  # 0 = off
    repeat_penalty: float = 1.0  # 1 = off
    repeat_last_n: int = 64  # window of the penalty
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.repeat_last_n <= MAX_WINDOW:
            raise RealmError(f"repeat_last_n must be within 0..{MAX_WINDOW}, got {self.repeat_last_n}")
        if self.top_k < 0 or not 0 <= self.min_p <= 1 or self.top_p <= 0 or self.repeat_penalty <= 0:
            raise RealmError(f"invalid sampling settings: {self}")


def sample_params(n_vocab: int, sp: SamplingParams) -> bytes:
    """Params of sample.wgsl.j2."""
    ring = sp.repeat_last_n if sp.repeat_penalty != 1.0 else 0
    return struct.pack(
        "<4I4f", n_vocab, sp.top_k, ring, sp.seed & 0xFFFFFFFF, sp.temperature, sp.top_p, sp.min_p, sp.repeat_penalty
    )


class Sampler:
    """Samples row 0 of `logits` into `out[0]`. Built once; `reset` before each generation."""

    def __init__(self, dev: Device, logits: Buffer, out: Buffer, n_vocab: int):
        self.dev, self.n_vocab = dev, n_vocab
        self.params = dev.create_buffer(32, "sample.params", uniform=True)
        self.state = dev.create_buffer(4 * (4 + MAX_WINDOW), "sample.state")
        self.dispatch = dev.dispatch("sample", wgsl("sample"), {}, [self.params, logits, self.state, out], (1, 1, 1))

    def reset(self, sp: SamplingParams, history: list[int] = ()) -> None:
        """New settings and seed; the penalty window starts with the last tokens of `history` (the prompt)."""
        self.dev.write(self.params, sample_params(self.n_vocab, sp))
        window = list(history)[-sp.repeat_last_n :] if sp.repeat_last_n else []
        next_slot = len(window) % max(1, sp.repeat_last_n)
        self.dev.write(self.state, struct.pack(f"<4I{len(window)}I", 0, len(window), next_slot, 0, *window))
