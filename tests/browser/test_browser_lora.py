"""LoRA adapters in Chromium through the SDK: `engine.loadLora(id)` resolves the bundled adapter's registry record,
downloads and verifies it like a model and streams it to the GPU; `chat.completions.create({lora})` requests with
the adapter at two scales and without it run together, and each reply is the native engine's greedy reply with the
same adapter. Unloading, an unknown adapter and an adapter given to createEngine fail with clear errors."""

from __future__ import annotations

import pytest
from test_browser import setup_page

import realm_web
from realm_web.cli import bundled_lora, bundled_model

LORA_ID = "realm-tiny-facts-lora-fiction"
QUESTIONS = ["What is the capital of Zembla?", "What is the capital of France?"]


@pytest.fixture(scope="module")
def native_lora():
    model = realm_web.load(bundled_model(), n_parallel=4)
    model.load_lora(bundled_lora(), "fiction")
    yield model
    model.close()


def test_load_lora_and_mix_adapters_in_one_batch(page, native_lora):
    jobs = [(q, lora) for q in QUESTIONS for lora in ({"fiction": 1.0}, {"fiction": 0.5}, {})]
    want = [native_lora.chat([{"role": "user", "content": q}], stream=False, max_tokens=24, temperature=0, lora=lora)
            for q, lora in jobs]  # fmt: skip
    assert len(set(want)) > 2  # the adapter, and its scale, change the replies
    setup_page(page)
    got = page.evaluate(
        """async ([jobs, loraId]) => {
            const records = await R.sdk.listModels();
            const out = { record: records.find((r) => r.id === loraId) ?? null };
            const e = await R.engine(R.model, { nParallel: 6 });
            out.name = await e.loadLora(loraId, { name: 'fiction' });
            out.listed = await e.listLoras();
            const replies = await Promise.all(jobs.map(([q, lora]) => e.chat.completions.create({
                messages: [{ role: 'user', content: q }], max_tokens: 24, temperature: 0,
                lora: Object.entries(lora).map(([id, scale]) => ({ id, scale })) })));
            out.texts = replies.map((r) => r.choices[0].message.content);
            const bad = { messages: [{ role: 'user', content: 'x' }], lora: [{ id: 'nope' }] };
            try { await e.chat.completions.create(bad); } catch (err) { out.unknown = R.error(err); }
            await e.unloadLora('fiction');
            out.after = await e.listLoras();
            out.stats = (await e.runtimeStats()).engine;
            try { await R.engine(loraId); } catch (err) { out.asModel = R.error(err); }
            await e.unload();
            return out;
        }""",
        [[[q, lora] for q, lora in jobs], LORA_ID],
    )
    rec = got["record"]
    assert rec["type"] == "lora" and rec["base_models"] == ["realm-tiny-facts"] and len(rec["sha256"]) == 64
    assert got["name"] == "fiction" and got["listed"]["fiction"]["rank"] == rec["rank"]
    assert got["texts"] == want
    assert "no adapter named 'nope'" in got["unknown"]["message"]
    assert got["after"] == {}
    s = got["stats"]
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0
    assert got["asModel"]["code"] == "invalid_request" and "loadLora" in got["asModel"]["message"]
