"""The batched engine natively, proven by equality: what N sequences produce together is exactly what each
produces alone (greedy and seeded sampling, threads and asyncio), whatever is cancelled or preempted beside
them; prefix caching reuses blocks without changing a bit; the KV pool is whole again after every request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

import realm_web
from realm_web.errors import RealmError

BUNDLED = Path(realm_web.__file__).parent / "models" / "realm-tiny-facts.gguf"
FIX = Path(__file__).parent / "fixtures" / "models"
CAPITALS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Kenya"]
PROMPTS = [f"The capital of {c} is" for c in CAPITALS]
SAMPLED = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@pytest.fixture(scope="module")
def m(dev):
    model = realm_web.load(str(BUNDLED), device=dev, n_ctx=256, n_parallel=8)
    yield model
    model.close()


def whole(model) -> None:
    """Every block is back in the free queue (cached ones included) and nothing is queued."""
    s, c = model.stats(), model.config
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0, s
    elem = {"f16": 2, "f32": 4}[model.kv.kv_type]
    assert s["kv_cache_bytes"] == 2 * c.n_layer * s["kv_blocks_total"] * model.kv.block_size * c.kv_dim * elem


def solo(model, prompt, **opts) -> str:
    return "".join(model.generate(prompt, **opts))


def test_batch_equals_solo_greedy(m):
    steps0 = m.stats()["steps"]
    together = m.generate_batch(PROMPTS, max_tokens=20, temperature=0, ignore_eos=True)
    batched_steps = m.stats()["steps"] - steps0
    alone = [solo(m, p, max_tokens=20, temperature=0, ignore_eos=True) for p in PROMPTS]
    assert together == alone
    assert batched_steps < 25  # decoded together: about 20 steps for all 8, not 8 × 20
    whole(m)


def test_threads_with_seeded_sampling_equal_solo(m):
    """Each thread's own seed and settings; several threads at once are decoded in shared steps."""
    alone = [solo(m, p, max_tokens=16, seed=i, **SAMPLED) for i, p in enumerate(PROMPTS[:6])]
    out = [None] * 6

    def run(i):
        out[i] = solo(m, PROMPTS[i], max_tokens=16, seed=i, **SAMPLED)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == alone
    assert len(set(alone)) > 1  # the seeds really differ
    whole(m)


def test_asyncio_tasks_are_decoded_together(m):
    async def one(i):
        return "".join([p async for p in m.agenerate(PROMPTS[i], max_tokens=12, seed=100 + i, **SAMPLED)])

    async def main():
        return await asyncio.gather(*(one(i) for i in range(5)))

    together = asyncio.run(main())
    assert together == [solo(m, PROMPTS[i], max_tokens=12, seed=100 + i, **SAMPLED) for i in range(5)]
    whole(m)


def test_achat_matches_chat(m):
    msgs = [{"role": "user", "content": "What is the capital of Italy?"}]

    async def main():
        return "".join([p async for p in m.achat(msgs, max_tokens=16, temperature=0)])

    assert asyncio.run(main()) == m.chat(msgs, stream=False, max_tokens=16, temperature=0)


def test_cancelled_stream_changes_no_other_and_frees_its_blocks(m):
    alone = [solo(m, p, max_tokens=24, temperature=0, ignore_eos=True) for p in PROMPTS[:3]]
    streams = [m.generate(p, max_tokens=24, temperature=0, ignore_eos=True) for p in PROMPTS[:3]]
    got = ["", "", ""]
    for _ in range(3):
        for i, s in enumerate(streams):
            got[i] += next(s)
    streams[1].close()  # cancelled mid-stream
    got[0] += "".join(streams[0])
    got[2] += "".join(streams[2])
    assert got[0] == alone[0] and got[2] == alone[2] and alone[1].startswith(got[1])
    assert streams[1].usage["finish_reason"] == "length" and streams[1].seq.finish_reason == "abort"
    whole(m)


def test_preemption_recomputes_and_changes_nothing(dev):
    """A pool of 6 blocks of 16 for 4 streams growing to 40 tokens each: the youngest are preempted and
    recomputed later; every output still equals its solo run (greedy and seeded)."""
    model = realm_web.load(str(BUNDLED), device=dev, n_ctx=128, n_parallel=4, kv_cache_tokens=96)
    try:
        opts = [dict(temperature=0), dict(seed=5, **SAMPLED), dict(temperature=0), dict(seed=9, **SAMPLED)]
        alone = [solo(model, PROMPTS[i], max_tokens=34, ignore_eos=True, **o) for i, o in enumerate(opts)]
        streams = [model.generate(PROMPTS[i], max_tokens=34, ignore_eos=True, **o) for i, o in enumerate(opts)]
        assert ["".join(s) for s in streams] == alone
        assert model.stats()["preemptions"] > 0 and any(s.usage["preempted"] for s in streams)
        whole(model)
    finally:
        model.close()


