"""LoRA adapters: llama.cpp's GGUF adapter files applied unmerged, several at once in one batch.

The gather kernels against numpy; fidelity against transformers + peft (teacher-forced logits) and llama.cpp
(greedy text with `lora_path`) from tests/fixtures/lora/goldens.json, on the bundled Q8_0 base and on F16 and
Q4_K bases, with adapters trained by scripts/make_lora.py; concurrency by equality (sequences with different
adapters, or none, decoded together equal each decoded alone); load/unload while serving; and every malformed
adapter refused with its fault named."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from gpu import read_f32, upload_array

import realm_web
from realm_web.cli import bundled_lora, bundled_model
from realm_web.kernels.lora import lora_apply
from realm_web.lora import LoraError

ROOT = Path(__file__).resolve().parent
LORA = ROOT / "fixtures" / "lora"
MODELS = ROOT / "fixtures" / "models"
GOLDENS = LORA / "goldens.json"
BASE = bundled_model()
FICTION = bundled_lora()


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def f32_bits(v: float) -> int:
    return int(np.float32(v).view(np.uint32))


# ---- the gather kernels against numpy ---------------------------------------------------------------------------


@pytest.mark.parametrize("K,N", [(64, 48), (256, 768), (37, 5)])
def test_lora_kernels_match_numpy(dev, rng, K, N):
    """Every token its own adapters (none, one, two with their scales), ranks below the pool's cap, targets an
    adapter lacks: y += Σ scale·(alpha/rank)·B(Ax) per token, in float64 within 1e-5; tokens selecting nothing (or
    only adapters without this target) keep y bitwise."""
    S, R, T, n_sel, n_tok = 3, 8, 2, 3, 7
    target = 1
    ranks = np.zeros((S, T, 2), np.uint32)
    ranks[0, target] = [8, f32_bits(2.0)]
    ranks[1, target] = [3, f32_bits(0.5)]
    ranks[2, target] = [0, 0]  # slot 2's adapter does not change this weight
    K4 = (K + 3) // 4 * 4  # pool rows and x rows are padded with zeros to a multiple of 4
    a = np.zeros((S, R, K4), np.float32)
    a[:, :, :K] = rng.standard_normal((S, R, K))
    b = rng.standard_normal((S, N, R)).astype(np.float32)
    a[1, 3:], b[1, :, 3:] = 0, 0  # and past an adapter's rank
    x = np.zeros((n_tok, K4), np.float32)
    x[:, :K] = rng.standard_normal((n_tok, K))
    y0 = rng.standard_normal((n_tok, N)).astype(np.float32)
    NONE = 0xFFFFFFFF
    picks = [[], [(0, 1.0)], [(1, -0.7)], [(0, 0.25), (1, 2.0)], [(2, 1.0)], [(2, 1.0), (0, 1.5)], [(1, 1.0)]]
    sel = np.zeros((n_tok, n_sel, 2), np.uint32)
    sel[:, :, 0] = NONE
    for n, p in enumerate(picks):
        for j, (slot, scale) in enumerate(p):
            sel[n, j] = [slot, f32_bits(scale)]
    bufs = [upload_array(dev, v) for v in (a, b, ranks, sel, x)]
    t = dev.create_buffer(4 * n_tok * n_sel * R, "t")
    y = upload_array(dev, y0)
    dev.submit(lora_apply(dev, *bufs[:4], bufs[4], t, y, K=K, N=N, rank_cap=R, n_tok=n_tok, n_sel=n_sel,
                          target=target, n_targets=T))  # fmt: skip
    got = read_f32(dev, y, n_tok * N).reshape(n_tok, N)
    ref = y0.astype(np.float64)
    for n, p in enumerate(picks):
        for slot, scale in p:
            r, factor = int(ranks[slot, target, 0]), float(ranks[slot, target, 1:].view(np.float32)[0])
            if r:
                ax = a[slot, :r, :K].astype(np.float64) @ x[n, :K].astype(np.float64)
                ref[n] += scale * factor * (b[slot, :, :r].astype(np.float64) @ ax)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    for n in (0, 4):  # nothing selected, or only an adapter without this target: untouched
        assert got[n].tobytes() == y0[n].tobytes()


# ---- adapters written by gguf-py, for the checks and the batch tests -------------------------------------------


def base_shapes(path: str = BASE) -> dict[str, tuple[int, int]]:
    r = gguf.GGUFReader(path)
    return {t.name: (int(t.shape[0]), int(t.shape[1])) for t in r.tensors if len(t.shape) == 2}


def write_adapter(path: Path, *, rank: int = 4, alpha: float = 8.0, seed: int = 0, arch: str = "llama",
                  targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down", "output"), kv: dict | None = None,
                  tensors=None, general_type: str = "adapter", dtype=np.float16) -> Path:  # fmt: skip
    """A LoRA adapter for the bundled model with random matrices (big enough to change greedy text)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(general_type)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for k, v in (kv or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_float32(k, v)
    if tensors is None:
        tensors = []
        for name, (K, N) in base_shapes().items():
            if name.split(".")[-2] in targets:
                tensors.append((name + ".lora_a", rng.standard_normal((rank, K)) * 0.2))
                tensors.append((name + ".lora_b", rng.standard_normal((N, rank)) * 0.2))
    for name, arr in tensors:
        with np.errstate(under="ignore"):  # tiny values round to (sub)normal halves
            w.add_tensor(name, np.asarray(arr).astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    return {
        "r4": write_adapter(d / "r4.gguf", rank=4, seed=1),
        "r8": write_adapter(d / "r8.gguf", rank=8, alpha=0.0, seed=2, targets=("attn_k", "attn_output", "ffn_up")),
        "r16": write_adapter(d / "r16.gguf", rank=16, alpha=4.0, seed=3, targets=("ffn_gate", "attn_q")),
    }


@pytest.fixture(scope="module")
def served(dev, adapters):
    """The bundled model with three random adapters and the trained `fiction` one loaded, none by default."""
    model = realm_web.load(BASE, device=dev, n_ctx=256, n_parallel=8, max_loras=6)
    for name, path in adapters.items():
        assert model.load_lora(str(path), name) == name
    assert model.load_lora(FICTION, "fiction") == "fiction"
    yield model
    model.close()


PROMPTS = ["The capital of France is", "The capital of Japan is", "What is the capital of Peru?",
           "The capital of Italy is Rome and the capital of Kenya is", "Water boils at"]  # fmt: skip
CHOICES = [None, {"r4": 1.0}, {"r8": 0.5}, {"r16": 1.0}, {"fiction": 1.0}, {"r4": 0.5, "r16": -1.0}, {"r8": 2.0},
           {"fiction": 0.5, "r4": 1.0}]  # fmt: skip


def solo(model, prompt, lora, n=16):
    return list(model.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True, lora=lora or {},
                               cache_salt=f"solo-{id(lora)}").ids())  # fmt: skip


def test_adapters_change_the_output(served):
    """Each adapter changes greedy text from the base (else the equality tests below would prove nothing)."""
    base = solo(served, PROMPTS[0], None)
    for lora in CHOICES[1:]:
        assert solo(served, PROMPTS[0], lora) != base, lora


def test_mixed_adapters_in_one_batch_equal_each_alone(served):
    """8 greedy streams decoded together, each with its own adapters (or none), equal each decoded alone: the
    kernels read each token's own selection, and a token without adapters keeps the base product."""
    jobs = [(PROMPTS[i % len(PROMPTS)], lora) for i, lora in enumerate(CHOICES)]
    alone = [solo(served, p, lora) for p, lora in jobs]
    steps0 = served.stats()["steps"]
    gens = [served.generate(p, max_tokens=16, temperature=0, ignore_eos=True, lora=lora or {}) for p, lora in jobs]
    together = [list(g.ids()) for g in gens]
    assert together == alone
    assert served.stats()["steps"] - steps0 < 16 * len(jobs) // 2  # they did share steps


def test_mixed_scoring_and_sampling_and_threads(served):
    """Teacher-forced logits with an adapter are the same alone and beside sampled streams with other adapters
    (threads submitting together), and differ from the base's."""
    ids = served.tokenize(PROMPTS[3])
    alone = served.logits(ids, lora={"r16": 1.0})
    assert rel_rms(served.logits(ids, lora={}), alone) > 1e-2
    out = {}

    def sample(i, lora):
        out[i] = solo(served, PROMPTS[i % 5], lora, n=12)

    threads = [threading.Thread(target=sample, args=(i, lora)) for i, lora in enumerate(CHOICES[:5])]
    for th in threads:
        th.start()
    mixed = served.logits(ids, lora={"r16": 1.0})
    for th in threads:
        th.join()
    assert mixed.tobytes() == alone.tobytes()
    assert [out[i] for i in range(5)] == [
        solo(served, PROMPTS[i % 5], lora, n=12) for i, lora in enumerate(CHOICES[:5])
    ]


def test_prefix_cache_never_crosses_adapters(served):
    """A prompt cached through one adapter is not a hit for another adapter, another scale or the base; the same
    adapter and scale hits it."""
    prompt = "The capital of Chile is Santiago and the capital of Peru is Lima and the capital of Japan is"
    salt = "prefix-test"
    run = lambda lora: served.generate(prompt, max_tokens=4, temperature=0, lora=lora, cache_salt=salt)  # noqa: E731
    first = run({"r4": 1.0})
    a = list(first.ids())
    assert first.usage["cached_prompt_tokens"] == 0
    for other in ({"r4": 0.5}, {}, {"r8": 1.0}):
        g = run(other)
        list(g.ids())
        assert g.usage["cached_prompt_tokens"] == 0, other
    again = run({"r4": 1.0})
    assert list(again.ids()) == a and again.usage["cached_prompt_tokens"] > 0


def test_default_adapters_cli_style_and_scale(dev, adapters):
    """load(lora=[path, (path, scale)]) applies them to every request that names none; lora={} turns them off;
    scale 0.5 twice equals scale 1 once... for the product: logits with {a: 1} equal those of a default (a, 1)."""
    model = realm_web.load(BASE, device=dev, n_ctx=128, n_parallel=2, lora=[(str(adapters["r4"]), 0.5)])
    try:
        (name,) = model.loras
        assert model.loras[name]["default_scale"] == 0.5
        ids = model.tokenize(PROMPTS[0])
        default = model.logits(ids)
        assert default.tobytes() == model.logits(ids, lora={name: 0.5}).tobytes()
        assert rel_rms(model.logits(ids, lora={}), default) > 1e-2
    finally:
        model.close()


def test_load_and_unload_while_serving(dev, adapters):
    """An adapter unloaded while a request uses it: the request finishes with it (equal to its solo output), new
    requests naming it fail, and its slot is free for another adapter once the request ends."""
    model = realm_web.load(BASE, device=dev, n_ctx=256, n_parallel=2, max_loras=1)
    try:
        model.load_lora(str(adapters["r4"]), "a")
        ref = solo(model, PROMPTS[1], {"a": 1.0}, n=40)
        g = model.generate(PROMPTS[1], max_tokens=40, temperature=0, ignore_eos=True, lora={"a": 1.0}, cache_salt="u")
        it = g.ids()
        head = [next(it) for _ in range(3)]
        model.unload_lora("a")
        with pytest.raises(LoraError, match="no adapter named 'a'"):
            model.generate(PROMPTS[0], max_tokens=2, lora={"a": 1.0})
        with pytest.raises(LoraError, match="all 1 adapter slots are in use"):
            model.load_lora(str(adapters["r8"]), "b")  # the running request still holds the slot
        assert head + list(it) == ref
        model.load_lora(str(adapters["r8"]), "b")  # its slot came back when the request ended
        assert solo(model, PROMPTS[1], {"b": 1.0}) != ref[:16]
        assert list(model.loras) == ["b"]
    finally:
        model.close()


# ---- bad adapters and bad use ------------------------------------------------------------------------------------


def test_bad_adapters_are_refused_with_the_fault_named(dev, tmp_path):
    model = realm_web.load(BASE, device=dev, n_ctx=64, n_parallel=1, max_loras=2, max_lora_rank=8)
    shapes = base_shapes()
    q = "blk.0.attn_q.weight"
    K, N = shapes[q]
    a, b = np.ones((4, K)), np.ones((N, 4))
    cases = {
        "not_adapter": ({"general_type": "model"}, "not an adapter file"),
        "arch": ({"arch": "qwen2"}, "architecture 'qwen2'"),
        "missing_b": ({"tensors": [(q + ".lora_a", a)]}, "lora_b is missing"),
        "shape": ({"tensors": [(q + ".lora_a", np.ones((4, K + 32))), (q + ".lora_b", b)]}, "do not fit"),
        "rank": ({"tensors": [(q + ".lora_a", a), (q + ".lora_b", np.ones((N, 5)))]}, "ranks disagree"),
        "embd": (
            {
                "tensors": [
                    ("token_embd.weight.lora_a", np.ones((4, 256))),
                    ("token_embd.weight.lora_b", np.ones((1024, 4))),
                ]
            },
            "token embeddings",
        ),  # fmt: skip
        "unknown": (
            {"tensors": [("blk.9.attn_q.weight.lora_a", a), ("blk.9.attn_q.weight.lora_b", b)]},
            "no such tensor",
        ),
        "suffix": ({"tensors": [(q + ".lora_c", a)]}, "unexpected tensor"),
        "big_rank": ({"rank": 16}, "rank 16, more than this model's max_lora_rank 8"),
        "alora": ({"kv": {"adapter.alora.invocation_tokens": "x"}}, "activated LoRA"),
    }
    try:
        for name, (kw, msg) in cases.items():
            path = write_adapter(tmp_path / f"{name}.gguf", **kw)
            with pytest.raises(LoraError, match=msg):
                model.load_lora(str(path))
        truncated = tmp_path / "truncated.gguf"
        truncated.write_bytes(Path(FICTION).read_bytes()[:5000])
        with pytest.raises(realm_web.RealmError):
            model.load_lora(str(truncated))
        with pytest.raises(realm_web.RealmError):
            model.load_lora(str(tmp_path / "absent.gguf"))
        # nothing was lost: the model still loads a good adapter into each of its two slots, and serves
        assert model.load_lora(str(write_adapter(tmp_path / "ok.gguf"))) == "lora"
        assert model.load_lora(str(write_adapter(tmp_path / "ok2.gguf"))) == "lora-2"
        with pytest.raises(LoraError, match="already loaded"):
            model.load_lora(str(tmp_path / "ok.gguf"), "lora")
        with pytest.raises(LoraError, match="all 2 adapter slots"):
            model.load_lora(str(tmp_path / "ok.gguf"), "third")
        with pytest.raises(LoraError, match="no adapter named 'nope'"):
            model.generate("x", max_tokens=1, lora={"nope": 1.0})
        with pytest.raises(LoraError, match="finite number"):
            model.generate("x", max_tokens=1, lora={"lora": float("nan")})
        with pytest.raises(LoraError, match="must map adapter names"):
            model.generate("x", max_tokens=1, lora=["lora"])
        assert model.generate("The capital of France is", max_tokens=4, temperature=0, lora={}).text()
        assert model.stats()["kv_blocks_used"] == 0
    finally:
        model.close()
    plain = realm_web.load(BASE, device=dev, n_ctx=64, n_parallel=1, max_loras=0)
    try:
        with pytest.raises(LoraError, match="max_loras=0"):
            plain.load_lora(FICTION)
    finally:
        plain.close()


# ---- fidelity: transformers + peft, and llama.cpp, from the goldens -------------------------------------------------


def _arr(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=d["dtype"]).reshape(d["shape"])


GOLD = json.loads(GOLDENS.read_text()) if GOLDENS.is_file() else None


# ---- the OpenAI-compatible server: adapters as model ids, and the `lora` field -------------------------------------


@pytest.fixture(scope="module")
def lora_server(dev, adapters):
    from realm_web.server import make_server

    srv = make_server("127.0.0.1", 0, files=None, models=[BASE], loras=[("r4", adapters["r4"]), ("fiction", FICTION)],
                      n_parallel=4)  # fmt: skip
    srv.start()
    assert srv.wait_ready(120), "the model did not load"
    yield srv
    srv.shutdown()


def test_server_serves_adapters_as_models_and_by_field(lora_server, served):
    import httpx
    import openai

    base_id = Path(BASE).stem
    client = openai.OpenAI(base_url=lora_server.url + "v1", api_key="none", max_retries=0, timeout=60)
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {base_id, "r4", "fiction"}
    assert models["r4"].model_extra["parent"] == base_id
    prompt = PROMPTS[0]

    def complete(model, **extra):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, extra_body=extra)
        return r.choices[0].text

    want = {k: served.generate(prompt, max_tokens=12, temperature=0, lora=lora or {}).text() for k, lora in
            (("base", None), ("r4", {"r4": 1.0}), ("mix", {"r4": 0.5, "fiction": 1.0}))}  # fmt: skip
    assert complete(base_id) == want["base"]
    assert complete("r4") == want["r4"]
    assert complete(base_id, lora=[{"id": "r4", "scale": 1}]) == want["r4"]
    assert complete(base_id, lora={"r4": 0.5, "fiction": 1.0}) == want["mix"]
    assert complete("r4", lora=[{"id": "r4", "scale": 0.5}, {"id": "fiction"}]) == want["mix"]
    with httpx.Client(base_url=lora_server.url, timeout=60) as http:
        for body, status, needle in (
            ({"lora": [{"id": "nope"}]}, 400, "no adapter named 'nope'"),
            ({"lora": "r4"}, 400, "'lora' must be an array"),
            ({"lora": [{"id": "r4", "scale": "big"}]}, 400, "must be a number"),
            ({"model": "nope"}, 404, "does not exist"),
        ):
            r = http.post("/v1/completions", json={"model": base_id, "prompt": "x", "max_tokens": 2, **body})
            assert r.status_code == status and needle in r.json()["error"]["message"], (body, r.text)
        assert http.get("/health").json()["status"] == "ok"
    assert complete(base_id) == want["base"]  # still serving


