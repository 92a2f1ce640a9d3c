"""Speculative decoding keeps the output exact: greedy token for token equal to plain decoding (draft model and
n-gram lookup, alone and batched), sampled output distributed as the target's (chi-square tests against a
numpy reference of the sampling chain, at the kernel and end to end on the bundled target/draft pair), drafts
trimmed from the paged cache, and a draft with another vocabulary refused with the difference named."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from test_sampling import reference

import realm_web
from realm_web.cli import bundled_model
from realm_web.gguf import open_gguf
from realm_web.sampling import Entry, Sampler, SamplingParams, slot_state
from realm_web.speculative import DraftError, check_compatible, ngram_draft
from realm_web.tokenizer import Tokenizer

FIX = Path(__file__).resolve().parent / "fixtures"
TARGET = bundled_model()
DRAFT = str(Path(TARGET).with_name("realm-tiny-facts-draft.gguf"))
QUESTIONS = [f"What is the capital of {c}?" for c in ("France", "Japan", "Peru", "Kenya", "Italy", "Chile")]


def chi2_critical(df: int, z: float = 3.0902) -> float:
    """The chi-square quantile for a test at significance 0.001 (z = 3.0902 is the standard normal's 0.999
    quantile), by Wilson and Hilferty's cube-root approximation (within ~1 % for df >= 3)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic of `counts` against `probs`, bins with fewer than `min_expected` expected draws
    pooled into one; returns (statistic, degrees of freedom). A draw where the reference gives 0 fails."""
    n = counts.sum()
    excluded = np.flatnonzero(counts * (probs == 0))
    assert not excluded.size, f"drew tokens the target's chain excludes: {excluded}"
    exp = probs * n
    big = exp >= min_expected
    obs_b, exp_b = list(counts[big]), list(exp[big])
    small = ~big & (probs > 0)
    if small.any():
        obs_b.append(counts[small].sum())
        exp_b.append(exp[small].sum())
    obs, ex = np.array(obs_b, float), np.array(exp_b, float)
    return float(((obs - ex) ** 2 / ex).sum()), len(ex) - 1


# ---- n-gram lookup and the vocabulary check (no GPU) ------------------------------------------------------------


def test_ngram_draft():
    toks = [1, 2, 3, 4, 5, 9, 2, 3, 4]
    assert ngram_draft(toks, 3, 2) == [5, 9]  # "2 3 4" occurred before, followed by 5 9
    assert ngram_draft(toks, 3, 7) == [5, 9, 2, 3, 4, 5, 9]  # and on through the draft: the stretch repeats
    # no earlier "2 8": with n_min 1 the 1-gram "8", whose latest earlier occurrence (index 4) was followed by 2 8
    assert ngram_draft([7, 8, 1, 7, 8, 2, 8], 2, 3, n_min=1) == [2, 8, 2]
    assert ngram_draft([7, 8, 1, 7, 8, 2, 8], 2, 3) == []  # by default a single token is too weak a match
    assert ngram_draft([5, 6, 6, 6], 3, 4) == [6, 6, 6, 6]  # a loop
    assert ngram_draft([1, 2, 3], 3, 4) == []


def test_vocabularies_must_match():
    target = Tokenizer.from_gguf(open_gguf(TARGET))
    with pytest.raises(DraftError, match="tokenizer is 'gpt2', the target's 'llama'"):
        realm_web.load(TARGET, draft_model=str(FIX / "models" / "qwen2-Q8_0.gguf"))
    small = Tokenizer.from_gguf(open_gguf(str(FIX / "models" / "llama-spm-Q8_0.gguf")))
    with pytest.raises(DraftError, match="vocabulary has 512 tokens, the target's 1024"):
        check_compatible(target, small, 1024, 512)
    md = dict(open_gguf(TARGET).metadata)
    tokens = list(md["tokenizer.ggml.tokens"])
    tokens[700] = "▁zzz"
    md["tokenizer.ggml.tokens"] = tokens
    with pytest.raises(DraftError, match="token 700 is '▁zzz' in the draft"):
        check_compatible(target, Tokenizer(md), 1024, 1024)
    with pytest.raises(DraftError, match="needs draft_model"):
        realm_web.load(TARGET, speculative="draft")


# ---- the verification kernel against the sampling chain ----------------------------------------------------------

N_VOCAB = 97


@pytest.mark.parametrize("one_hot", [False, True], ids=["q-distribution", "deterministic-draft"])
def test_verification_draws_follow_the_target(dev, one_hot):
    """A 2-token draft verified against 3 rows of target logits: the first two output tokens (accepted drafts
    or the residual draw, then the next) follow the target's chain at each row, for drafts sampled from q (q
    written to the buffer) and for deterministic drafts (q one-hot on the argmax of q)."""
    rng = np.random.default_rng(5)
    sp = SamplingParams(temperature=1.2, top_k=30, top_p=0.95, min_p=0.01, seed=11)
    p_logits = rng.standard_normal((3, N_VOCAB)) * 1.5
    q_logits = p_logits + rng.standard_normal((3, N_VOCAB)) * 1.0  # a draft that mostly, not always, agrees
    p = [reference(p_logits[i], sp) for i in range(3)]
    q = [reference(q_logits[i], sp) for i in range(2)]
    logits = dev.create_buffer(4 * 3 * N_VOCAB, "t.logits")
    qbuf = dev.create_buffer(4 * 2 * N_VOCAB, "t.q")
    s = Sampler(dev, logits, N_VOCAB, max_rows=3, n_slots=1, qbuf=qbuf, q_vocab=N_VOCAB)
    if not one_hot:
        dev.write(qbuf, np.stack(q).astype(np.float32).tobytes())
    s.set_rows([Entry(0, sp, row=0, n_draft=2, q_row=None if one_hot else 0)])
    n = 3000
    firsts, seconds = [], []
    accepted_total = 0
    for i in range(n):
        d1 = int(np.argmax(q[0])) if one_hot else int(rng.choice(N_VOCAB, p=q[0]))
        d2 = int(np.argmax(q[1])) if one_hot else int(rng.choice(N_VOCAB, p=q[1]))
        dev.write(s.state, slot_state(sp, [], n_drawn=3 * i))  # a fresh position each time: fresh randomness
        dev.write(logits, p_logits.astype(np.float32).tobytes())
        s.set_drafts([d1, d2, 0])
        dev.submit([s.dispatch(1)])
        (got,) = s.read_entries(1)
        accepted_total += got.accepted
        toks = [d1, d2][: got.accepted] + [got.token]
        firsts.append(toks[0])
        if got.accepted:
            seconds.append(toks[1])
    stat, df = chi2(np.bincount(firsts, minlength=N_VOCAB), p[0])
    assert stat < chi2_critical(df), f"first token: chi2 {stat:.1f} > {chi2_critical(df):.1f} (df {df})"
    # the token after an accepted d1 (an accepted d2, the residual draw, or the bonus): distributed as row 1, the
    # target's next-token distribution (here the same after any first token)
    assert len(seconds) > (80 if one_hot else 500)  # a one-hot draft is accepted with p(d) only
    stat, df = chi2(np.bincount(seconds, minlength=N_VOCAB), p[1])
    assert stat < chi2_critical(df), f"second token: chi2 {stat:.1f} > {chi2_critical(df):.1f} (df {df})"
    assert 0 < accepted_total < 2 * n  # both acceptance and rejection happened


def test_greedy_verification_accepts_the_argmax_chain(dev):
    rng = np.random.default_rng(1)
    sp = SamplingParams(temperature=0)
    p_logits = rng.standard_normal((4, N_VOCAB))
    best = [int(np.argmax(r)) for r in p_logits]
    logits = dev.create_buffer(4 * 4 * N_VOCAB, "g.logits")
    s = Sampler(dev, logits, N_VOCAB, max_rows=4, n_slots=1)
    other = 5 if best[1] != 5 else 6
    cases = [
        ([best[0], best[1], best[2]], (3, best[3])),  # all accepted: the bonus token from the last row
        ([best[0], other, 0], (1, best[1])),  # the second differs: the target's own argmax replaces it
        ([(best[0] + 1) % N_VOCAB, 1, 2], (0, best[0])),  # the first differs
    ]
    for drafts, want in cases:
        s.reset_slot(0, sp)
        dev.write(logits, p_logits.astype(np.float32).tobytes())
        s.set_rows([Entry(0, sp, row=0, n_draft=3)])
        s.set_drafts(drafts + [0])
        dev.submit([s.dispatch(1)])
        (got,) = s.read_entries(1)
        assert (got.accepted, got.token) == want


# ---- end to end on the bundled target and its draft ------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(dev):
    return realm_web.load(TARGET, n_parallel=6)


@pytest.fixture(scope="module")
def drafted(dev):
    return realm_web.load(TARGET, n_parallel=6, draft_model=DRAFT, draft_max=8)


@pytest.fixture(scope="module")
def lookup(dev):
    return realm_web.load(TARGET, n_parallel=6, speculative="ngram", draft_max=8)


def _greedy(model, ids, n=48):
    return list(model.generate(ids, max_tokens=n, temperature=0, ignore_eos=True).ids())


@pytest.mark.parametrize("which", ["drafted", "lookup"])
def test_greedy_equals_plain_decoding(request, plain, which):
    """Token for token, each prompt alone and all six decoded together (each sequence drafts and verifies
    within the shared steps)."""
    model = request.getfixturevalue(which)
    prompts = [plain.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    want = [_greedy(plain, ids) for ids in prompts]
    before = model.stats()
    assert [_greedy(model, ids) for ids in prompts] == want
    results = [None] * len(prompts)

    def run(i):
        results[i] = _greedy(model, prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == want
    s = model.stats()
    assert s["accepted_draft_tokens"] - before["accepted_draft_tokens"] > 0  # drafts really were used
    assert s["kv_blocks_used"] == 0 and s["running"] == 0  # rejected positions' blocks all came back


def test_drafts_respect_max_tokens_stop_and_eos(plain, drafted):
    ids = plain.chat_ids([{"role": "user", "content": QUESTIONS[0]}])
    for n in (1, 2, 3, 7):
        assert _greedy(drafted, ids, n) == _greedy(plain, ids, n)
    full = "".join(plain.generate(ids, max_tokens=40, temperature=0))
    g = drafted.generate(ids, max_tokens=40, temperature=0)
    pieces = list(g)
    assert "".join(pieces) == full and len(pieces) > 1  # streamed in pieces, ended at the end of turn like plain
    assert g.usage["finish_reason"] == "stop" and g.usage["accepted_draft_tokens"] > 0
    cut = "".join(drafted.generate(ids, max_tokens=40, temperature=0, stop=["Paris"]))
    assert cut == full[: full.index("Paris")]


def test_sampled_output_is_reproducible_and_batch_invariant(drafted):
    ids = drafted.chat_ids([{"role": "user", "content": QUESTIONS[1]}])
    opts = {"max_tokens": 24, "temperature": 0.9, "ignore_eos": True}
    alone = [list(drafted.generate(ids, seed=s, **opts).ids()) for s in range(4)]
    gens = [drafted.generate(ids, seed=s, **opts) for s in range(4)]  # submitted together
    assert [list(g.ids()) for g in gens] == alone


def _first_tokens(model, ids, n, sp_opts, **extra):
    """Tokens 2 and 3 of n seeded generations (token 1 comes from the prefill; 2 and 3 from the first
    speculative step: a verified draft token or the residual draw, then the next)."""
    gens = []
    out = []
    for s in range(n):
        gens.append(model.generate(ids, max_tokens=3, seed=s, ignore_eos=True, **sp_opts, **extra))
        if len(gens) == 24:
            out += [list(g.ids()) for g in gens]
            gens = []
    out += [list(g.ids()) for g in gens]
    return out


@pytest.mark.parametrize("greedy_draft", [False, True], ids=["sampled-draft", "greedy-draft"])
def test_sampled_tokens_follow_the_target_end_to_end(dev, plain, greedy_draft):
    """3000 seeded generations through the engine with the bundled draft: the token after " Paris" follows the
    target's distribution (its logits through a numpy reference of the chain), whether the draft samples with q
    or drafts greedily (llama.cpp's way)."""
    model = realm_web.load(TARGET, n_parallel=24, draft_model=DRAFT, draft_max=2, draft_p_min=0.0,
                           draft_greedy=greedy_draft)  # fmt: skip
    sp_opts = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    ids = plain.tokenize("The capital of France is")
    paris = list(plain.generate(ids, max_tokens=1, temperature=0).ids())  # " Paris", the likely first token
    assert plain.detokenize(paris).strip() == "Paris"
    draws = _first_tokens(model, ids, 3000, sp_opts)
    s = model.stats()
    model.close()
    seconds = [d[1] for d in draws if d[0] == paris[0]]
    assert len(seconds) > 2000
    sp = SamplingParams(**sp_opts)
    p = reference(plain.logits(ids + paris)[-1], sp)
    stat, df = chi2(np.bincount(seconds, minlength=len(p)), p)
    assert stat < chi2_critical(df), f"chi2 {stat:.1f} > {chi2_critical(df):.1f} (df {df})"
    assert 0 < s["accepted_draft_tokens"] < s["draft_tokens"]
    print(f"\nacceptance ({'greedy' if greedy_draft else 'sampled'} draft, T=1.5): "
          f"{s['accepted_draft_tokens'] / s['draft_tokens']:.1%} of {s['draft_tokens']}")  # fmt: skip


def test_chat_agenerate_and_the_server_speculate_too(dev, plain, drafted):
    import asyncio

    import httpx

    from realm_web.cli import bundled_draft
    from realm_web.server import make_server

    msgs = [{"role": "user", "content": QUESTIONS[2]}]
    want = plain.chat(msgs, stream=False, max_tokens=24, temperature=0)
    assert drafted.chat(msgs, stream=False, max_tokens=24, temperature=0) == want

    async def agen():
        return "".join([p async for p in drafted.achat(msgs, max_tokens=24, temperature=0)])

    assert asyncio.run(agen()) == want
    srv = make_server("127.0.0.1", 0, files=None, draft_model=bundled_draft(), draft_max=8).start()
    try:
        assert srv.wait_ready(60)
        body = {"model": "realm-tiny-facts", "messages": msgs, "max_tokens": 24, "temperature": 0}
        r = httpx.post(srv.url + "v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want
        assert r.json()["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    finally:
        srv.shutdown()


@pytest.mark.parametrize("opts", [{"draft_model": DRAFT}, {"speculative": "ngram"}], ids=["drafted", "lookup"])
def test_preemption_and_prefix_hits_keep_greedy_exact(plain, opts):
    """A pool of 7 blocks for 4 sequences of ~60 tokens: drafting sequences are preempted (their drafts and
    draft KV dropped) and recomputed over cached prefixes, and each still gives the plain greedy tokens."""
    model = realm_web.load(TARGET, n_parallel=4, kv_cache_tokens=112, draft_max=8, **opts)
    prompts = [plain.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
    want = [_greedy(plain, ids, 40) for ids in prompts]
    got = [None] * 4

    def run(i):
        got[i] = _greedy(model, prompts[i], 40)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = model.stats()
    model.close()
    assert got == want
    assert s["preemptions"] > 0 and s["accepted_draft_tokens"] > 0
    assert s["kv_blocks_used"] == 0
