"""The realm-web command, run as a user would (subprocesses), and the errors users see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundled_corpus import answer

import realm_web
from realm_web.cli import bundled_model
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
    """Each line is a user turn of one conversation; each reply is a line (test_chat asks the API about every
    capital)."""
    turns = "".join(f"What is the capital of {c}?\n" for c in ("France", "Germany", "Italy"))
    r = cli("run", "--chat", "-n", "24", "--temp", "0", stdin=turns)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    assert r.stdout.splitlines() == [answer("France"), answer("Germany"), answer("Italy")]


def test_run_takes_the_prompt_as_llama_cpp_does(dev):
    r = cli("run", "-m", bundled_model(), "-p", "The capital of France is", "-n", "3", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
    r = cli("run", "--chat", "--prompt", "What is the capital of Japan?", "-n", "24", "--temp", "0", stdin="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [answer("Japan")]


def test_run_with_a_draft_or_lookup_prints_the_same_text(dev):
    from realm_web.cli import bundled_draft

    turns = "What is the capital of Peru?\nWhat is the capital of Kenya?\n"
    want = [answer("Peru"), answer("Kenya")]
    for flags in (["--draft", bundled_draft(), "--draft-max", "6"], ["--lookup", "--lookup-ngram", "2"]):
        r = cli("run", "--chat", "-n", "24", "--temp", "0", *flags, stdin=turns)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == want, flags
    r = cli("run", "--draft", str(FIX / "qwen2-Q8_0.gguf"), "-n", "2")
    assert r.returncode == 1 and "realm-web: error: the draft's tokenizer is 'gpt2', the target's 'llama'" in r.stderr
    r = cli("run", "--draft", bundled_draft(), "--lookup", "-n", "2")
    assert r.returncode == 1 and "not both" in r.stderr


def test_bench_draft_json(dev):
    from realm_web.cli import bundled_draft

    r = cli("bench", "--draft", bundled_draft(), "--gen-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["temperature"] for row in rows] == [0.0, 0.8]
    for row in rows:
        assert row["mode"] == "draft" and row["drafted"] >= row["accepted"] > 0 and row["speedup"] > 0
        assert 0 < row["acceptance_rate"] <= 1 and row["plain_decode_tok_s"] > 0


def test_prompt_given_twice_is_a_usage_error():
    r = cli("run", "The capital of", "-p", "The capital of France is")
    assert r.returncode == 2 and "give the prompt once" in r.stderr and "Traceback" not in r.stderr


def test_version():
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"realm-web {realm_web.__version__}"


@pytest.mark.skipif(sys.platform != "linux", reason="hides the Vulkan driver the way a bare Linux machine lacks it")
def test_no_webgpu_adapter_is_one_line_naming_what_to_install():
    """No Vulkan driver where the Vulkan loader looks, and no EGL driver for wgpu's GL fallback either (glvnd's
    vendor list pointed nowhere): wgpu finds no adapter. One line, no traceback."""
    nowhere = "/nonexistent/driver.json"
    env = dict(os.environ, VK_ICD_FILENAMES=nowhere, VK_DRIVER_FILES=nowhere, __EGL_VENDOR_LIBRARY_FILENAMES=nowhere)
    r = subprocess.run([sys.executable, "-m", "realm_web.cli", "run", "-n", "1"], capture_output=True, text=True,
                       timeout=120, env=env)  # fmt: skip
    print(r.stderr)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("realm-web: error: no usable WebGPU adapter")
    assert "apt-get install libvulkan1 mesa-vulkan-drivers" in r.stderr and "Traceback" not in r.stderr


def test_missing_native_dependency_is_one_line_naming_what_to_install():
    """wgpu made unimportable, as on an install without dependencies."""
    code = "import sys; sys.modules['wgpu'] = None; from realm_web.cli import main; sys.exit(main(['run', '-n', '1']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "needs wgpu" in r.stderr and "pip install 'wgpu>=" in r.stderr, r.stderr


def test_bench_json(dev):
    r = cli("bench", "--json", "--prompt-tokens", "16", "--gen-tokens", "8")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["decode_tok_s"] > 0 and out["prefill_tok_s"] > 0 and out["n_gen"] == 8


def test_bench_streams_json(dev):
    """Aggregate decode of concurrent streams: one row per stream count, every stream's tokens accounted for."""
    r = cli("bench", "--streams", "1,3", "--json", "--prompt-tokens", "8", "--gen-tokens", "6")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["n_streams"] for x in rows] == [1, 3] and all(x["decode_tok_s"] > 0 for x in rows)
    assert rows[1]["per_stream_tok_s"] == pytest.approx(rows[1]["decode_tok_s"] / 3)


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
