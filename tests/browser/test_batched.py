"""The batched engine in Chromium (Pyodide + SwiftShader behind the SDK): concurrent requests on one engine are
decoded together and give exactly what each gives alone; an AbortSignal cancels one request and no other; the
KV pool is whole again afterwards."""

from __future__ import annotations

from test_browser import setup_page

PROMPTS = [f"The capital of {c} is" for c in ("France", "Germany", "Italy", "Spain")]


def test_concurrent_requests_equal_their_solo_outputs(page, native_model):
    want = [native_model.generate(p, max_tokens=12, temperature=0) for p in PROMPTS]
    want = ["".join(w) for w in want]
    setup_page(page)
    got = page.evaluate(
        """async (prompts) => {
            const e = await R.engine(R.model, { nParallel: 4 });
            const opts = (i) => i % 2 ? { maxTokens: 12, temperature: 1.0, topK: 0, topP: 1, minP: 0, seed: 40 + i }
                                      : { maxTokens: 12, temperature: 0 };
            const solo = [];
            for (const [i, p] of prompts.entries()) solo.push((await e.generate(p, opts(i))).text);
            const s0 = (await e.runtimeStats()).engine;
            const together = (await Promise.all(prompts.map((p, i) => e.generate(p, opts(i))))).map((r) => r.text);
            const s1 = (await e.runtimeStats()).engine;
            const messages = [{ role: 'user', content: 'What is the capital of Italy?' }];
            const chat = await Promise.all([0, 1].map(() => e.chat.completions.create({
                messages, max_tokens: 8, temperature: 0 })));
            return { solo, together, steps: s1.steps - s0.steps, s1,
                     chat: chat.map((c) => c.choices[0].message.content) };
        }""",
        PROMPTS,
    )
    assert got["together"] == got["solo"]
    assert got["solo"][0] == want[0] and got["solo"][2] == want[2]  # greedy: the native engine's tokens
    assert got["solo"][1] != got["solo"][3]
    solo_tokens = 4 * 12
    assert got["steps"] < solo_tokens / 2, got  # decoded in shared steps, not one request after another
    chat = native_model.chat([{"role": "user", "content": "What is the capital of Italy?"}], stream=False,
                             max_tokens=8, temperature=0)  # fmt: skip
    assert got["chat"][0] == got["chat"][1] == chat
    s = got["s1"]
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0


def test_an_abort_signal_cancels_one_request_and_no_other(page):
    setup_page(page)
    got = page.evaluate(
        """async (prompts) => {
            const e = await R.engine(R.model, { nParallel: 3 });
            const opts = { maxTokens: 40, temperature: 0 };
            const alone = [(await e.generate(prompts[1], opts)).text, (await e.generate(prompts[2], opts)).text];
            const ctrl = new AbortController();
            let seen = 0;
            const runs = [  // the middle one ("France": a long reply) is cancelled after its third piece
                e.generate(prompts[1], opts),
                e.generate(prompts[0], {
                    ...opts, signal: ctrl.signal, onToken: () => { if (++seen === 3) ctrl.abort(); } }),
                e.generate(prompts[2], opts),
            ].map((p) => p.then((r) => ({ text: r.text }), (err) => R.error(err)));
            const [a, b, c] = await Promise.all(runs);
            const s = (await e.runtimeStats()).engine;
            return { alone, a, b, c, s };
        }""",
        PROMPTS,
    )
    assert got["b"]["name"] == "AbortError" and 3 <= got["b"]["usage"]["completion_tokens"] < 40
    assert [got["a"]["text"], got["c"]["text"]] == got["alone"]
    s = got["s"]
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0
