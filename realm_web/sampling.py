"""Sampling settings and the GPU sampler that applies them (host side of shaders/sample.wgsl.j2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from realm_web.device import Buffer, Device, Dispatch
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


NO_SAMPLE = 0xFFFFFFFF  # slot of a row whose logits are returned, not sampled
ROW_BYTES = 32  # one Row of sample.wgsl.j2
STATE_WORDS = 4 + MAX_WINDOW  # u32 words per slot of the sampler state


def sample_row(slot: int, sp: SamplingParams | None) -> bytes:
    """One `Row` of sample.wgsl.j2: the settings a row is sampled with, and its sequence's state slot
    (`sp=None`: the row is not sampled)."""
    if sp is None:
        return struct.pack("<4I4f", NO_SAMPLE, 0, 0, 0, 0.0, 1.0, 0.0, 1.0)
    ring = sp.repeat_last_n if sp.repeat_penalty != 1.0 else 0
    return struct.pack(
        "<4I4f", slot, sp.top_k, ring, sp.seed & 0xFFFFFFFF, sp.temperature, sp.top_p, sp.min_p, sp.repeat_penalty
    )


def slot_state(sp: SamplingParams, history: list[int], n_drawn: int = 0) -> bytes:
    """A slot's sampler state: `n_drawn` draws so far (the RNG counter: a sequence resumed after preemption
    continues its stream) and the penalty window holding the last tokens of `history`."""
    window = list(history)[-sp.repeat_last_n :] if sp.repeat_last_n else []
    next_slot = len(window) % max(1, sp.repeat_last_n)
    return struct.pack(f"<4I{len(window)}I", n_drawn, len(window), next_slot, 0, *window)


class Sampler:
    """Samples rows of `logits` ([n_rows, n_vocab] f32) into `out` ([n_rows] u32), each row with its own
    settings (`rows`, written per step) and its sequence's state slot. Built once; dispatches per row count
    are recorded on first use."""

    def __init__(self, dev: Device, logits: Buffer, n_vocab: int, max_rows: int, n_slots: int):
        self.dev, self.logits, self.n_vocab, self.max_rows = dev, logits, n_vocab, max_rows
        self.params = dev.create_buffer(16, "sample.params", uniform=True)
        dev.write(self.params, struct.pack("<4I", n_vocab, STATE_WORDS, 0, 0))
        self.rows = dev.create_buffer(ROW_BYTES * max_rows, "sample.rows")
        self.state = dev.create_buffer(4 * STATE_WORDS * n_slots, "sample.state")
        self.out = dev.create_buffer(4 * max_rows, "sample.out")
        self._dispatches: dict[int, Dispatch] = {}

    def dispatch(self, n_rows: int) -> Dispatch:
        d = self._dispatches.get(n_rows)
        if d is None:
            bufs = [self.params, self.logits, self.rows, self.state, self.out]
            d = self._dispatches[n_rows] = self.dev.dispatch("sample", wgsl("sample"), {}, bufs, (n_rows, 1, 1))
        return d

    def reset_slot(self, slot: int, sp: SamplingParams, history: list[int] = (), n_drawn: int = 0) -> None:
        """Start (or resume) a sequence in `slot`: see `slot_state`."""
        self.dev.write(self.state, slot_state(sp, list(history), n_drawn), 4 * STATE_WORDS * slot)

    def set_rows(self, rows: list[bytes]) -> None:
        """This step's rows (`sample_row` each), in the order of the logits rows."""
        self.dev.write(self.rows, b"".join(rows))

    def read(self, n_rows: int) -> list[int]:
        """The ids the last dispatch of `n_rows` sampled (rows not sampled hold garbage)."""
        return list(struct.unpack(f"<{n_rows}I", self.dev.read(self.out, 0, 4 * n_rows)))
