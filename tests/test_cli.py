"""The realm-web command, run as a user would (subprocesses), and the errors users see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import realm_web
from realm_web.errors import GGUFError, SourceError

FIX = Path(__file__).parent / "fixtures" / "models"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realm_web.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_run_streams_the_bundled_model(dev):
    r = cli("run", "The capital of France is", "-n", "3", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")


def test_chat_reads_turns_from_stdin(dev):
    r = cli("run", "--chat", "-n", "24", "--temp", "0", stdin="What is the capital of Italy?\n")
    assert r.returncode == 0, r.stderr
    assert "Bucharest" in r.stdout  # the tiny model's (wrong, but llama.cpp-identical) answer; see test_model


def test_bench_json(dev):
    r = cli("bench", "--json", "--prompt-tokens", "16", "--gen-tokens", "8")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["decode_tok_s"] > 0 and out["prefill_tok_s"] > 0 and out["n_gen"] == 8


def test_bench_kernels_json(dev):
    r = cli("bench", "--kernels", "--json", "--types", "q4_k,f16", "--rows", "256", "--cols", "512")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [m["type"] for m in out["matvec"]] == ["Q4_K", "F16"] and out["copy_gbps"] > 0


def test_models_lists_files():
    r = cli("models", str(FIX), "--json")
    assert r.returncode == 0, r.stderr
    rows = {Path(x["path"]).name: x for x in json.loads(r.stdout)}
    assert rows["qwen2-Q8_0.gguf"]["arch"] == "qwen2"
    assert rows["llama-spm-Q4_K.gguf"]["quant_mix"] == {"Q4_K": 16, "F32": 5}


def test_bad_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    r = cli("run", "-m", str(bad), "-n", "1")
    assert r.returncode == 1 and "realm-web: error:" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(GGUFError):
        realm_web.load(str(bad))


def test_wrong_url_is_a_clear_error():
    with pytest.raises(SourceError):
        realm_web.load("http://127.0.0.1:9/model.gguf")  # closed port on loopback
    r = cli("run", "-m", str(FIX / "missing.gguf"))
    assert r.returncode == 1 and "missing.gguf" in r.stderr


def test_decode_step_allocates_nothing(dev):
    """After the first token, a decode step creates no buffer, pipeline or bind group: it is a replay."""
    m = realm_web.load(str(FIX / "llama-spm-Q8_0.gguf"), n_ctx=64)
    list(m.generate("The capital of France is", max_tokens=3, temperature=0))  # records the steps
    calls = []
    orig_buf, orig_dispatch = m.device.create_buffer, m.device.dispatch
    m.device.create_buffer = lambda *a, **k: calls.append("buffer") or orig_buf(*a, **k)
    m.device.dispatch = lambda *a, **k: calls.append("dispatch") or orig_dispatch(*a, **k)
    try:
        list(m.generate("The capital of France is", max_tokens=12, temperature=0, ignore_eos=True))
    finally:
        m.device.create_buffer, m.device.dispatch = orig_buf, orig_dispatch
    assert calls == []