def test_prefix_cache_hit_gives_the_same_output(m):
    prompt = " ".join(PROMPTS) + " and the capital of France is"  # well over two blocks
    first = m.generate(prompt, max_tokens=10, temperature=0)
    a = "".join(first)
    second = m.generate(prompt, max_tokens=10, temperature=0)
    b = "".join(second)
    n = len(m.tokenize(prompt))
    assert a == b and first.usage["cached_prompt_tokens"] == 0
    assert second.usage["cached_prompt_tokens"] == (n - 1) // 16 * 16 > 0
    salted = m.generate(prompt, max_tokens=10, temperature=0, cache_salt="tenant-b")
    assert "".join(salted) == a and salted.usage["cached_prompt_tokens"] == 0
    whole(m)


def test_logits_beside_generation_equal_logits_alone(m):
    ids = m.tokenize(" ".join(PROMPTS))
    alone = m.logits(ids)
    streams = [m.generate(p, max_tokens=30, temperature=0, ignore_eos=True) for p in PROMPTS[:4]]
    next(streams[0])
    together = m.logits(ids)
    for s in streams:
        "".join(s)
    np.testing.assert_array_equal(together, alone)
    whole(m)


def test_session_keeps_its_history_cached_and_is_isolated(m):
    a, b = m.session(max_tokens=16, temperature=0), m.session(max_tokens=16, temperature=0)
    a1 = a.chat("What is the capital of France?")
    b1 = b.chat("What is the capital of Japan?")
    a2 = a.chat("What is the capital of Germany?")
    assert a.last_usage["cached_prompt_tokens"] >= 16  # the first turn's blocks were found
    b2 = b.chat("What is the capital of Spain?")
    fresh = m.session(max_tokens=16, temperature=0, cache_salt="fresh")
    assert [fresh.chat("What is the capital of France?"), fresh.chat("What is the capital of Germany?")] == [a1, a2]
    assert fresh.last_usage["cached_prompt_tokens"] >= 16
    assert [m["role"] for m in a.messages] == ["user", "assistant"] * 2 and a.messages[3]["content"] == a2
    assert b.messages[1]["content"] == b1 and b.messages[3]["content"] == b2
    whole(m)


def test_request_larger_than_the_pool_is_a_clear_error(dev):
    model = realm_web.load(str(BUNDLED), device=dev, n_ctx=256, n_parallel=2, kv_cache_tokens=32)
    try:
        with pytest.raises(RealmError, match="more than the whole pool holds"):
            model.generate("word " * 40, max_tokens=8)
        assert solo(model, "The capital of France is", max_tokens=8, temperature=0)  # still serving
        whole(model)
    finally:
        model.close()


@pytest.mark.parametrize("name", ["qwen2-Q8_0.gguf", "llama-spm-Q4_K.gguf"])
def test_batch_equals_solo_on_other_models(dev, name):
    """A NeoX-RoPE model with biases and a K-quant Llama, with a step budget small enough to chunk prompts."""
    model = realm_web.load(str(FIX / name), device=dev, n_ctx=128, n_parallel=4, max_batch=8)
    try:
        prompts = [[1] + [(7 * i + 3 * j) % 300 + 2 for i in range(5 + 6 * j)] for j in range(4)]
        together = model.generate_batch(prompts, max_tokens=10, temperature=0, ignore_eos=True)
        assert together == [solo(model, p, max_tokens=10, temperature=0, ignore_eos=True) for p in prompts]
        whole(model)
    finally:
        model.close()


def test_a_failed_step_ends_the_requests_in_flight_and_frees_the_pool(m):
    """A step that raises (here: injected once) fails every request in flight with that error; the blocks all
    come back and the engine keeps serving."""
    streams = [m.generate(p, max_tokens=30, temperature=0, ignore_eos=True) for p in PROMPTS[:3]]
    next(streams[0])
    real, calls = m.engine.t.run, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected GPU failure")
        return real(*a, **k)

    m.engine.t.run = failing
    try:
        for s in streams:
            with pytest.raises(RuntimeError, match="injected GPU failure"):
                "".join(s)
    finally:
        m.engine.t.run = real
    whole(m)
    assert solo(m, PROMPTS[0], max_tokens=4, temperature=0).startswith(" Paris")


def test_a_consumer_that_fails_cancels_only_its_own_request(m):
    """A callback that raises (e.g. an asyncio loop that closed) ends its request, not the shared step."""
    from realm_web.sampling import SamplingParams
    from realm_web.sequence import Sequence

    got = []

    def broken(ev):
        got.append(ev)
        if len(got) == 2:
            raise RuntimeError("consumer gone")

    alone = solo(m, PROMPTS[1], max_tokens=20, temperature=0, ignore_eos=True)
    seq = Sequence(m.tokenize(PROMPTS[0]), SamplingParams(temperature=0), 20, broken, ignore_eos=True)
    other = m.generate(PROMPTS[1], max_tokens=20, temperature=0, ignore_eos=True)
    m.engine.submit(seq)
    assert "".join(other) == alone
    assert seq.finish_reason == "abort" and got[-1].finished
    whole(m)


def test_generate_ids_are_the_ids_of_the_text(m):
    from realm_web.sampling import SamplingParams

    ids = list(m.generate_ids(m.tokenize(PROMPTS[2]), 12, SamplingParams(temperature=0)))
    assert m.last_usage["completion_tokens"] == len(ids) > 0
    text = solo(m, PROMPTS[2], max_tokens=12, temperature=0)
    assert m.tokenizer.detokenize(ids).strip() == text.strip() and text.startswith(" ")
