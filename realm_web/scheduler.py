"""Which tokens run in the next step (nano-vllm's `scheduler.py`, vLLM v1's single token budget).

Every step takes one token from each decoding sequence, then chunks of prompts (admitted ones first, then new
ones from the waiting queue) under one per-step token budget, so a long prompt delays the running streams by
at most one chunk. A new sequence is admitted while a slot is free and the pool can hold its whole prompt (less
its cached prefix). When a decoding sequence needs a block and the pool is empty, the youngest sequence is
preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed later (its
prefix may still be cached by then).
"""

from __future__ import annotations

from collections import deque

from realm_web.kv_cache import BlockManager
from realm_web.sequence import Sequence, Status


class Scheduler:
    def __init__(self, blocks: BlockManager, n_slots: int, token_budget: int, prefix_caching: bool = True):
        self.blocks, self.token_budget, self.prefix_caching = blocks, token_budget, prefix_caching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the youngest
        self.free_slots = list(range(n_slots - 1, -1, -1))
        self.n_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], list[Sequence], list[Sequence]]:
        """This step's (sequence, tokens to compute) in row order, the sequences whose block table changed, and
        those admitted (or re-admitted after preemption) now."""
        budget, out, changed, admitted = self.token_budget, [], [], []
        for seq in [s for s in self.running if s.n_pending == 1]:  # decodes, oldest first
            if seq.status is not Status.RUNNING or budget == 0:
                continue
            del seq.draft[budget - 1 :]  # speculative decoding: the last token and its draft tokens
            n = 1 + len(seq.draft)
            while not self.blocks.can_grow(seq.table, seq.n_computed + n):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                if self.blocks.grow(seq.table, seq.n_computed + n):
                    changed.append(seq)
                out.append((seq, n))
                budget -= n
        for seq in [s for s in self.running if s.n_pending > 1]:  # admitted prompts, their blocks allocated
            if budget == 0:
                break
            n = min(seq.n_pending, budget)
            out.append((seq, n))
            budget -= n
        while self.waiting and budget > 0 and self.free_slots:
            seq = self.waiting[0]
            use_cache = self.prefix_caching and not seq.scoring
            if not self.blocks.can_allocate(seq.token_ids, seq.salt, use_cache):
                break
            self.waiting.popleft()
            seq.table, cached = self.blocks.allocate(seq.token_ids, seq.salt, use_cache)
            if seq.n_preempted == 0:
                seq.n_cached = cached
            seq.n_computed = seq.draft_done = cached  # a draft model's KV mirrors the target's blocks
            seq.slot = self.free_slots.pop()
            seq.status = Status.RUNNING
            self.running.append(seq)
            changed.append(seq)
            admitted.append(seq)
            n = min(seq.n_pending, budget)
            out.append((seq, n))
            budget -= n
        return out, changed, admitted

    def preempt(self, seq: Sequence) -> None:
        """Free `seq`'s blocks and slot; it waits at the front of the queue and is recomputed when admitted."""
        self._release(seq)
        seq.status = Status.WAITING
        seq.n_computed = seq.draft_done = 0
        seq.draft.clear()
        seq.n_preempted += 1
        self.n_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """A sequence ended (done, cancelled or failed): its blocks go back to the pool at once."""
        if seq.status is Status.RUNNING:
            self._release(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_table(seq.table)
        self.free_slots.append(seq.slot)
        seq.slot = -1
