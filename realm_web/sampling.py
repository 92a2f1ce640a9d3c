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


NO_SAMPLE = 0xFFFFFFFF  # slot of an entry whose logits are returned, not sampled
NONE = 0xFFFFFFFF
ENTRY_BYTES = 64  # one Entry of sample.wgsl.j2
STATE_WORDS = 4 + MAX_WINDOW  # u32 words per slot of the sampler state


@dataclass(frozen=True)
class Entry:
    """One `Entry` of sample.wgsl.j2: a sequence's rows of logits in a step and how to sample them. `row` None:
    the entry's index in the list given to `set_rows` (one row per entry). `n_draft` > 0: verify that many draft
    tokens (rows row..row + n_draft, `Sampler.set_drafts`), their q distributions from qbuf row `q_row` on (None:
    a deterministic draft). `q_out`: write the sampled row's distribution to that qbuf row (a draft's sampler).
    `p_top`: report the row's largest probability (greedy rows skip computing it otherwise)."""

    slot: int
    sp: SamplingParams | None
    row: int | None = None
    n_draft: int = 0
    q_row: int | None = None
    q_out: int | None = None
    p_top: bool = False  # report the row's top probability even when greedy (a draft's confidence)

    def pack(self, index: int) -> bytes:
        row = index if self.row is None else self.row
        tail = struct.pack("<8I", row, self.n_draft, _opt(self.q_row), _opt(self.q_out), int(self.p_top), 0, 0, 0)
        sp = self.sp
        if sp is None or self.slot == NO_SAMPLE:
            return struct.pack("<4I4f", NO_SAMPLE, 0, 0, 0, 0.0, 1.0, 0.0, 1.0) + tail
        ring = sp.repeat_last_n if sp.repeat_penalty != 1.0 else 0
        head = struct.pack("<4I4f", self.slot, sp.top_k, ring, sp.seed & 0xFFFFFFFF, sp.temperature, sp.top_p,
                           sp.min_p, sp.repeat_penalty)  # fmt: skip
        return head + tail


def _opt(v: int | None) -> int:
    return NONE if v is None else v


def sample_row(slot: int, sp: SamplingParams | None, **kw) -> Entry:
    """The entry that samples one row with `sp` in state slot `slot` (`sp=None`: the row is not sampled)."""
    return Entry(slot, sp, **kw)


def slot_state(sp: SamplingParams, history: list[int], n_drawn: int = 0) -> bytes:
    """A slot's sampler state: `n_drawn` tokens drawn so far (it keys the RNG: a sequence resumed after preemption
    continues its stream) and the penalty window holding the last tokens of `history`."""
    window = list(history)[-sp.repeat_last_n :] if sp.repeat_last_n else []
    next_slot = len(window) % max(1, sp.repeat_last_n)
    return struct.pack(f"<4I{len(window)}I", n_drawn, len(window), next_slot, 0, *window)


@dataclass(frozen=True)
class Sampled:
    token: int
    accepted: int  # draft tokens accepted before `token`
    p_top: float  # largest probability of the row `token` was drawn from


class Sampler:
    """Samples entries of `logits` ([n_rows, n_vocab] f32): each entry its own settings, its sequence's state slot
    and, for speculative decoding, its draft tokens to verify. Built once; dispatches per entry count are recorded
    on first use. `qbuf` ([rows][q_vocab] f32) holds draft distributions: a draft model's sampler writes them, the
    target's reads them (the same buffer, given to both). `lanes`: independent entry lists and outputs, so several
    sampling dispatches can run in one submission (a draft model's chained steps: lane j's tokens, `tokens(j)`,
    are step j + 1's input ids); every lane's results also land in one buffer, read back at once."""

    def __init__(self, dev: Device, logits: Buffer, n_vocab: int, max_rows: int, n_slots: int,
                 qbuf: Buffer | None = None, q_vocab: int = 0, lanes: int = 1):  # fmt: skip
        self.dev, self.logits, self.n_vocab, self.max_rows, self.lanes = dev, logits, n_vocab, max_rows, lanes
        q_vocab = q_vocab if qbuf is not None else 0
        self.params, self.rows, self.out = [], [], []
        for j in range(lanes):
            prm = dev.create_buffer(32, f"sample.params.{j}", uniform=True)
            dev.write(prm, struct.pack("<8I", n_vocab, STATE_WORDS, q_vocab, max_rows, 3 * max_rows * j, 0, 0, 0))
            self.params.append(prm)
            self.rows.append(dev.create_buffer(ENTRY_BYTES * max_rows, f"sample.entries.{j}"))
            self.out.append(dev.create_buffer(12 * max_rows, f"sample.out.{j}"))
        self.all = dev.create_buffer(12 * max_rows * lanes, "sample.all")
        self.state = dev.create_buffer(4 * STATE_WORDS * n_slots, "sample.state")
        self.dtok = dev.create_buffer(4 * max_rows, "sample.draft_tokens")
        self.qbuf = qbuf if qbuf is not None else dev.create_buffer(16, "sample.qbuf_unused")
        self._dispatches: dict[tuple[int, int], Dispatch] = {}

    def dispatch(self, n_entries: int, lane: int = 0) -> Dispatch:
        d = self._dispatches.get((n_entries, lane))
        if d is None:
            bufs = [self.params[lane], self.logits, self.rows[lane], self.state, self.out[lane], self.dtok, self.qbuf,
                    self.all]  # fmt: skip
            d = self.dev.dispatch("sample", wgsl("sample"), {}, bufs, (n_entries, 1, 1))
            self._dispatches[(n_entries, lane)] = d
        return d

    def tokens(self, lane: int) -> Buffer:
        """The buffer whose first words are lane `lane`'s sampled tokens, in entry order."""
        return self.out[lane]

    def reset_slot(self, slot: int, sp: SamplingParams, history: list[int] = (), n_drawn: int = 0) -> None:
        """Start (or resume) a sequence in `slot`: see `slot_state`."""
        self.dev.write(self.state, slot_state(sp, list(history), n_drawn), 4 * STATE_WORDS * slot)

    def set_rows(self, entries: list[Entry], lane: int = 0) -> None:
        """This step's entries, in order (an entry without `row` samples the row of its own index)."""
        self.dev.write(self.rows[lane], b"".join(e.pack(i) for i, e in enumerate(entries)))

    def set_drafts(self, tokens: list[int]) -> None:
        """The draft token each row verifies, by row (rows that verify nothing hold anything)."""
        if tokens:
            self.dev.write(self.dtok, struct.pack(f"<{len(tokens)}I", *tokens))

    def read_lanes(self, counts: list[int]) -> list[list[Sampled]]:
        """What the last dispatches gave, lane by lane (`counts[j]` entries of lane j), in one read."""
        m = self.max_rows
        raw = struct.unpack(f"<{3 * m * len(counts)}I", self.dev.read(self.all, 0, 12 * m * len(counts)))
        out = []
        for j, n in enumerate(counts):
            b = 3 * m * j
            p_top = struct.unpack(f"<{n}f", struct.pack(f"<{n}I", *raw[b + 2 * m : b + 2 * m + n]))
            out.append([Sampled(raw[b + i], raw[b + m + i], p_top[i]) for i in range(n)])
        return out

    def read_entries(self, n: int) -> list[Sampled]:
        """What the last dispatch of `n` entries (lane 0) gave (entries not sampled hold garbage)."""
        return self.read_lanes([n])[0]

    def read(self, n_rows: int) -> list[int]:
        """The ids the last dispatch of `n_rows` one-row entries sampled."""
        return [e.token for e in self.read_entries(n_rows)]
