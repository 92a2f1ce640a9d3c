"""A request as the engine sees it: its tokens, settings, status, blocks and what it has produced so far."""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from realm_web.kv_cache import BlockTable
from realm_web.sampling import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"  # not admitted (or preempted: its blocks were freed, it will be recomputed)
    RUNNING = "running"  # holds a slot and blocks; prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """`token_ids` grows as tokens are sampled; the KV of the first `n_computed` is in the cache. A step computes
    `token_ids[n_computed:]` (a prompt chunk, or the one token sampled last) and, once all are computed, samples
    the next token from the last row (or, for a scoring request, returns every row's logits)."""

    prompt_ids: list[int]
    sampling: SamplingParams | None  # None: a scoring request (teacher-forced logits of every prompt token)
    max_tokens: int
    emit: Callable[[Any], None]  # receives each Event; must not block (the engine loop calls it)
    stop: list[str] = field(default_factory=list)
    cache_salt: str | None = None
    ignore_eos: bool = False
    logprobs: bool = False  # hand each sampled token's logits row to the consumer (Event.logits)
    speculate: bool = True  # draft tokens for it when the model decodes speculatively
    lora: tuple[tuple[int, float], ...] = ()  # its adapters: (pool slot, scale) each
    lora_key: str = ""  # names exactly those adapters and scales: part of its prefix-cache salt
    release: Callable[[], None] | None = None  # called once when it finishes (gives back its adapters)
    id: int = field(default_factory=lambda: next(_ids))
    token_ids: list[int] = field(init=False)
    status: Status = Status.WAITING
    slot: int = -1
    table: BlockTable = field(default_factory=BlockTable)
    n_computed: int = 0
    n_cached: int = 0  # prompt tokens found in the prefix cache at (first) admission
    n_preempted: int = 0
    cancelled: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    text: Any = None  # the TextStream that turns its ids into text (set by the engine)
    # speculative decoding: this step's draft tokens (verified by the target in the step), whether they came with
    # q distributions (a sampling draft model) or are deterministic, and the draft model's KV (positions < this)
    draft: list[int] = field(default_factory=list)
    draft_q: bool = False
    draft_done: int = 0
    n_drafted: int = 0  # draft tokens the target verified, over the sequence's life
    n_accepted: int = 0  # and accepted
    n_rounds: int = 0  # steps that verified draft tokens
    draft_limit: int | None = None  # adaptive: the most draft tokens worth asking for next (None: draft_max)
    logits: list[bytes] = field(default_factory=list)  # scoring requests: f32 rows, step by step

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_ids)

    @property
    def salt(self) -> str | None:
        """What its KV blocks are hashed with: the tenant's cache_salt and, with adapters, which ones (a prefix
        computed through other adapters, or none, holds other keys and values)."""
        return f"{self.cache_salt or ''}\x00lora:{self.lora_key}" if self.lora else self.cache_salt

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_generated(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def n_pending(self) -> int:
        """Tokens the next steps must compute before the next sample."""
        return len(self.token_ids) - self.n_computed

    @property
    def scoring(self) -> bool:
        return self.sampling is None

    def usage(self) -> dict[str, Any]:
        ttft = (self.t_first - self.t_submit) if self.t_first is not None else None
        return {
            "prompt_tokens": self.n_prompt,
            "cached_prompt_tokens": self.n_cached,
            "completion_tokens": self.n_generated,
            "total_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
            "time_to_first_token_ms": None if ttft is None else ttft * 1e3,
            "preempted": self.n_preempted,
            "draft_tokens": self.n_drafted,
            "accepted_draft_tokens": self.n_accepted,
            "draft_rounds": self.n_rounds,
        }


@dataclass(frozen=True)
class Event:
    """What a sequence produced in one step: a text piece (maybe "") for a new token, and when it ended, why."""

    seq: Sequence
    token: int | None = None
    piece: str = ""
    finished: bool = False
    error: BaseException | None = None
    logits: bytes | None = None  # f32 [n_vocab] the token was sampled from (sequences with `logprobs`)
