"""The engine loop (nano-vllm's `llm_engine.py` + `model_runner.py`): schedule → run the step → sample every
row on the GPU → append the ids, finish sequences.

Requests arrive from any thread (`submit`, `cancel` only queue them); one driver runs the steps. Natively that
is a background thread started with the engine; under Pyodide (no threads) whoever waits for tokens drives
(`step`). Only the driver touches the scheduler, the block manager and the GPU, so a step needs no lock, and a
cancelled request's blocks go back to the pool at the first step boundary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from realm_web.device import Device
from realm_web.errors import DeviceLostError, RealmError
from realm_web.kv_cache import PagedKVCache
from realm_web.sampling import NO_SAMPLE, Entry, Sampler
from realm_web.scheduler import Scheduler
from realm_web.sequence import Event, Sequence, Status
from realm_web.speculative import DraftModel, SpecConfig, ngram_draft
from realm_web.tokenizer import Tokenizer
from realm_web.transformer import Transformer, bucket


class Engine:
    def __init__(
        self,
        dev: Device,
        transformer: Transformer,
        kv: PagedKVCache,
        tokenizer: Tokenizer,
        *,
        n_ctx: int,
        n_parallel: int,
        prefix_caching: bool = True,
        threaded: bool = True,
        speculative: SpecConfig | None = None,
        draft: DraftModel | None = None,
    ):
        """`speculative`: draft tokens for every sampling sequence, from `draft` (mode "draft") or n-gram lookup."""
        self.dev, self.t, self.kv, self.tokenizer, self.n_ctx = dev, transformer, kv, tokenizer, n_ctx
        self.n_vocab = transformer.cfg.n_vocab
        self.spec, self.draft = speculative, draft
        qbuf = draft.qbuf if draft is not None else None
        self.sampler = Sampler(dev, transformer.logits, self.n_vocab, transformer.max_batch, n_parallel, qbuf,
                               draft.q_vocab if draft is not None else 0)  # fmt: skip
        self.scheduler = Scheduler(kv.manager, n_parallel, transformer.max_batch, prefix_caching)
        self._incoming: deque[Sequence] = deque()
        self._cancels: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._step_lock = threading.Lock()  # held by the driver around each step (see exclusive())
        self._closed = False
        self.dead: BaseException | None = None  # set when the device is lost: every later request fails with it
        self.n_steps = 0
        self.n_drafted = self.n_accepted = 0  # draft tokens verified and accepted (speculative decoding)
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="realm-web-engine", daemon=True)
            self._thread.start()

    # -- intake (any thread) ------------------------------------------------------------------------------------
    def check(self, seq: Sequence) -> None:
        """Refuse what can never run: the KV pool must hold the whole request alone."""
        need = min(seq.n_prompt + max(seq.max_tokens, 1) - 1, self.n_ctx)
        blocks = self.kv.manager
        if blocks.blocks_for(need) > blocks.n_blocks:
            raise RealmError(
                f"the request needs {need} tokens of KV cache ({seq.n_prompt} prompt + {seq.max_tokens} new), more "
                f"than the whole pool holds ({blocks.n_blocks * blocks.block_size}); load with a larger "
                "kv_cache_tokens, or ask for fewer tokens"
            )

    def submit(self, seq: Sequence) -> Sequence:
        if self.dead is not None:
            raise type(self.dead)(str(self.dead))
        if self._closed:
            raise RealmError("the model is closed")
        self.check(seq)
        with self._cv:
            self._incoming.append(seq)
            self._cv.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq`; its blocks are freed at the next step boundary (at once when the engine is idle)."""
        with self._cv:
            if seq.status is not Status.FINISHED and not seq.cancelled:
                seq.cancelled = True
                self._cancels.append(seq)
                self._cv.notify()

    # -- the driver ---------------------------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._cv:
            incoming, self._incoming = list(self._incoming), deque()
            cancels, self._cancels = list(self._cancels), deque()
        for seq in incoming:
            if seq.cancelled:
                self._finish(seq, "abort")
            else:
                self.scheduler.add(seq)
        for seq in cancels:
            if seq.status is not Status.FINISHED:
                self._finish(seq, "abort")

    def pending(self) -> bool:
        return bool(self._incoming or self._cancels or self.scheduler.has_work())

    def step(self) -> bool:
        """Run one step if there is work; False when idle. Call from the driver only."""
        self._drain()
        if self.spec is not None:
            self._propose()
        sched, changed, admitted = self.scheduler.schedule()
        if not sched:
            if self.scheduler.has_work():  # cannot happen while check() holds: never spin silently
                raise RealmError("scheduler stalled: the waiting request does not fit in the KV pool")
            return False
        for seq in changed:
            self.kv.write_row(seq.slot, seq.table.blocks)
        for seq in admitted:
            if seq.sampling is not None:  # a resumed sequence continues its RNG stream and penalty window
                self.sampler.reset_slot(seq.slot, seq.sampling, seq.token_ids, seq.n_generated)
        ids, pos, slots, out_rows, entries, outs, dtok, lora = [], [], [], [], [], [], [], []
        for seq, n in sched:
            start, r0 = seq.n_computed, len(ids)
            lora += [seq.lora] * n
            k = len(seq.draft) if seq.n_pending == 1 else 0
            ids += seq.token_ids[start : start + n - k] + seq.draft[:k]
            pos += range(start, start + n)
            slots += [seq.slot] * n
            if seq.scoring:
                outs.append((seq, len(out_rows), n, -1))
                out_rows += range(r0, r0 + n)
                dtok += [0] * n
            elif start + n - k == len(seq.token_ids):
                # the last token (and its k draft tokens): k + 1 rows, sampled (and verified) by one entry
                q_row = self.draft.q_row(seq) if k and seq.draft_q and self.draft is not None else None
                outs.append((seq, len(out_rows), k + 1, len(entries)))
                entries.append(Entry(seq.slot, seq.sampling, row=len(out_rows), n_draft=k, q_row=q_row))
                out_rows += range(r0 + n - k - 1, r0 + n)
                dtok += seq.draft[:k] + [0]
        extra = []
        if entries:
            n_e = bucket(len(entries))
            self.sampler.set_rows(entries + [Entry(NO_SAMPLE, None)] * (n_e - len(entries)))
            if any(e.n_draft for e in entries):
                self.sampler.set_drafts(dtok)
            extra = [self.sampler.dispatch(n_e)]
        self.t.run(ids, pos, slots, out_rows, extra, lora if any(lora) else None)
        sampled = self.sampler.read_entries(len(entries)) if entries else []
        want_logits = any(s.scoring or s.logprobs for s, _, _, _ in outs)
        logits = self.t.read_logits(len(out_rows)) if want_logits else b""
        self.n_steps += 1
        blocks = self.scheduler.blocks
        for seq, n in sched:
            if seq.n_pending == 1 and seq.draft:  # verified below: only accepted tokens count as computed
                continue
            seq.n_computed += n
            blocks.commit(seq.table, seq.token_ids, seq.n_computed, seq.salt)
        now = time.perf_counter()
        row_bytes = 4 * self.n_vocab
        for seq, row, n, e in outs:
            if seq.scoring:
                seq.logits.append(logits[row * row_bytes : (row + n) * row_bytes])
                if seq.n_pending == 0:
                    self._finish(seq, "length")
                continue
            if seq.t_first is None:
                seq.t_first = now
            got = sampled[e]
            draft, seq.draft = seq.draft, []
            if draft:
                seq.n_drafted += len(draft)
                seq.n_accepted += got.accepted
                seq.n_rounds += 1
                self.n_drafted += len(draft)
                self.n_accepted += got.accepted
                seq.n_computed += 1 + got.accepted  # the last token and the accepted draft tokens
                # ask for twice as many after a fully accepted draft, one more than were kept after a rejection
                full = got.accepted == len(draft)
                seq.draft_limit = min(self.spec.draft_max, 2 * len(draft) if full else got.accepted + 1)
            # the draft model's KV holds what it was fed: valid up to the last accepted token
            seq.draft_done = min(seq.draft_done, len(seq.token_ids) + (got.accepted if draft else 0))
            new = draft[: got.accepted] + [got.token]
            for i, tok in enumerate(new):
                if seq.status is Status.FINISHED:
                    break
                r = row + i
                self._append(seq, tok, logits[r * row_bytes : (r + 1) * row_bytes] if seq.logprobs else None)
            if draft and seq.status is not Status.FINISHED:
                blocks.commit(seq.table, seq.token_ids, seq.n_computed, seq.salt)
                blocks.trim(seq.table, len(seq.token_ids))  # the blocks of rejected positions go back
        return True

    def _propose(self) -> None:
        """Draft tokens for every decoding sequence that samples, within its limits, the step's token budget and
        the blocks the pool can give without preempting anyone."""
        spec, blocks = self.spec, self.scheduler.blocks
        cands = [s for s in self.scheduler.running
                 if s.n_pending == 1 and not s.scoring and s.n_generated > 0 and s.speculate]  # fmt: skip
        if not cands:
            return
        per_seq = max(0, self.t.max_batch // 2 // len(cands) - 1)  # half the step's budget, the rest for prompts
        items = []
        for seq in cands:
            k = min(seq.draft_limit or spec.draft_max, per_seq, seq.max_tokens - seq.n_generated - 1,
                    self.n_ctx - len(seq.token_ids) - 1)  # fmt: skip
            if k < max(1, spec.draft_min):
                continue
            need = seq.n_computed + 1 + k
            if not blocks.can_grow(seq.table, need):
                k = min(k, len(seq.table.blocks) * blocks.block_size - seq.n_computed - 1)  # what its blocks hold
                if k < max(1, spec.draft_min):
                    continue
                need = seq.n_computed + 1 + k
            if blocks.grow(seq.table, need):
                self.kv.write_row(seq.slot, seq.table.blocks)
            items.append((seq, k))
        if spec.mode == "ngram":
            for seq, k in items:
                seq.draft, seq.draft_q = ngram_draft(seq.token_ids, spec.ngram_n, k), False
                if len(seq.draft) < spec.draft_min:
                    seq.draft = []
        elif items and self.draft is not None:
            self.draft.propose(items)
        for seq, _ in items:  # nothing drafted: its extra blocks go back
            if not seq.draft:
                blocks.trim(seq.table, len(seq.token_ids))

    def _append(self, seq: Sequence, tok: int, logits: bytes | None = None) -> None:
        if not seq.ignore_eos and self.tokenizer.is_eog(tok):
            self._finish(seq, "stop")
            return
        seq.token_ids.append(tok)
        piece = seq.text.feed(tok) if seq.text is not None else ""
        if seq.text is not None and seq.text.stopped:
            self._finish(seq, "stop", piece, tok, logits=logits)
        elif seq.n_generated >= seq.max_tokens or len(seq.token_ids) > self.n_ctx:
            self._finish(seq, "length", piece, tok, logits=logits)
        else:
            self._emit(seq, Event(seq, tok, piece, logits=logits))

    def _emit(self, seq: Sequence, ev: Event) -> None:
        """Hand `ev` to its consumer. A consumer that is gone (a closed event loop, a failing callback) cancels
        its own request, never the step the others share."""
        try:
            seq.emit(ev)
        except Exception:
            if not ev.finished and seq.status is not Status.FINISHED:
                self._finish(seq, "abort")

    def _finish(self, seq: Sequence, reason: str, piece: str = "", tok: int | None = None,
                error: BaseException | None = None, logits: bytes | None = None) -> None:  # fmt: skip
        self.scheduler.finish(seq)
        release, seq.release = seq.release, None
        if release is not None:  # its adapters' slots may be freed now
            release()
        seq.finish_reason = seq.finish_reason or reason
        seq.error = error
        if reason != "abort" and error is None and seq.text is not None:
            piece += seq.text.flush()
        self._emit(seq, Event(seq, tok, piece, finished=True, error=error, logits=logits))

    def fail_all(self, error: BaseException) -> None:
        """Every request ends with `error` (the device was lost, or a step failed)."""
        self._drain()
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self._finish(seq, "error", error=error)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self.pending():
                    self._cv.wait()
                if self._closed:
                    return
            try:
                with self._step_lock:
                    self.step()
            except Exception as e:  # a lost device ends the engine; anything else ends the requests in flight
                if isinstance(e, DeviceLostError):
                    self.dead = e
                self.fail_all(e)

    def run_until(self, done) -> None:
        """Drive steps from this thread until `done()` (the engine without a thread: Pyodide)."""
        while not done():
            try:
                with self._step_lock:
                    if not self.step():
                        return
            except Exception as e:
                if isinstance(e, DeviceLostError):
                    self.dead = e
                self.fail_all(e)
                return

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No step runs inside this block (the profiler drives the transformer by hand here); the engine must be
        idle: no request in flight."""
        with self._step_lock:
            if self.pending():
                raise RealmError("the engine is busy: profile or benchmark a model nobody else is using")
            yield

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- what /metrics and tests read ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int | float]:
        b = self.scheduler.blocks
        return {
            "waiting": len(self.scheduler.waiting) + len(self._incoming),
            "running": len(self.scheduler.running),
            "kv_blocks_total": b.n_blocks,
            "kv_blocks_free": b.n_free,
            "kv_blocks_used": b.n_blocks - b.n_free,
            "kv_blocks_cached": len(b.cached),
            "kv_cache_bytes": self.kv.bytes,
            "prefix_cache_hit_tokens": b.hits,
            "prefix_cache_query_tokens": b.queries,
            "preemptions": self.scheduler.n_preemptions,
            "steps": self.n_steps,
            "draft_tokens": self.n_drafted,
            "accepted_draft_tokens": self.n_accepted,
        }
