// Node unit tests for the parts of the SDK that need no browser: `npm test` (node --test).
// The browser paths (download/resume/OPFS, worker, Pyodide, WebGPU) are exercised in headless Chromium.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";

import { chatRequest } from "../src/engine.js";
import * as errors from "../src/errors.js";
import { Sha256, sha256Text } from "../src/sha256.js";

test("Sha256 matches node:crypto for every split of the input", () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 65537]) {
    const data = new Uint8Array(randomBytes(n));
    const want = createHash("sha256").update(data).digest("hex");
    const h = new Sha256();
    for (let p = 0; p < n; ) {
      const k = Math.min(n - p, 1 + ((p * 7919) % 150));
      h.update(data.subarray(p, p + k));
      p += k;
    }
    assert.equal(h.hex(), want, `length ${n}`);
  }
  assert.equal(sha256Text("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"); // FIPS 180-2 B.1
});

test("errors keep their class, code and details across serialization", () => {
  const e = new errors.IntegrityError("bad file", { expected: "aa", actual: "bb", url: "http://x/m.gguf" });
  assert.equal(e.name, "IntegrityError");
  assert.equal(e.code, "integrity");
  const back = errors.deserializeError(structuredClone(errors.serializeError(e)));
  assert.ok(back instanceof errors.IntegrityError && back instanceof errors.RealmError);
  assert.deepEqual([back.message, back.code, back.expected, back.actual], ["bad file", "integrity", "aa", "bb"]);
  const plain = errors.deserializeError(errors.serializeError(new TypeError("boom")));
  assert.deepEqual([plain.name, plain.code, plain.message], ["RealmError", "internal", "TypeError: boom"]);
});

test("Python exceptions map to SDK classes by type", () => {
  const py = (type, last) => Object.assign(new Error(`Traceback (most recent call last):\n  File "x.py"\n${last}\n`), { type });
  const cases = [
    ["GGUFError", "realm_web.errors.GGUFError: bad magic", errors.ModelError, "bad magic"],
    ["SourceError", "realm_web.errors.SourceError: short read", errors.ModelError, "short read"],
    ["ContextError", "realm_web.model.ContextError: too long", errors.ContextLengthError, "too long"],
    ["DeviceLostError", "realm_web.errors.DeviceLostError: lost", errors.DeviceLostError, "lost"],
    ["OutOfMemoryError", "realm_web.errors.OutOfMemoryError: oom", errors.OutOfMemoryError, "oom"],
    ["DeviceError", "realm_web.errors.DeviceError: limit", errors.DeviceError, "limit"],
  ];
  for (const [type, last, Cls, msg] of cases) {
    const e = errors.fromPythonError(py(type, last));
    assert.ok(e instanceof Cls, type);
    assert.equal(e.message, msg);
    assert.equal(e.pythonType, type);
  }
  const internal = errors.fromPythonError(py("KeyError", "KeyError: 'x'"));
  assert.equal(internal.code, "internal");
  assert.match(internal.message, /KeyError.*'x'/);
  assert.match(internal.pythonTraceback, /Traceback/);
});

test("chat parameters map to the Python request", () => {
  const req = chatRequest({
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: [{ type: "text", text: "Hi " }, { type: "text", text: "there" }] }],
    max_tokens: 16, temperature: 0.5, top_p: 0.9, top_k: 40, repetition_penalty: 1.1, seed: 7, stop: "\n", stream: true,
    presence_penalty: 0, user: "ignored",
  });
  assert.deepEqual(req, {
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi there" }],
    max_tokens: 16, temperature: 0.5, top_p: 0.9, top_k: 40, repeat_penalty: 1.1, seed: 7, stop: ["\n"],
  });
  assert.equal(chatRequest({ messages: [{ role: "user", content: "x" }], max_completion_tokens: 3, max_tokens: 9 }).max_tokens, 3);
  assert.equal(chatRequest({ messages: [{ role: "user", content: "x" }], cache_salt: "tenant-a" }).cache_salt, "tenant-a");
  const m = [{ role: "user", content: "x" }];
  assert.deepEqual(chatRequest({ messages: m, lora: [{ id: "a" }, { id: "b", scale: 0.5 }] }).lora, [{ id: "a", scale: 1 }, { id: "b", scale: 0.5 }]);
  for (const lora of ["a", [{ scale: 1 }], [{ id: "a", scale: "1" }], [{ id: "a", scale: Infinity }]]) {
    assert.throws(() => chatRequest({ messages: m, lora }), (e) => e instanceof errors.RealmError && e.code === "invalid_request");
  }
  for (const bad of [{ messages: [] }, { messages: [{ role: "user", content: "x" }], n: 2 }, { messages: [{ role: "user", content: "x" }], frequency_penalty: 0.5 }]) {
    assert.throws(() => chatRequest(bad), (e) => e instanceof errors.RealmError && e.code === "invalid_request");
  }
});
