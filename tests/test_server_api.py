"""The OpenAI-compatible API of `realm-web serve` (realm_web/server/) over real HTTP on 127.0.0.1, with the
official `openai` client as the oracle of the protocol, llama.cpp's greedy tokens and transformers' f32 logits
(the goldens) as the oracle of the numbers, and raw HTTP for every error. Two models are served: the bundled
one and the qwen2 fixture."""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from realm_web.cli import bundled_model
from realm_web.server import make_server

FIX = Path(__file__).resolve().parent / "fixtures"
BUNDLED = Path(bundled_model())
QWEN = FIX / "models" / "qwen2-Q8_0.gguf"
TINY, QWEN_ID = BUNDLED.stem, QWEN.stem
KEYS = ("sk-test-one", "sk-test-two")
KEY = KEYS[0]
MARGIN = 0.05  # llama.cpp's greedy choice is compared where its top-2 logit margin is clear (as test_model.py)
CAPITALS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Peru", "Canada"]
N_PARALLEL = 8


def golden(name: str) -> dict:
    return json.loads((FIX / "goldens" / f"{name}.json").read_text())


def array(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=d["dtype"]).reshape(d["shape"])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


@pytest.fixture(scope="module")
def server(dev):
    srv = make_server("127.0.0.1", 0, files=None, models=[BUNDLED, QWEN], api_keys=KEYS, n_parallel=N_PARALLEL)
    srv.start()
    assert srv.wait_ready(120), "models did not load"
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "v1", api_key=KEY, max_retries=0, timeout=60)


def metrics(http: httpx.Client) -> dict[str, dict[tuple, float]]:
    """name -> {labels (sorted items): value} of every sample /metrics shows."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def pool_state(http: httpx.Client, model: str = TINY) -> dict[str, float]:
    m = metrics(http)
    label = (("model", model),)
    return {k: m[f"realm_web_{k}"][label] for k in ("sequences_running", "sequences_waiting", "kv_blocks_used",
                                                     "kv_blocks_free", "kv_blocks_total")}  # fmt: skip


def wait_pool_whole(http: httpx.Client, model: str = TINY, timeout: float = 10.0) -> dict[str, float]:
    t0 = time.monotonic()
    while True:
        s = pool_state(http, model)
        if (s["kv_blocks_used"] == 0 and s["sequences_running"] == 0 and s["sequences_waiting"] == 0) or (
            time.monotonic() - t0 > timeout
        ):
            return s
        time.sleep(0.02)


def chat_messages(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


# ---- the openai client -------------------------------------------------------------------------------------


def test_models_lists_both(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [TINY, QWEN_ID]


def test_completion_is_llama_cpps_greedy_text(client):
    """The completion of a golden prompt (token ids, as llama.cpp ran it) is llama.cpp's greedy continuation,
    compared while llama.cpp's own margin is clear; usage counts the tokens."""
    g = golden(TINY)
    p = g["prompts"][0]
    want, margins = p["greedy"]["ids"], p["greedy"]["margins"]
    k = len(want)
    assert min(margins) >= MARGIN and p["text"] == g["france"]["prompt"]  # every token a clear choice
    r = client.completions.create(model=TINY, prompt=p["ids"], max_tokens=k, temperature=0,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    assert r.choices[0].text == g["france"]["text"]  # llama.cpp's detokenized greedy continuation
    assert r.choices[0].finish_reason == "length" and r.object == "text_completion"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(p["ids"]), k)
    assert r.usage.total_tokens == len(p["ids"]) + k


