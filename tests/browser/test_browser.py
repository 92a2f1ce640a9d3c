"""The engine in a real browser: Pyodide + WebGPU (SwiftShader) behind the JS SDK, against the native path.

Each test gets a fresh browser context (empty model cache) and creates its engine through the SDK, as a page
would: `createEngine(id)` resolves the id in the registry, downloads and verifies the model into OPFS, loads
Pyodide and the realm_web wheel from build/web/, and streams the weights into the GPU.
"""

from __future__ import annotations

import json
import math
import re

from bundled_corpus import answer

from realm_web.registry import record_for

PROMPT = "The capital of France is"
MODEL = "realm-tiny-facts"

# Page-side helpers: `R.engine(id, opts)` creates an engine and records progress reports.
HELPERS = """
window.R = {
  sdk: await import('/js/index.js'),
  model: MODEL_ID,
  prompt: PROMPT_TEXT,
  progress: [],
  async engine(id, opts = {}) {
    return await this.sdk.createEngine(id, { initProgressCallback: (p) => this.progress.push(p), ...opts });
  },
  error(e) { return { name: e?.name, message: String(e?.message ?? e), code: e?.code ?? null,
                      partialText: e?.partialText ?? null, usage: e?.usage ?? null }; },
};
""".replace("MODEL_ID", json.dumps(MODEL)).replace("PROMPT_TEXT", json.dumps(PROMPT))


def setup_page(page):
    page.evaluate(f"async () => {{ {HELPERS} }}")


def rel_rms(a: list[float], b: list[float]) -> float:
    num = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    den = sum(y * y for y in b)
    return math.sqrt(num / den)


def test_demo_page_loads_the_bundled_model_through_the_registry_and_answers_paris(new_page, chromium, server):
    page = new_page(chromium, server.url + f"?model={MODEL}&autoload=1&mode=complete")
    page.wait_for_selector("body[data-state=ready]")
    assert page.input_value("#model-select") == MODEL
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "8")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_selector("body[data-state=ready]")
    reply = page.locator(".msg.assistant").last.text_content()
    assert reply.startswith(" Paris"), reply
    stats = page.text_content("#stats")
    assert "tok/s" in stats and "TTFT" in stats, stats
    assert page.is_hidden("#error")
    # the model came through the registry into the browser's cache, verified
    cached = page.evaluate(f"async () => (await import('/js/index.js')).hasModelInCache('{MODEL}')")
    assert cached is True


def test_demo_page_chat_mode_answers_its_own_example_question(new_page, chromium, server, native_model):
    """The page's default mode is Chat and its placeholder suggests a question: the bundled model answers it
    (through its chat template, in the browser) as it does natively, and the follow-up in the same conversation."""
    page = new_page(chromium, server.url + f"?model={MODEL}&autoload=1")
    page.wait_for_selector("body[data-state=ready]")
    assert page.input_value("#mode") == "chat"
    question = page.get_attribute("#prompt", "placeholder").split("e.g.", 1)[1].strip()
    country = re.fullmatch(r"What is the capital of (.+)\?", question)[1]
    page.fill("#temperature", "0")
    history = []
    for turn, (q, c) in enumerate(((question, country), ("What is the capital of Germany?", "Germany")), 1):
        page.fill("#prompt", q)
        page.click("#send")
        page.wait_for_function(
            "n => document.body.dataset.state === 'ready' && document.querySelectorAll('.msg.assistant').length === n",
            arg=turn,
        )
        reply = page.locator(".msg.assistant").last.text_content()
        history.append({"role": "user", "content": q})
        want = native_model.chat(history, stream=False, temperature=0, max_tokens=128)
        history.append({"role": "assistant", "content": want})
        print(f"{q} -> {reply!r}")
        assert reply == want == answer(c), (q, reply, want)
    assert page.is_hidden("#error")


