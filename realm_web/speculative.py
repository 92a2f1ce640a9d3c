"""Speculative decoding: what proposes the draft tokens the target verifies in its step.

Two drafters, both deterministic given a sequence's tokens and seed (so a seeded request gives the same output
however it is batched):
- `DraftModel`: a smaller model with the target's vocabulary, on the same device. Its KV pools mirror the
  target's blocks (same block manager and table: one allocation serves both). Each round it catches up on the
  sequence's new tokens, then drafts up to `draft_max` tokens one step at a time (all drafting sequences batched
  in each step), stopping a sequence early when its top probability falls below `p_min` (llama.cpp's
  `--draft-p-min`). With the target greedy it drafts greedily; with the target sampling it samples with the
  same chain and writes each q distribution to a GPU buffer the target's verification reads (`draft_greedy`
  drafts greedily instead: llama.cpp's way, a one-hot q).
- `NgramDrafter`: prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last
  `ngram_n` tokens (then shorter n-grams), for code, retrieval and edits. One-hot q.

The verification itself (accept / reject, residual draw, bonus token) is in the target's sampler
(shaders/sample.wgsl.j2), in the same submission as the target's step.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

from realm_web.config import Config
from realm_web.device import Buffer, Device
from realm_web.errors import RealmError
from realm_web.kv_cache import PagedKVCache
from realm_web.sampling import Entry, Sampler
from realm_web.sequence import Sequence
from realm_web.tokenizer import Tokenizer
from realm_web.transformer import Transformer, bucket

DRAFT_SEED = 0x5BD1E995  # the draft's RNG stream: the target's seed xor this (independent of the target's)
VOCAB_SLACK = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
CHECK_FROM = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID


class DraftError(RealmError):
    """A draft model cannot serve this target (vocabularies differ), or the speculative settings are invalid."""


def check_compatible(target: Tokenizer, draft: Tokenizer, target_vocab: int, draft_vocab: int) -> None:
    """llama.cpp's test (common_speculative_are_compatible): same tokenizer model, vocabulary sizes within 128,
    same special ids and BOS/EOS handling, identical token texts over the shared range."""
    if target.model != draft.model:
        raise DraftError(f"the draft's tokenizer is {draft.model!r}, the target's {target.model!r}")
    if abs(target_vocab - draft_vocab) > VOCAB_SLACK:
        raise DraftError(f"the draft's vocabulary has {draft_vocab} tokens, the target's {target_vocab} (at most "
                         f"{VOCAB_SLACK} apart)")  # fmt: skip
    for name in ("bos_id", "eos_id", "add_bos", "add_eos"):
        a, b = getattr(target, name), getattr(draft, name)
        if a != b:
            raise DraftError(f"the draft's {name} is {b}, the target's {a}")
    for i in range(CHECK_FROM, min(target_vocab, draft_vocab)):
        a, b = target.tokens[i], draft.tokens[i]
        if a != b:
            raise DraftError(f"token {i} is {b!r} in the draft, {a!r} in the target")


@dataclass(frozen=True)
class SpecConfig:
    mode: str  # "draft" | "ngram"
    draft_max: int = 16
    draft_min: int = 0
    p_min: float = 0.8
    ngram_n: int = 3
    draft_greedy: bool = False

    def __post_init__(self):
        if self.mode not in ("draft", "ngram"):
            raise DraftError(f"speculative must be 'draft' or 'ngram', got {self.mode!r}")
        if self.draft_max < 1 or self.draft_min < 0 or self.draft_min > self.draft_max:
            raise DraftError(f"need 1 <= draft_max and 0 <= draft_min <= draft_max: {self.draft_max}, {self.draft_min}")
        if not 0 <= self.p_min <= 1 or self.ngram_n < 1:
            raise DraftError(f"need 0 <= draft_p_min <= 1 and ngram_n >= 1: {self.p_min}, {self.ngram_n}")


NGRAM_MIN = 2  # shortest suffix looked up: a single token predicts too little (its drafts are mostly rejected)


def ngram_draft(tokens: Seq[int], n: int, k: int, n_min: int = NGRAM_MIN) -> list[int]:
    """`k` tokens that follow the latest earlier occurrence of the last `n` tokens (or of a shorter suffix, down
    to `n_min`), read on through the draft itself where they reach the end: a repeating stretch (a loop, a
    copied line) is drafted as far as `k`."""
    L = len(tokens)
    for size in range(min(n, L - 1), min(n_min, n) - 1, -1):
        tail = list(tokens[L - size :])
        for start in range(L - size - 1, -1, -1):
            if list(tokens[start : start + size]) == tail:
                ext = list(tokens)
                for i in range(k):
                    ext.append(ext[start + size + i])
                return ext[L:]
    return []


CHAIN = 4  # draft steps per submission (one read-back for all of them)


class DraftModel:
    """A draft model's transformer, KV pools and sampler, beside the target's. Draft steps go `CHAIN` to a
    submission: step j + 1 reads step j's sampled tokens on the GPU as its input ids (transformer and sampler
    lanes), and the host reads every step's tokens and confidence once, then applies `p_min` and the limits."""

    def __init__(self, dev: Device, cfg: Config, weights: dict, vectors: dict[str, Buffer], target_kv: PagedKVCache,
                 n_slots: int, max_batch: int, spec: SpecConfig, target_vocab: int,
                 is_eog: Callable[[int], bool] = lambda _: False):  # fmt: skip
        self.dev, self.cfg, self.spec, self.n_slots, self.target_vocab = dev, cfg, spec, n_slots, target_vocab
        self.is_eog = is_eog
        self.kv = PagedKVCache(dev, cfg.n_layer, cfg.kv_dim, target_kv.manager.n_blocks, target_kv.block_size,
                               n_slots, target_kv.max_blocks, beside=target_kv, kv_type=target_kv.kv_type)  # fmt: skip
        self.t = Transformer(dev, cfg, weights, vectors, self.kv, max_batch=max_batch)
        self.q_vocab = cfg.n_vocab
        # q of every draft token: [n_slots][draft_max][n_vocab] f32 (written by the draft's sampler)
        self.qbuf = dev.create_buffer(4 * n_slots * spec.draft_max * cfg.n_vocab, "draft.q")
        self.chain = min(CHAIN, spec.draft_max)
        self.sampler = Sampler(dev, self.t.logits, cfg.n_vocab, max_batch, n_slots, self.qbuf, cfg.n_vocab,
                               lanes=self.chain)  # fmt: skip
        for j in range(1, self.chain):  # transformer lane j reads sampler lane j - 1's tokens
            assert self.t.add_lane(self.sampler.tokens(j - 1)) == j

    def q_row(self, seq: Sequence) -> int:
        return seq.slot * self.spec.draft_max

    def propose(self, items: list[tuple[Sequence, int]]) -> None:
        """Draft up to k tokens for each (sequence, k) (k >= 1; the block table already holds their positions)
        into `seq.draft`."""
        spec, t = self.spec, self.t
        sps, limit = {}, {}
        for seq, k in items:
            sp = seq.sampling
            greedy = sp.temperature <= 0 or spec.draft_greedy
            sps[seq.id] = replace(sp, seed=(sp.seed ^ DRAFT_SEED) & 0xFFFFFFFF,
                                  temperature=0.0 if greedy else sp.temperature)  # fmt: skip
            seq.draft, seq.draft_q, limit[seq.id] = [], not greedy, k
            seq.draft_done = min(seq.draft_done, len(seq.token_ids) - 1)  # at least the last token is fed again
            self.sampler.reset_slot(seq.slot, sps[seq.id], seq.token_ids, seq.n_generated)
        # 1. catch up on the new tokens (the prompt, the last verified ones) until each has one left, whose row
        # drafts the first token in the first chained step
        todo = {seq.id: seq.token_ids[seq.draft_done :] for seq, _ in items}
        seqs = [seq for seq, _ in items]
        while sum(len(v) for v in todo.values()) > t.max_batch:
            ids, pos, slots = [], [], []
            for seq in seqs:
                take = todo[seq.id][: max(0, min(len(todo[seq.id]) - 1, t.max_batch - len(ids)))]
                ids += take
                pos += range(seq.draft_done, seq.draft_done + len(take))
                slots += [seq.slot] * len(take)
                seq.draft_done += len(take)
                todo[seq.id] = todo[seq.id][len(take) :]
            t.run(ids, pos, slots, [])
        # 2. chained draft steps, CHAIN to a submission, while sequences are confident and under their limits
        active, first = seqs, True
        while active:
            n_steps = min(self.chain, min(limit[s.id] - len(s.draft) for s in active))
            n, n_e = len(active), bucket(len(active))
            ids, pos, slots, out_rows = [], [], [], []
            for seq in active:
                toks = todo[seq.id] if first else [seq.draft[-1]]
                ids += toks
                pos += range(seq.draft_done, seq.draft_done + len(toks))
                slots += [seq.slot] * len(toks)
                out_rows.append(len(ids) - 1)
                seq.draft_done += len(toks)
            dispatches: list = []
            for j in range(n_steps):
                entries = [Entry(s.slot, sps[s.id], q_out=self._q_out(s, sps[s.id], len(s.draft) + j), p_top=True)
                           for s in active]  # fmt: skip
                self.sampler.set_rows(entries + [Entry(0xFFFFFFFF, None)] * (n_e - n), lane=j)
                if j == 0:
                    ds, _ = t.encode(ids, pos, slots, out_rows, lane=0)
                else:  # the tokens step j - 1 sampled, at the next positions
                    ds, _ = t.encode(None, [s.draft_done + j - 1 for s in active], [s.slot for s in active],
                                     list(range(n)), lane=j)  # fmt: skip
                dispatches += ds + [self.sampler.dispatch(n_e, lane=j)]
            self.dev.submit(dispatches)
            results = self.sampler.read_lanes([n] * n_steps)
            going = []
            for i, seq in enumerate(active):
                seq.draft_done += n_steps - 1  # steps 1.. fed the drafted tokens (kept or not)
                for j in range(n_steps):
                    got = results[j][i]
                    if got.p_top < spec.p_min or got.token >= self.target_vocab:
                        break  # not confident (or a token the target does not have): the draft ends here
                    seq.draft.append(got.token)
                    if not seq.ignore_eos and self.is_eog(got.token):
                        break  # the sequence ends here if the target agrees: nothing to draft past it
                else:
                    if len(seq.draft) < limit[seq.id]:
                        going.append(seq)
            active, first = going, False
        for seq in seqs:
            if len(seq.draft) < spec.draft_min:
                seq.draft = []

    def _q_out(self, seq: Sequence, sp, j: int) -> int | None:
        return self.q_row(seq) + j if sp.temperature > 0 and j < self.spec.draft_max else None