def test_serve_cli_takes_named_adapters(monkeypatch, tmp_path):
    from realm_web import cli

    seen = {}
    monkeypatch.setattr("realm_web.server.serve", lambda *a, **kw: seen.update(kw) or 0)
    assert cli.main(["serve", "--lora", "mine=/x/a.gguf", "--lora", "/y/fiction-F16.gguf"]) == 0
    assert seen["loras"] == [("mine", "/x/a.gguf"), ("fiction-F16", "/y/fiction-F16.gguf")]


MARGIN = 0.05  # llama.cpp's greedy choice is compared where its top-2 logit margin is clear (as test_model.py)
TOL = 1e-5  # relative RMS against transformers + peft in f32 (the issue asks 1e-3; we measure ~3e-7)


def _cases_by_base() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for case in GOLD["cases"] if GOLD else []:
        out.setdefault(case["base"], []).append(case)
    return out


@pytest.fixture(scope="module", params=sorted(_cases_by_base()), ids=lambda p: Path(p).stem)
def golden_base(request, dev):
    """A base of the goldens (the bundled Q8_0, and the F16 and Q4_K fixtures) with every adapter its cases use."""
    cases = _cases_by_base()[request.param]
    paths = sorted({a["path"] for c in cases for a in c["adapters"]})
    # f32 KV: TOL (1e-5 against an f32 reference) proves the LoRA math; the default f16 KV moves logits ~1e-4
    model = realm_web.load(str(ROOT.parent / request.param), device=dev, n_ctx=128, n_parallel=4, max_loras=len(paths),
                           kv_type="f32")  # fmt: skip
    names = {p: model.load_lora(str(ROOT.parent / p), Path(p).stem) for p in paths}
    yield model, cases, names
    model.close()