def test_teacher_forced_logits_match_the_native_path(page, native_model):
    text = PROMPT + " Paris, a city on the Seine."
    ids = native_model.tokenize(text)
    setup_page(page)
    got = page.evaluate(
        """async ([ids, text]) => {
            const e = await R.engine(R.model);
            const rows = await e.logits(ids);
            const out = { ids: await e.tokenize(text), rows: rows.map((r) => Array.from(r)),
                          info: e.modelInfo };
            await e.unload();
            return out;
        }""",
        [ids, text],
    )
    assert got["ids"] == ids  # the same tokenizer code, under Pyodide
    ref = native_model.logits(ids)
    assert len(got["rows"]) == len(ids)
    worst = max(rel_rms(row, ref[i].tolist()) for i, row in enumerate(got["rows"]))
    assert worst < 1e-3, f"browser vs native logits: max relative RMS {worst:.3g}"  # as the native fidelity test
    assert got["info"]["adapter_type"] in ("CPU", "GPU")


def test_chat_streams_chunks_with_the_native_tokens_and_usage_last(page, native_model):
    messages = [{"role": "user", "content": "What is the capital of Germany?"}]
    want = native_model.chat(messages, stream=False, max_tokens=12, temperature=0)
    setup_page(page)
    got = page.evaluate(
        """async (messages) => {
            const e = await R.engine(R.model);
            const chunks = [];
            const stream = await e.chat.completions.create({ messages, stream: true, max_tokens: 12, temperature: 0 });
            for await (const c of stream) chunks.push({ c, t: performance.now() });
            const whole = await e.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
            return { chunks, whole };
        }""",
        messages,
    )
    chunks = [x["c"] for x in got["chunks"]]
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert "".join(pieces) == want  # same tokens as the native engine
    assert sum(1 for p in pieces if p) > 1  # streamed piece by piece, not as one block
    assert got["chunks"][0]["t"] < got["chunks"][-1]["t"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last["usage"]["completion_tokens"] >= sum(1 for p in pieces if p)
    assert last["usage"]["prompt_tokens"] == len(native_model.chat_ids(messages))
    assert any(c["choices"][0].get("finish_reason") in ("stop", "length") for c in chunks)
    whole = got["whole"]
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == want
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + whole["usage"]["completion_tokens"]


def test_generate_is_cancelled_by_an_abort_signal_and_the_engine_goes_on(page):
    setup_page(page)
    got = page.evaluate(
        """async (prompt) => {
            const e = await R.engine(R.model);
            const ctrl = new AbortController();
            const pieces = [];
            let aborted;
            try {
                const onToken = (p) => { pieces.push(p); if (pieces.length === 2) ctrl.abort(); };
                await e.generate(prompt, { maxTokens: 200, temperature: 0, signal: ctrl.signal, onToken });
            } catch (err) { aborted = R.error(err); }
            let pre;
            try { await e.generate(prompt, { signal: AbortSignal.abort() }); } catch (err) { pre = R.error(err); }
            const after = await e.generate(prompt, { maxTokens: 3, temperature: 0 });
            return { pieces, aborted, pre, after };
        }""",
        PROMPT,
    )
    a = got["aborted"]
    assert a is not None and a["name"] == "AbortError", a
    assert 2 <= a["usage"]["completion_tokens"] < 200  # stopped at the next token, not run to the end
    assert a["partialText"] == "".join(got["pieces"])[: len(a["partialText"])] and a["partialText"]
    assert got["pre"]["name"] == "AbortError"  # an already-aborted signal never starts
    assert got["after"]["text"].startswith(" Paris")  # the engine is still usable
    assert got["after"]["usage"]["completion_tokens"] == 3


def test_breaking_out_of_a_stream_stops_generation(page):
    setup_page(page)
    got = page.evaluate(
        """async () => {
            const e = await R.engine(R.model);
            const stream = await e.chat.completions.create({
                messages: [{ role: 'user', content: 'Hello!' }], stream: true, max_tokens: 300,
                temperature: 1, seed: 7 });
            let n = 0;
            for await (const c of stream) { if (++n === 2) break; }
            const next = await e.generate(R.prompt, { maxTokens: 2, temperature: 0 });
            return { n, next };
        }"""
    )
    assert got["n"] == 2
    assert got["next"]["text"].startswith(" Paris")


def test_a_corrupt_download_is_refused_and_does_not_poison_the_cache(page, server):
    rec = record_for(server.files.models["realm-tiny-facts.gguf"])
    bad = {**rec, "id": "corrupt", "url": "/faulty/corrupt/realm-tiny-facts.gguf"}
    good = {**rec, "id": "good", "url": "/models/realm-tiny-facts.gguf"}
    setup_page(page)
    got = page.evaluate(
        """async ([bad, good]) => {
            let err;
            try { await R.engine('corrupt', { appConfig: { models: [bad] } }); } catch (e) { err = R.error(e); }
            const cachedBad = await R.sdk.hasModelInCache('corrupt', { models: [bad] });
            const e = await R.engine('good', { appConfig: { models: [good] } });
            const out = await e.generate(R.prompt, { maxTokens: 2, temperature: 0 });
            const cachedGood = await R.sdk.hasModelInCache('good', { models: [good] });
            return { err, cachedBad, text: out.text, cachedGood };
        }""",
        [bad, good],
    )
    assert got["err"]["name"] == "IntegrityError", got["err"]
    assert rec["sha256"] in got["err"]["message"]  # names the expected hash
    assert got["cachedBad"] is False
    assert got["text"].startswith(" Paris")
    assert got["cachedGood"] is True


def test_an_interrupted_download_resumes_with_a_range_request(page, server):
    rec = record_for(server.files.models["realm-tiny-facts.gguf"])
    flaky = {**rec, "id": "flaky", "url": "/faulty/drop/realm-tiny-facts.gguf"}
    setup_page(page)
    got = page.evaluate(
        """async ([flaky, prompt]) => {
            const e = await R.engine('flaky', { appConfig: { models: [flaky] } });
            return (await e.generate(prompt, { maxTokens: 2, temperature: 0 })).text;
        }""",
        [flaky, PROMPT],
    )
    assert got.startswith(" Paris")
    ranges = [r for p, r in server.request_log if p == "/faulty/drop/realm-tiny-facts.gguf" and r]
    assert any(r.startswith("bytes=262144-") for r in ranges), ranges  # resumed where the connection died


def test_bad_model_and_wrong_url_give_clear_errors(page, server, tmp_path):
    setup_page(page)
    got = page.evaluate(
        """async () => {
            const out = {};
            for (const [k, url] of [['missing', '/models/no-such-model.gguf'], ['notgguf', '/js/index.js']]) {
                try { await R.engine(url, { appConfig: { useCache: false } }); } catch (e) { out[k] = R.error(e); }
            }
            try { await R.engine('no-such-id'); } catch (e) { out.unknown = R.error(e); }
            return out;
        }"""
    )
    assert got["missing"]["name"] == "DownloadError" and "404" in got["missing"]["message"], got["missing"]
    assert "no-such-model.gguf" in got["missing"]["message"]
    assert got["notgguf"]["name"] == "ModelError", got["notgguf"]
    assert got["unknown"]["name"] == "UnknownModelError" and MODEL in got["unknown"]["message"]


def test_a_lost_device_fails_requests_with_device_lost_error(page):
    setup_page(page)
    got = page.evaluate(
        """async (prompt) => {
            const e = await R.engine(R.model);
            await e._debugLoseDevice();
            const out = {};
            try { await e.generate(prompt, { maxTokens: 2 }); } catch (err) { out.first = R.error(err); }
            try { await e.generate(prompt, { maxTokens: 2 }); } catch (err) { out.second = R.error(err); }
            return out;
        }""",
        PROMPT,
    )
    assert got["first"]["name"] == "DeviceLostError", got
    assert got["second"]["name"] == "DeviceLostError"


def test_without_webgpu_the_sdk_and_the_demo_say_so(new_page, chromium_without_webgpu, server):
    page = new_page(chromium_without_webgpu, server.url + f"?model={MODEL}&autoload=1")
    page.wait_for_selector("body[data-state=error]")
    assert page.get_attribute("#error", "data-name") == "NoWebGPUError"
    assert "WebGPU" in page.text_content("#error")
    setup_page(page)
    err = page.evaluate(f"async () => {{ try {{ await R.engine('{MODEL}'); }} catch (e) {{ return R.error(e); }} }}")
    assert err["name"] == "NoWebGPUError" and "WebGPU" in err["message"]


def test_the_engine_also_runs_on_the_page_without_a_worker(page):
    setup_page(page)
    got = page.evaluate(
        """async (prompt) => {
            const e = await R.engine(R.model, { useWorker: false });
            const out = await e.generate(prompt, { maxTokens: 4, temperature: 0 });
            await e.unload();
            return { out, phases: [...new Set(R.progress.map((p) => p.phase))], last: R.progress.at(-1) };
        }""",
        PROMPT,
    )
    assert got["out"]["text"].startswith(" Paris")
    assert {"download", "runtime", "upload", "ready"} <= set(got["phases"])
    assert got["last"]["progress"] == 1


def test_the_served_registry_lists_the_bundled_model(page, server):
    records = json.loads(page.evaluate("async () => (await fetch('/models/registry.json')).text()"))
    assert [r["id"] for r in records] == [MODEL, MODEL + "-draft", MODEL + "-lora-fiction"]
    assert records[1]["draft_for"] == [MODEL]
    assert records[2]["type"] == "lora" and records[2]["base_models"] == [MODEL]
    assert records[0]["sha256"] == record_for(server.files.models["realm-tiny-facts.gguf"])["sha256"]


def test_the_page_and_the_openai_api_share_one_server(page, server, native_model):
    """The page's origin also answers the OpenAI API (fetch from the page, same origin): the native engine's
    greedy completion of the bundled model is the one the Python API gives."""
    assert server.wait_ready(60)
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    got = page.evaluate(
        """async (body) => {
            const r = await fetch('/v1/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                      body: JSON.stringify(body)});
            return {status: r.status, json: await r.json()};
        }""",
        body,
    )
    assert got["status"] == 200
    want = "".join(native_model.generate("The capital of France is", max_tokens=4, temperature=0))
    assert got["json"]["choices"][0]["text"] == want


def test_sdk_profile_reports_the_decode_step(page, native_model):
    """engine.benchmark({profile: true}): realm-web bench --profile's report from the browser's adapter — every
    kernel of the step the native engine records for the same model, timed (SwiftShader has timestamps), and the
    step's roofline; the engine still generates afterwards. appConfig.kv_type reaches the engine: an f32 cache
    reads twice the KV bytes per step and runs the f32 kernels."""
    setup_page(page)
    got = page.evaluate(
        """async () => {
            const e = await R.engine(R.model);
            const r = await e.benchmark({ nPrompt: 8, nGen: 2, profile: true });
            const after = (await e.generate('The capital of France is', { maxTokens: 1, temperature: 0 })).text;
            const kv = e.modelInfo.kv_type;
            await e.unload();
            const e32 = await R.engine(R.model, { appConfig: { kv_type: 'f32' } });
            const r32 = await e32.benchmark({ nPrompt: 8, nGen: 2, profile: true });
            const kv32 = e32.modelInfo.kv_type;
            await e32.unload();
            return { r, after, kv, r32, kv32 };
        }"""
    )
    assert (got["kv"], got["kv32"]) == ("f16", "f32")
    c = native_model.config
    pos = got["r"]["positions"][1]  # the middle of 2 steps, where decode_bytes is taken, the same in both runs
    kv_f16 = 2 * c.n_layer * (pos + 1) * c.kv_dim * 2
    assert got["r32"]["decode_bytes"] - got["r"]["decode_bytes"] == kv_f16
    assert not any(k["name"].endswith("_f16") or "_f16_" in k["name"] for k in got["r32"]["kernels"])
    r = got["r"]
    names = [d.name for d in native_model.transformer.step(1, 1).dispatches] + ["sample"]
    assert r["dispatches_per_step"] == len(names) and r["n_steps"] == 2
    assert {k["name"].removesuffix("_sg") for k in r["kernels"]} == {n.removesuffix("_sg") for n in names}
    assert r["timestamps"] and all(k["us"] > 0 for k in r["kernels"]) and r["gpu_step_us"] > 0
    assert r["decode_bytes"] > 0 and r["copy_gbps"] > 0
    assert got["after"] == next(native_model.generate("The capital of France is", max_tokens=1, temperature=0))