def test_logprobs_are_transformers_log_softmax(client):
    """logprobs / top_logprobs of the first generated token equal the log-softmax of transformers' f32 logits
    of the prompt's last position, on both models (the second routed by `model`)."""
    for name in (TINY, QWEN_ID):
        p = golden(name)["prompts"][0]
        ref = log_softmax(array(p["logits"]["transformers"])[-1])
        top = np.argsort(-ref)[:3]
        r = client.completions.create(model=name, prompt=p["ids"], max_tokens=1, temperature=0, logprobs=3)
        lp = r.choices[0].logprobs
        assert len(lp.token_logprobs) == 1
        assert abs(lp.token_logprobs[0] - ref[top[0]]) < 1e-3, name
        got = sorted(lp.top_logprobs[0].values(), reverse=True)
        np.testing.assert_allclose(got, ref[top], atol=1e-3, err_msg=name)
        c = client.chat.completions.create(model=name, messages=chat_messages("France"), max_tokens=2,
                                           temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
        content = c.choices[0].logprobs.content
        assert len(content) == c.usage.completion_tokens and len(content[0].top_logprobs) == 2
        assert content[0].logprob == content[0].top_logprobs[0].logprob  # greedy took the most likely
        assert bytes(content[0].bytes).decode("utf-8", "replace") == content[0].token


def test_chat_streamed_equals_whole_and_usage_last(client, server):
    msgs = chat_messages("Italy")
    whole = client.chat.completions.create(model=TINY, messages=msgs, max_tokens=24, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    model = server.pool.entries[TINY].model
    assert whole.choices[0].message.content == model.chat(msgs, stream=False, max_tokens=24, temperature=0)
    assert "Rome" in whole.choices[0].message.content and whole.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=TINY, messages=msgs, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # streamed, not at once
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage no chunk carries usage
    plain = list(client.chat.completions.create(model=TINY, messages=msgs, max_tokens=24, temperature=0,
                                                stream=True))  # fmt: skip
    assert all(c.usage is None and c.choices for c in plain)


def test_completion_stream(client):
    full = client.completions.create(model=TINY, prompt="The capital of France is", max_tokens=10, temperature=0)
    parts = list(client.completions.create(model=TINY, prompt="The capital of France is", max_tokens=10,
                                           temperature=0, stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
    assert parts[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_stop_and_max_completion_tokens(client):
    r = client.completions.create(model=TINY, prompt="The capital of France is", max_tokens=12, temperature=0)
    text = r.choices[0].text
    assert "Germany" in text
    cut = client.completions.create(model=TINY, prompt="The capital of France is", max_tokens=12, temperature=0,
                                    stop=["Germ", "zzz"])  # fmt: skip
    assert cut.choices[0].text == text[: text.index("Germ")] and cut.choices[0].finish_reason == "stop"
    c = client.chat.completions.create(model=TINY, messages=chat_messages("Spain"), max_completion_tokens=3,
                                       temperature=0)  # fmt: skip
    assert c.usage.completion_tokens == 3 and c.choices[0].finish_reason == "length"


def test_seed_and_sampling_settings(client):
    kw = {"model": TINY, "prompt": "The capital of", "max_tokens": 8, "temperature": 1.5, "top_p": 1.0,
          "extra_body": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.1}}  # fmt: skip
    a = client.completions.create(seed=11, **kw).choices[0].text
    assert client.completions.create(seed=11, **kw).choices[0].text == a
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in range(12, 18)}
    assert len(others | {a}) > 1  # the seed matters at this temperature


def test_n_choices_share_the_prompt(client, http):
    """n = 3: three choices (greedy: equal), the prompt computed once; the other two find it in the prefix cache."""
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    before = metrics(http)["realm_web_cached_prompt_tokens_total"][(("model", TINY),)]
    r = client.completions.create(model=TINY, prompt=prompt, max_tokens=6, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) == 1
    n_prompt = r.usage.prompt_tokens
    assert r.usage.completion_tokens == 3 * 6 or r.usage.completion_tokens < 3 * 6  # EOS may end a choice
    cached = metrics(http)["realm_web_cached_prompt_tokens_total"][(("model", TINY),)] - before
    assert cached >= 2 * (n_prompt // 16 * 16) > 0
    # prompts as a list: one choice per prompt, in order
    r = client.completions.create(model=TINY, prompt=["The capital of Peru is", "The capital of Japan is"],
                                  max_tokens=4, temperature=0)  # fmt: skip
    assert [c.index for c in r.choices] == [0, 1] and "Lima" in r.choices[0].text and "Tokyo" in r.choices[1].text


def test_second_key_and_health_need_no_key(server):
    c = openai.OpenAI(base_url=server.url + "v1", api_key=KEYS[1], max_retries=0)
    assert c.models.list().data
    r = httpx.get(server.url + "health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["models"] == {TINY: "ready", QWEN_ID: "ready"}


# ---- errors: 4xx with OpenAI's body, and the server keeps serving --------------------------------------------


def _chat(**kw) -> dict:
    return {"model": TINY, "messages": chat_messages("France"), "max_tokens": 4, "temperature": 0, **kw}


BAD = [
    # (name, path, body: dict | bytes, extra headers, status, code, param)
    ("malformed JSON", "/v1/chat/completions", b'{"model": ', {}, 400, "invalid_json", None),
    ("invalid UTF-8", "/v1/chat/completions", b'{"model": "\xff\xfe"}', {}, 400, "invalid_utf8", None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", {}, 400, "invalid_json", None),
    ("empty body", "/v1/completions", b"", {}, 400, "invalid_json", None),
    ("missing model", "/v1/chat/completions", {"messages": chat_messages("France")}, {}, 400,
     "missing_required_parameter", "model"),
    ("missing messages", "/v1/chat/completions", {"model": TINY}, {}, 400, "missing_required_parameter", "messages"),
    ("missing prompt", "/v1/completions", {"model": TINY}, {}, 400, "missing_required_parameter", "prompt"),
    ("unknown model", "/v1/chat/completions", _chat(model="gpt-9"), {}, 404, "model_not_found", "model"),
    ("temperature type", "/v1/chat/completions", _chat(temperature="hot"), {}, 400, "invalid_type", "temperature"),
    ("temperature range", "/v1/chat/completions", _chat(temperature=3), {}, 400, "invalid_value", "temperature"),
    ("max_tokens float", "/v1/chat/completions", _chat(max_tokens=1.5), {}, 400, "invalid_type", "max_tokens"),
    ("max_tokens zero", "/v1/chat/completions", _chat(max_tokens=0), {}, 400, "invalid_value", "max_tokens"),
    ("max_tokens over context", "/v1/chat/completions", _chat(max_tokens=100000), {}, 400,
     "context_length_exceeded", "max_tokens"),
    ("prompt over context", "/v1/completions", {"model": TINY, "prompt": "word " * 2000}, {}, 400,
     "context_length_exceeded", "prompt"),
    ("chat over context", "/v1/chat/completions", _chat(messages=chat_messages("word " * 2000)), {}, 400,
     "context_length_exceeded", "messages"),
    ("token id out of vocab", "/v1/completions", {"model": TINY, "prompt": [1, 5000]}, {}, 400, "invalid_value",
     "prompt"),
    ("n zero", "/v1/chat/completions", _chat(n=0), {}, 400, "invalid_value", "n"),
    ("messages not a list", "/v1/chat/completions", _chat(messages="hi"), {}, 400, "invalid_type", "messages"),
    ("bad role", "/v1/chat/completions", _chat(messages=[{"role": "wizard", "content": "x"}]), {}, 400,
     "invalid_value", "messages[0].role"),
    ("image part", "/v1/chat/completions",
     _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), {}, 400,
     "invalid_value", "messages[0].content[0]"),
    ("five stops", "/v1/chat/completions", _chat(stop=list("abcde")), {}, 400, "invalid_value", "stop"),
    ("stream_options without stream", "/v1/chat/completions", _chat(stream_options={"include_usage": True}), {},
     400, "invalid_value", "stream_options"),
    ("top_logprobs without logprobs", "/v1/chat/completions", _chat(top_logprobs=2), {}, 400, "invalid_value",
     "top_logprobs"),
    ("tools", "/v1/chat/completions", _chat(tools=[{"type": "function"}]), {}, 400, "unsupported_parameter",
     "tools"),
    ("body too large", "/v1/completions", {"model": TINY, "prompt": "x" * (5 << 20)}, {}, 413, "body_too_large",
     None),
    ("no key", "/v1/chat/completions", _chat(), {"Authorization": ""}, 401, "invalid_api_key", None),
    ("wrong key", "/v1/chat/completions", _chat(), {"Authorization": "Bearer sk-nope"}, 401, "invalid_api_key",
     None),
    ("unknown endpoint", "/v1/embeddings", {"model": TINY, "input": "x"}, {}, 404, "unknown_url", None),
]  # fmt: skip


@pytest.mark.parametrize("name, path, body, headers, status, code, param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests(http, name, path, body, headers, status, code, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **headers}
    if h.get("Authorization") == "":
        del h["Authorization"]
        r = httpx.post(str(http.base_url) + path.lstrip("/"), content=content, headers=h)
    else:
        r = http.post(path, content=content, headers=h)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (err["code"], err["param"]) == (code, param), err


def test_wrong_method_and_the_server_keeps_serving(http, client):
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    ok = client.chat.completions.create(model=TINY, messages=chat_messages("France"), max_tokens=4, temperature=0)
    assert ok.choices[0].message.content
    s = wait_pool_whole(http)
    assert s["kv_blocks_used"] == 0 and s["kv_blocks_free"] == s["kv_blocks_total"]


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        client.chat.completions.create(model="gpt-9", messages=chat_messages("France"))
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=TINY, prompt="word " * 2000)
    bad = openai.OpenAI(base_url=client.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# ---- disconnects free the KV blocks at once -----------------------------------------------------------------


def test_disconnect_mid_stream_frees_blocks(http, server):
    before = metrics(http).get("realm_web_generation_tokens_total", {}).get((("model", TINY),), 0)
    body = _chat(max_tokens=400, ignore_eos=True, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection (the disconnect tested below)
        seen = 0
        while seen < 4:
            seen += next(lines).startswith("data: {")
        assert pool_state(http)["kv_blocks_used"] > 0  # still generating
        t0 = time.monotonic()
    # leaving the block closes the connection mid-stream
    s = wait_pool_whole(http)
    freed_in = time.monotonic() - t0
    assert s["kv_blocks_used"] == 0 and s["sequences_running"] == 0, s
    generated = metrics(http)["realm_web_generation_tokens_total"][(("model", TINY),)] - before
    assert generated < 400, "the sequence ran to the end: the disconnect did not cancel it"
    assert freed_in < 2.0


def test_disconnect_while_waiting_for_a_whole_reply(http, server):
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=_chat(max_tokens=400, ignore_eos=True), timeout=0.3)
    s = wait_pool_whole(http)
    assert s["kv_blocks_used"] == 0 and s["sequences_running"] == 0, s


# ---- /metrics --------------------------------------------------------------------------------------------------


def test_metrics(http, client):
    before = metrics(http)
    client.chat.completions.create(model=TINY, messages=chat_messages("Egypt"), max_tokens=5, temperature=0)
    http.post("/v1/chat/completions", json=_chat(model="nope"))
    m = metrics(http)
    req = m["realm_web_requests_total"]
    key = (("endpoint", "/v1/chat/completions"), ("status", "200"))
    assert req[key] == before["realm_web_requests_total"].get(key, 0) + 1
    assert req[(("endpoint", "/v1/chat/completions"), ("status", "404"))] >= 1
    label = (("model", TINY),)
    assert m["realm_web_generation_tokens_total"][label] >= before["realm_web_generation_tokens_total"][label] + 1
    assert m["realm_web_time_to_first_token_seconds_count"][label] > 0
    assert m["realm_web_inter_token_latency_seconds_count"][label] > 0
    assert 0 <= m["realm_web_prefix_cache_hit_ratio"][label] <= 1
    assert m["realm_web_kv_blocks_total"][label] == m["realm_web_kv_blocks_used"][label] + m[
        "realm_web_kv_blocks_free"][label]  # fmt: skip
    assert (("model", QWEN_ID),) in m["realm_web_kv_blocks_total"]


# ---- load: 32 streaming clients on loopback ------------------------------------------------------------------


async def _stream_chat(ac: httpx.AsyncClient, country: str, max_tokens: int) -> dict:
    body = _chat(messages=chat_messages(country), max_tokens=max_tokens, stream=True,
                 stream_options={"include_usage": True})  # fmt: skip
    t0 = time.perf_counter()
    times, parts, finish, usage, done = [], [], None, None, False
    async with ac.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            if line == "data: [DONE]":
                done = True
                continue
            obj = json.loads(line[6:])
            assert "error" not in obj, obj
            if obj["choices"]:
                ch = obj["choices"][0]
                if ch["delta"].get("content"):
                    times.append(time.perf_counter() - t0)
                    parts.append(ch["delta"]["content"])
                finish = ch["finish_reason"] or finish
            else:
                usage = obj["usage"]
    return {"text": "".join(parts), "times": times, "finish": finish, "usage": usage, "done": done}


def test_load_32_streaming_clients(http, server, capsys):
    """32 clients × 3 requests each, streamed, greedy: every response complete and equal to its solo output, no
    error, the KV pool whole afterwards (read from /metrics); TTFT and inter-token latency printed."""
    n_clients, per_client, max_tokens = 32, 3, 24

    async def main() -> tuple[dict, list[tuple[str, dict]]]:
        headers = {"Authorization": f"Bearer {KEY}"}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120, limits=limits) as ac:
            solo = {c: await _stream_chat(ac, c, max_tokens) for c in CAPITALS}

            async def client(i: int) -> list[tuple[str, dict]]:
                out = []
                for j in range(per_client):
                    country = CAPITALS[(i + j) % len(CAPITALS)]
                    out.append((country, await _stream_chat(ac, country, max_tokens)))
                return out

            t0 = time.perf_counter()
            results = await asyncio.gather(*(client(i) for i in range(n_clients)))
            return solo, [r for rs in results for r in rs] + [("wall", {"s": time.perf_counter() - t0})]

    solo, results = asyncio.run(main())
    wall = results.pop()[1]["s"]
    assert len(results) == n_clients * per_client
    for country, res in results:
        assert res["done"] and res["finish"] is not None and res["usage"] is not None, res
        assert res["text"] == solo[country]["text"], country
        assert res["usage"]["completion_tokens"] == solo[country]["usage"]["completion_tokens"]
    ttft = sorted(r["times"][0] for _, r in results if r["times"])
    itl = sorted(b - a for _, r in results for a, b in zip(r["times"], r["times"][1:], strict=False))
    tokens = sum(r["usage"]["completion_tokens"] for _, r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3

    report = {"clients": n_clients, "requests": len(results), "wall_s": round(wall, 2),
              "requests_per_s": round(len(results) / wall, 2), "tokens_per_s": round(tokens / wall, 1),
              "ttft_ms_p50": round(pct(ttft, 0.5), 1), "ttft_ms_p99": round(pct(ttft, 0.99), 1),
              "itl_ms_p50": round(pct(itl, 0.5), 2), "itl_ms_p99": round(pct(itl, 0.99), 2),
              "itl_ms_mean": round(statistics.mean(itl) * 1e3, 2)}  # fmt: skip
    out = Path(__file__).resolve().parent.parent / "build" / "test-reports"
    out.mkdir(parents=True, exist_ok=True)
    (out / "server-load.json").write_text(json.dumps(report, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nserver load test ({server.pool.entries[TINY].model.device.info.name}): {report}")
    s = wait_pool_whole(http)
    assert s["kv_blocks_used"] == 0 and s["sequences_running"] == 0 and s["sequences_waiting"] == 0, s


# ---- keys and limits on their own servers --------------------------------------------------------------------


def _limited(**kw):
    srv = make_server("127.0.0.1", 0, files=None, **kw)
    srv.start()
    assert srv.wait_ready(60)
    return srv


def test_requests_per_minute_per_key(dev):
    srv = _limited(api_keys=KEYS, rate_limit=3)
    try:
        a = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEYS[0]}"})
        b = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEYS[1]}"})
        assert [a.get("/v1/models").status_code for _ in range(3)] == [200] * 3
        r = a.get("/v1/models")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert b.get("/v1/models").status_code == 200  # another key has its own budget
        assert httpx.get(srv.url + "health").status_code == 200  # /health is not limited
    finally:
        srv.shutdown()


def test_concurrent_requests_per_key(dev):
    srv = _limited(max_concurrent=1)  # no keys: the limit is per client address
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        with c.stream("POST", "/v1/chat/completions", json=_chat(max_tokens=300, ignore_eos=True, stream=True)) as s:
            lines = s.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            r = c.post("/v1/chat/completions", json=_chat())
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        t0 = time.monotonic()
        while (r := c.post("/v1/chat/completions", json=_chat())).status_code == 429 and time.monotonic() - t0 < 5:
            time.sleep(0.05)  # the stream's slot is released when its response ends
        assert r.status_code == 200
    finally:
        srv.shutdown()


def test_health_is_503_while_loading(dev, monkeypatch):
    import realm_web

    gate = threading.Event()
    real_load = realm_web.load

    def slow_load(*a, **kw):
        gate.wait(30)
        return real_load(*a, **kw)

    monkeypatch.setattr(realm_web, "load", slow_load)
    srv = make_server("127.0.0.1", 0, files=None)
    srv.start()
    try:
        r = httpx.get(srv.url + "health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["Retry-After"] == "1"
        r = httpx.post(srv.url + "v1/chat/completions", json=_chat())
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        gate.set()
        assert srv.wait_ready(60)
        assert httpx.get(srv.url + "health").status_code == 200
        assert httpx.post(srv.url + "v1/chat/completions", json=_chat()).status_code == 200
    finally:
        gate.set()
        srv.shutdown()


def test_a_model_that_cannot_load_is_reported(dev, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 60)
    srv = _limited(models=[BUNDLED, broken])
    try:
        r = httpx.get(srv.url + "health")
        assert r.status_code == 200 and r.json()["models"] == {TINY: "ready", "broken": "error"}
        assert "GGUF" in r.json()["errors"]["broken"]
        r = httpx.post(srv.url + "v1/chat/completions", json=_chat(model="broken"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert httpx.post(srv.url + "v1/chat/completions", json=_chat()).status_code == 200
    finally:
        srv.shutdown()


def test_cors_only_when_asked(dev):
    srv = _limited(cors_origins=["http://example.test"])
    try:
        h = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        r = httpx.options(srv.url + "v1/chat/completions", headers=h)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://example.test"
        r = httpx.get(srv.url + "v1/models", headers={"Origin": "http://example.test"})
        assert r.headers["access-control-allow-origin"] == "http://example.test"
    finally:
        srv.shutdown()


def test_no_cors_by_default(http):
    r = http.get("/v1/models", headers={"Origin": "http://example.test"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cli_binds_loopback_by_default(dev, monkeypatch):
    from realm_web import cli
    from realm_web.server import app

    served = []
    monkeypatch.setattr(app.Server, "serve_forever", lambda self: served.append(self))
    assert cli.main(["serve", "--port", "0", "--api-key", "k", "-np", "2"]) == 0
    (srv,) = served
    srv.socket.close()
    assert srv.server_address[0] == "127.0.0.1" and list(srv.pool.entries) == [TINY]
    assert srv.pool.options["n_parallel"] == 2