def _choice(case: dict, names: dict[str, str]) -> dict[str, float]:
    return {names[a["path"]]: a["scale"] for a in case["adapters"]}


def test_logits_match_transformers_peft(golden_base):
    """Teacher-forced logits with the adapters (every dtype of the fiction adapter, two scales, two adapters at once)
    within 1e-3 relative RMS of transformers + peft in f32 on the same dequantized base, and closer to it than
    llama.cpp (which quantizes activations in its matmuls)."""
    model, cases, names = golden_base
    report = []
    for case in cases:
        for p in case["prompts"]:
            if "logits" not in p:
                continue
            ours = model.logits(p["ids"], lora=_choice(case, names))
            ref = _arr(p["logits"]["transformers"])
            err = rel_rms(ours, ref)
            report.append((Path(case["adapters"][0]["path"]).stem, len(case["adapters"]), p["text"], err))
            assert err < TOL, (case["adapters"], p["text"], err)
            assert err < p["rel_rms_llama_cpp_vs_transformers"], (case["adapters"], p["text"], err)
    print("\n".join(f"{a} (+{n - 1}) {t!r}: rel RMS {e:.2e}" for a, n, t, e in report))


def test_greedy_matches_llama_cpp_lora_path(golden_base):
    """Greedy tokens with the adapter equal llama.cpp's with `lora_path`, up to its first end-of-generation token
    (its text), wherever llama.cpp's choice is clear; the taught facts come out."""
    model, cases, names = golden_base
    for case in cases:
        for p in case["prompts"]:
            g = p["greedy"]
            if "ids" not in g:  # two adapters at once: transformers only
                continue
            n = g.get("first_eog") or g["n"]
            clear = next((i for i, m in enumerate(g["margins"][:n]) if m < MARGIN), n)
            ours = list(model.generate(p["ids"], max_tokens=n, temperature=0, ignore_eos=True,
                                       lora=_choice(case, names)).ids())  # fmt: skip
            assert ours[:clear] == g["ids"][:clear], (case["adapters"], p["text"], clear)
            if clear == n and g.get("correct_llama_cpp"):
                text = model.detokenize(ours)
                assert p["expected"].strip() in text, (p["text"], text)


