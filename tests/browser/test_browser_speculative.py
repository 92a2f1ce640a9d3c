"""Speculative decoding in Chromium through the SDK: `createEngine(id, { draftModel })` downloads the bundled draft
(a registry record of its own) beside the model, and `speculative: "ngram"` drafts from the text itself; greedy
output is the native engine's plain output token for token, and usage counts the drafts."""

from __future__ import annotations

from test_browser import setup_page

DRAFT = "realm-tiny-facts-draft"
QUESTIONS = [f"What is the capital of {c}?" for c in ("France", "Japan")]


def test_draft_model_and_lookup_give_the_plain_greedy_text(page, native_model):
    want = [native_model.chat([{"role": "user", "content": q}], stream=False, max_tokens=24, temperature=0)
            for q in QUESTIONS]  # fmt: skip
    setup_page(page)
    got = page.evaluate(
        """async ([questions, draft]) => {
            const records = await R.sdk.listModels();
            const out = { record: records.find((r) => r.id === draft) ?? null };
            for (const [name, opts] of [['draft', { draftModel: draft, draftMax: 6 }],
                                        ['ngram', { speculative: 'ngram', draftMax: 6 }]]) {
                const e = await R.engine(R.model, { nParallel: 2, ...opts });
                const replies = await Promise.all(questions.map((q) => e.chat.completions.create({
                    messages: [{ role: 'user', content: q }], max_tokens: 24, temperature: 0 })));
                out[name] = { texts: replies.map((r) => r.choices[0].message.content),
                              usage: replies.map((r) => r.usage), stats: (await e.runtimeStats()).engine };
                await e.unload();
            }
            return out;
        }""",
        [QUESTIONS, DRAFT],
    )
    assert got["record"]["draft_for"] == ["realm-tiny-facts"]
    for name in ("draft", "ngram"):
        assert got[name]["texts"] == want, name
        s = got[name]["stats"]
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0
    assert got["draft"]["stats"]["accepted_draft_tokens"] > 0
    assert sum(u["accepted_draft_tokens"] for u in got["draft"]["usage"]) > 0
