"""The paged KV cache's bookkeeping and the scheduler, in pure Python: reference counts, prefix reuse by chained
block keys, tenant salts, LRU eviction, chunked prefill under a token budget, preemption of the youngest."""

from __future__ import annotations

import pytest

from realm_web.kv_cache import BlockManager, block_hash
from realm_web.sampling import SamplingParams
from realm_web.scheduler import Scheduler
from realm_web.sequence import Sequence, Status

BS = 4


def toks(n: int, start: int = 100) -> list[int]:
    return list(range(start, start + n))


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BS)
    t1, cached = bm.allocate(toks(10))
    assert cached == 0 and len(t1.blocks) == 3 and bm.n_free == 5
    t2, _ = bm.allocate(toks(5, 500))
    assert len(set(t1.blocks) | set(t2.blocks)) == 5 and bm.n_free == 3
    bm.free_table(t1)
    bm.free_table(t2)
    assert bm.n_free == 8 and all(b.ref_count == 0 for b in bm.blocks)


def test_prefix_is_shared_after_commit_and_counted():
    bm = BlockManager(16, BS)
    prompt = toks(11)
    a, _ = bm.allocate(prompt)
    bm.commit(a, prompt, len(prompt))  # 11 computed tokens fill 2 blocks
    assert a.n_hashed == 2 and len(bm.cached) == 2
    b, cached = bm.allocate(prompt[:9] + [7, 7, 7])
    assert cached == 8 and b.blocks[:2] == a.blocks[:2] and b.blocks[2] != a.blocks[2]
    assert [bm.blocks[i].ref_count for i in a.blocks[:2]] == [2, 2]
    bm.free_table(a)
    assert bm.n_free == 16 - 3  # b still holds the two shared blocks and its own third
    assert bm.hits == 8 and bm.queries == 23


def test_block_holding_the_last_token_is_never_reused():
    """Its logits must be computed, so a prompt of exactly two cached blocks reuses only the first."""
    bm = BlockManager(8, BS)
    prompt = toks(8)
    a, _ = bm.allocate(prompt)
    bm.commit(a, prompt, 8)
    _, cached = bm.allocate(prompt)
    assert cached == 4


def test_keys_chain_over_the_whole_prefix():
    """A block's key depends on every token before it: a different first block means no hit later on."""
    assert block_hash(None, [1, 2, 3, 4]) != block_hash(block_hash(None, [9, 9, 9, 9]), [1, 2, 3, 4])
    bm = BlockManager(8, BS)
    prompt = toks(9)
    a, _ = bm.allocate(prompt)
    bm.commit(a, prompt, 9)
    _, cached = bm.allocate([0] + prompt[1:])
    assert cached == 0


def test_cache_salt_isolates_tenants():
    bm = BlockManager(8, BS)
    prompt = toks(9)
    a, _ = bm.allocate(prompt, salt="alice")
    bm.commit(a, prompt, 9, salt="alice")
    for salt, want in (("bob", 0), (None, 0), ("alice", 8)):
        t, cached = bm.allocate(prompt, salt=salt)
        assert cached == want
        bm.free_table(t)


def test_lru_evicts_oldest_cached_and_uncached_first():
    bm = BlockManager(4, BS)
    p1, p2 = toks(5, 0), toks(5, 50)
    a, _ = bm.allocate(p1)
    bm.commit(a, p1, 5)  # block a[0] cached, a[1] not
    bm.free_table(a)
    b, _ = bm.allocate(p2)
    bm.commit(b, p2, 5)
    bm.free_table(b)
    assert len(bm.cached) == 2 and bm.n_free == 4
    c, _ = bm.allocate(toks(6, 900))  # 2 blocks: the two uncached ones go first, both prefixes survive
    assert len(bm.cached) == 2
    again, cached = bm.allocate(p1)  # a's block reused; the fresh one is b's cached block, the last free: evicted
    assert cached == 4 and len(bm.cached) == 1
    bm.free_table(again)
    bm.free_table(c)
    d, _ = bm.allocate(toks(16, 700))  # everything: the cached blocks are evicted, the table is whole
    assert len(d.blocks) == 4 and not bm.cached


def test_can_allocate_counts_idle_hits_as_taken():
    bm = BlockManager(3, BS)
    p = toks(9)
    a, _ = bm.allocate(p)
    bm.commit(a, p, 9)
    bm.free_table(a)
    assert bm.can_allocate(p)  # 2 cached blocks reused + 1 fresh = the 3 blocks
    assert not bm.can_allocate(toks(13))


def seq(n_prompt: int, start: int = 0, max_tokens: int = 8) -> Sequence:
    return Sequence(toks(n_prompt, start), SamplingParams(temperature=0), max_tokens, lambda ev: None)


def run_step(sch: Scheduler, sched) -> None:
    """What the engine does after a step: tokens computed, one sampled for each sequence that finished its
    pending tokens."""
    for s, n in sched:
        s.n_computed += n
        if s.n_pending == 0:
            s.token_ids.append(1)


def test_chunked_prefill_never_stalls_a_decoding_sequence():
    sch = Scheduler(BlockManager(64, BS), n_slots=4, token_budget=8)
    a = seq(3)
    sch.add(a)
    sched, _, admitted = sch.schedule()
    assert sched == [(a, 3)] and admitted == [a]
    run_step(sch, sched)
    long = seq(30, 1000)
    sch.add(long)
    chunks = []
    while long.n_pending > 1 or long.n_computed == 0:
        sched, _, _ = sch.schedule()
        assert (a, 1) in sched and sched[0] == (a, 1)  # the running stream gets its token every step
        assert sum(n for _, n in sched) <= 8
        chunks += [n for s, n in sched if s is long]
        run_step(sch, sched)
    assert chunks == [7, 7, 7, 7, 2]


def test_out_of_blocks_preempts_the_youngest_and_frees_everything():
    bm = BlockManager(5, BS)
    sch = Scheduler(bm, n_slots=3, token_budget=16)
    old, young = seq(8), seq(8, 500)
    sch.add(old)
    sch.add(young)
    sched, _, _ = sch.schedule()
    assert [s for s, _ in sched] == [old, young] and bm.n_free == 1
    run_step(sch, sched)  # both at 9 tokens: computing the 9th needs a third block each
    sched, _, _ = sch.schedule()
    assert sched == [(old, 1)] and young.status is Status.WAITING and young.n_preempted == 1
    assert sch.waiting[0] is young and young.n_computed == 0 and young.slot == -1
    for s in (old, young):
        sch.finish(s)
    assert bm.n_free == 5 and not sch.running and not sch.waiting and sorted(sch.free_slots) == [0, 1, 2]


@pytest.mark.parametrize("salt", [None, "t"])
def test_admission_reuses_the_cached_prefix(salt):
    bm = BlockManager(32, BS)
    sch = Scheduler(bm, n_slots=2, token_budget=64)
    a = seq(13)
    a.cache_salt = salt
    sch.add(a)
    sched, _, _ = sch.schedule()
    run_step(sch, sched)
    bm.commit(a.table, a.token_ids, a.n_computed, salt)
    b = seq(13)
    b.cache_salt = salt
    sch.add(b)
    sched, _, _ = sch.schedule()
    assert (b, 1) in sched and b.n_cached == 12 and b.table.blocks[:3] == a.table.blocks[:3]