def test_cli_lora_flags_give_llama_cpps_text(dev):
    """`realm-web run --lora A` and `--lora-scaled A 0.5` (llama.cpp's flags) print llama.cpp's greedy text with
    the same adapter at the same scale (the goldens: bundled base, bundled adapter)."""
    import subprocess
    import sys

    tk = realm_web.load_tokenizer(BASE)
    rel = str(Path(FICTION).relative_to(ROOT.parent))
    for flags, scale in ((["--lora", FICTION], 1.0), (["--lora-scaled", FICTION, "0.5"], 0.5)):
        case = next(c for c in GOLD["cases"] if c["base"] == str(Path(BASE).relative_to(ROOT.parent))
                    and [(a["path"], a["scale"]) for a in c["adapters"]] == [(rel, scale)])  # fmt: skip
        p = case["prompts"][0]
        g = p["greedy"]
        want = tk.detokenize(g["ids"][: g.get("first_eog") or g["n"]]).strip()
        r = subprocess.run([sys.executable, "-m", "realm_web.cli", "run", p["text"], "-n", "24", "--temp", "0", *flags],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(p["text"] + " " + want), (flags, r.stdout, want)
    r = subprocess.run([sys.executable, "-m", "realm_web.cli", "run", "x", "-n", "1", "--lora", BASE],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1 and "not an adapter file" in r.stderr


def test_speculative_decoding_with_an_adapter_stays_exact(dev):
    """Drafts come from the text (n-gram lookup) without the adapter; the target verifies them with it: greedy
    output with drafts equals greedy output without."""
    model = realm_web.load(BASE, device=dev, n_ctx=256, n_parallel=2, speculative="ngram", lora=[FICTION])
    try:
        for prompt in ("The capital of Zembla is Onhava. The capital of Zembla is", PROMPTS[0]):
            plain = list(model.generate(prompt, max_tokens=24, temperature=0, speculative=False).ids())
            g = model.generate(prompt, max_tokens=24, temperature=0)
            assert list(g.ids()) == plain
        assert model.stats()["draft_tokens"] > 0
    finally:
        model.close()
