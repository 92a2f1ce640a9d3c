"""What every engine's measurement shares: the prompt, the result's fields, peak memory, and `Unavailable`.

A measurement is a dict with the keys of `FIELDS` (plus free-form ones such as "adapter" or "notes"). All engines
get the same prompt token ids (`bench_prompt`), prefill it (which yields the first new token), then run `n_gen`
one-token decode steps, greedy, EOS ignored. Times: load_s (file to ready), ttft_s (prompt submitted to the first
new token id on the host), prefill_tok_s (prompt tokens ÷ the time to first token), decode_tok_s (`n_gen`
one-token steps after the first token ÷ their time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "build" / "bench-results"

FIELDS = ("engine", "load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "n_prompt", "n_gen")


def save_results(name: str, results: object) -> Path:
    """Write a benchmark's raw results to build/bench-results/NAME-<date>-<time>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def run_child(script: str, args: list[str], timeout: float = 3600, tail: int = 3) -> dict | list:
    """Run `python script args...` (a benchmark's own child mode) from the repo root; its last stdout line is
    JSON. A failure is {"error": the last `tail` lines of its output}."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                       cwd=RESULTS.parent.parent)  # fmt: skip
    if p.returncode != 0:
        return {"error": " | ".join((p.stderr or p.stdout).strip().splitlines()[-tail:])}
    return json.loads(p.stdout.strip().splitlines()[-1])


class Unavailable(Exception):
    """A peer that cannot run here; the message says why (it is printed in the table, never skipped)."""


def bench_prompt(n_prompt: int, n_vocab: int, bos: int | None = 1) -> list[int]:
    """The prompt every engine gets: BOS then a fixed spread of ordinary token ids (same as realm-web bench)."""
    return [bos if bos is not None else 0] + [(7 * i + 11) % n_vocab for i in range(n_prompt - 1)]


def bench_text(n_tokens: int, tokenize: Callable[[str], Sequence[int]]) -> str:
    """For engines that take only text: a text that `tokenize` (the model's tokenizer, BOS added as the engine adds
    it) turns into exactly `n_tokens` ids. Lowercase three-letter words in a fixed spread, added in runs while the
    count stays within `n_tokens`; near the end one at a time, a word that overshoots shortened to its first letter
    or skipped."""
    words: list[str] = []
    have, i, run = len(tokenize("")), 0, n_tokens
    while have < n_tokens:
        if i >= 26**3:
            raise ValueError(f"no text of exactly {n_tokens} tokens found")
        k = min(run, n_tokens - have)
        new = ["".join(chr(97 + (7 * j + 11) % 26**3 // 26**p % 26) for p in (2, 1, 0)) for j in range(i, i + k)]
        n = len(tokenize(" ".join(words + new)))
        if n > n_tokens and k == 1:
            new = [new[0][0]]
            n = len(tokenize(" ".join(words + new)))
        if n <= n_tokens:
            words, have = words + new, n
        if n <= n_tokens or k == 1:
            i += k
        else:
            run = 1
    return " ".join(words)


def _procs() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (parent pid, resident bytes, command name), from /proc (Linux)."""
    out = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            head, tail = stat.rsplit(")", 1)
            parts = tail.split()
            out[int(d)] = (int(parts[1]), int(parts[21]) * page, head.split("(", 1)[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def descendants(root: int, procs: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """`root` and every process below it."""
    procs = _procs() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _pss(pid: int) -> int | None:
    """Proportional set size in bytes (shared pages divided among the processes sharing them), or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _tree_rss(root: int, pss: bool = False) -> int:
    """Resident bytes of `root` and all its descendants. With `pss`, proportional set sizes instead, so pages
    shared between the processes (a multi-process browser's libraries and shared memory) count once."""
    procs = _procs()
    total = 0
    for pid in descendants(root, procs):
        if pid not in procs:
            continue
        size = _pss(pid) if pss else None
        total += size if size is not None else procs[pid][1]
    return total


class PeakRSS:
    """Samples the resident memory of a process tree every `interval` s while in use; `.peak_mb` after.
    `pss`: sum proportional set sizes instead of RSS (for multi-process programs such as Chromium)."""

    def __init__(self, root: int | None = None, interval: float = 0.05, pss: bool = False):
        self.root, self.interval, self.pss, self.peak = root or os.getpid(), interval, pss, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.root, self.pss))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss(self.root, self.pss))

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
