// The Engine a page holds: requests to a Host (in a worker or on the page) and the OpenAI-style
// chat.completions API over it. Generations run concurrently (the Python engine batches them); other calls
// (logits, tokenize, ...) keep a serial queue.

import { abortedBeforeStart } from "./client.js";
import { DeviceLostError, RealmError } from "./errors.js";
import { resolveModel } from "./registry.js";

const dropEmpty = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v != null));
const stopList = (stop) => (stop == null ? undefined : Array.isArray(stop) ? stop.map(String) : [String(stop)]);

/** `lora: [{id, scale}]` as the Python request takes it (checked here, so a typo fails before any work). */
function loraList(lora) {
  if (lora == null) return undefined;
  const bad = (msg) => new RealmError(msg, { code: "invalid_request" });
  if (!Array.isArray(lora)) throw bad("lora must be an array of {id, scale}");
  return lora.map((x, i) => {
    if (typeof x?.id !== "string" || !x.id) throw bad(`lora[${i}] needs a string id (the name loadLora returned)`);
    const scale = x.scale ?? 1;
    if (typeof scale !== "number" || !Number.isFinite(scale)) throw bad(`lora[${i}].scale must be a finite number`);
    return { id: x.id, scale };
  });
}

/** A loaded model. Create one with `createEngine`. */
export class Engine {
  /** @internal */
  constructor(client, record, loaded, { appConfig = {}, useCache = true } = {}) {
    this._client = client;
    this._appConfig = appConfig;
    this._useCache = useCache;
    this._queue = Promise.resolve();
    this._current = new Set(); // {ctrl: AbortController} of each generation in flight
    this._dead = null; // the error every later call fails with (device lost, unloaded)
    /** The id the engine was created with (registry id or URL). */
    this.modelId = record.id;
    /** The registry record (urls made absolute). */
    this.modelRecord = record;
    /** What realm_web reports about the model and device: architecture, n_ctx, n_vocab, adapter, features... */
    this.modelInfo = loaded.modelInfo;
    /** OpenAI-style chat API: `engine.chat.completions.create({messages, stream})`. */
    this.chat = { completions: { create: (params) => this._createCompletion(params) } };
  }

  /**
   * Run `op` after every earlier request (`serial`, the default), or at once beside the others (generations:
   * the engine batches them). A signal aborted while the request waits rejects it at once.
   * @internal
   */
  _enqueue(op, args, handlers = {}, serial = true) {
    const { signal } = handlers;
    if (this._dead) return Promise.reject(this._deadError());
    if (signal?.aborted) return Promise.reject(abortedBeforeStart(signal));
    let started = false;
    const run = async () => {
      if (signal?.aborted) throw abortedBeforeStart(signal);
      if (this._dead) throw this._deadError();
      started = true;
      handlers.onStart?.();
      try {
        return await this._client.call(op, args, handlers);
      } catch (e) {
        if (e instanceof DeviceLostError) this._dead = e;
        throw e;
      }
    };
    const result = serial ? this._queue.then(run, run) : run();
    if (serial) this._queue = result.catch(() => {});
    if (!signal) return result;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (!started) reject(abortedBeforeStart(signal));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      result.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
    });
  }

  _deadError() {
    const Cls = this._dead.constructor;
    return new Cls(`${this._dead.message}${this._dead instanceof DeviceLostError ? " (create a new engine)" : ""}`, { code: this._dead.code });
  }

  /**
   * One generation with a user signal and an onToken that may throw: both stop the Python loop at the next
   * token. Resolves to {text, finishReason, usage}.
   * @internal
   */
  async _generate(request, { onToken, signal } = {}) {
    const ctrl = new AbortController();
    const onUserAbort = () => ctrl.abort(signal.reason);
    if (signal?.aborted) throw abortedBeforeStart(signal);
    signal?.addEventListener("abort", onUserAbort, { once: true });
    let callbackError = null;
    const tokenHandler = (piece) => {
      if (callbackError) return;
      try {
        onToken?.(piece);
      } catch (e) {
        callbackError = e;
        ctrl.abort();
      }
    };
    const running = { ctrl };
    try {
      const result = await this._enqueue("generate", { request }, {
        onToken: tokenHandler,
        signal: ctrl.signal,
        onStart: () => this._current.add(running),
      }, false).finally(() => this._current.delete(running));
      if (callbackError) throw callbackError;
      return result;
    } catch (e) {
      if (callbackError) throw callbackError;
      throw e;
    } finally {
      signal?.removeEventListener("abort", onUserAbort);
    }
  }

  /**
   * Complete a raw prompt (no chat template).
   * @param {string} prompt
   * @param {import("./index.js").GenerateOptions} [options]
   * @returns {Promise<{text: string, finishReason: "stop"|"length", usage: object}>}
   */
  generate(prompt, { maxTokens, temperature, topP, topK, minP, repeatPenalty, seed, stop, lora, onToken, signal } = {}) {
    if (typeof prompt !== "string") return Promise.reject(new RealmError("generate(prompt): prompt must be a string"));
    let request;
    try {
      request = dropEmpty({
        prompt, max_tokens: maxTokens, temperature, top_p: topP, top_k: topK, min_p: minP, repeat_penalty: repeatPenalty,
        seed, stop: stopList(stop), lora: loraList(lora),
      });
    } catch (e) {
      return Promise.reject(e);
    }
    return this._generate(request, { onToken, signal });
  }

  /**
   * Load a LoRA adapter (a registry id of a record with `type: "lora"`, or a .gguf URL) beside the model: it is
   * downloaded and cached like a model, checked against the model, and streamed to the GPU. Requests then use
   * it by name: `chat.completions.create({messages, lora: [{id: name, scale: 1}]})`. Works while generating.
   * @param {string} idOrUrl
   * @param {{name?: string, onProgress?: (report: object) => void}} [options] `name` defaults to the record's id
   * @returns {Promise<string>} the adapter's name
   */
  async loadLora(idOrUrl, { name, onProgress } = {}) {
    const record = await resolveModel(idOrUrl, this._appConfig);
    if (record.type != null && record.type !== "lora") {
      throw new RealmError(`"${record.id}" is a model, not a LoRA adapter (its record has type "${record.type}")`, { code: "invalid_request" });
    }
    if (record.type == null && record.sha256) {
      throw new RealmError(`"${record.id}" is a model, not a LoRA adapter (its record has no type "lora")`, { code: "invalid_request" });
    }
    const bases = record.base_models ?? [];
    if (bases.length && this.modelRecord.sha256 && !bases.includes(this.modelId)) {
      throw new RealmError(`adapter "${record.id}" is made for ${bases.join(", ")}, not for "${this.modelId}"`, { code: "invalid_request" });
    }
    return this._enqueue("loadLora", { record, name: name ?? null, useCache: this._useCache }, { onProgress });
  }

  /** Unload an adapter by name: new requests cannot use it; those using it finish with it. */
  unloadLora(name) {
    return this._enqueue("unloadLora", { name });
  }

  /** The loaded adapters by name: {alpha, rank, targets, in_use, source}. */
  listLoras() {
    return this._enqueue("loras", {});
  }

  /** @internal */
  async _createCompletion(params = {}) {
    const request = chatRequest(params);
    const meta = {
      id: `chatcmpl-${globalThis.crypto?.randomUUID?.() ?? Math.random().toString(36).slice(2)}`,
      created: Math.floor(Date.now() / 1000),
      model: this.modelId,
    };
    if (!params.stream) {
      const r = await this._generate(request, { signal: params.signal });
      return {
        ...meta,
        object: "chat.completion",
        choices: [{ index: 0, message: { role: "assistant", content: r.text }, finish_reason: r.finishReason, logprobs: null }],
        usage: r.usage,
      };
    }
    return this._stream(request, meta, params.signal);
  }

  /** The streaming form: an async iterable of chat.completion.chunk; leaving the loop stops generation. */
  _stream(request, meta, signal) {
    const pieces = [];
    let wake = null;
    let settled = false;
    let result = null;
    let error = null;
    const ctrl = new AbortController();
    const onUserAbort = () => ctrl.abort(signal.reason);
    if (signal?.aborted) ctrl.abort(signal.reason);
    signal?.addEventListener("abort", onUserAbort, { once: true });
    const poke = () => {
      wake?.();
      wake = null;
    };
    const finished = this._generate(request, {
      signal: ctrl.signal,
      onToken: (piece) => {
        pieces.push(piece);
        poke();
      },
    })
      .then((r) => (result = r), (e) => (error = e))
      .finally(() => {
        settled = true;
        signal?.removeEventListener("abort", onUserAbort);
        poke();
      });
    const chunk = (delta, finishReason, usage) => ({
      ...meta,
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }],
      ...(usage ? { usage } : {}),
    });
    async function* chunks() {
      let first = true;
      try {
        for (;;) {
          if (pieces.length) {
            const content = pieces.shift();
            yield chunk(first ? { role: "assistant", content } : { content }, null);
            first = false;
          } else if (settled) {
            break;
          } else {
            await new Promise((r) => (wake = r));
          }
        }
        if (error) throw error;
        yield chunk(first ? { role: "assistant", content: "" } : {}, result.finishReason, result.usage);
      } finally {
        if (!settled) {
          ctrl.abort(); // the consumer left the loop early: stop generating
          await finished;
        }
      }
    }
    return chunks();
  }

  /** Stop every generation in flight (their promises reject with AbortError). */
  interruptGenerate() {
    for (const running of this._current) running.ctrl.abort();
  }

  /** Token ids of `text` (with the model's BOS when it adds one). @returns {Promise<number[]>} */
  tokenize(text) {
    return this._enqueue("tokenize", { text });
  }

  /** The text of token ids. @returns {Promise<string>} */
  detokenize(ids) {
    return this._enqueue("detokenize", { ids: Array.from(ids) });
  }

  /**
   * Teacher-forced logits: one Float32Array of n_vocab scores per position of `ids`.
   * @param {number[]} ids
   * @returns {Promise<Float32Array[]>}
   */
  async logits(ids, { lora } = {}) {
    const { data, nVocab } = await this._enqueue("logits", { ids: Array.from(ids), lora: loraList(lora) ?? null });
    const rows = [];
    for (let i = 0; i < data.length; i += nVocab) rows.push(data.subarray(i, i + nVocab));
    return rows;
  }

  /**
   * Measure prefill and decode speed as `realm-web bench` does natively (greedy, end-of-text ignored), so the
   * browser and native figures compare directly. `promptIds`: the exact prompt token ids to prefill (then
   * `nPrompt` is their count); without it, BOS then a fixed spread of `nPrompt` ids.
   * With `nStreams`, the aggregate decode tokens/s of that many concurrent greedy streams (each its own
   * `nPrompt`-token prompt) instead: {n_streams, decode_tok_s, per_stream_tok_s, ttft_s, ...}.
   * With `speculative: {temperature}` (an engine made with `draftModel` or `speculative`), decode tokens/s with
   * and without the drafts, the acceptance rate and the mean accepted length instead (as `realm-web bench --draft`).
   * With `nStreams` and `lora` (a list of per-stream selections [{id, scale}], cycled), the streams use those adapters.
   * With `profile: true`, `realm-web bench --profile`'s report of `nGen` decode steps instead: GPU time per kernel
   * (timestamp queries; null where the adapter has none) and host time per step.
   * @param {{nPrompt?: number, nGen?: number, promptIds?: ArrayLike<number>, nStreams?: number, speculative?: {temperature?: number}}} [options]
   * @returns {Promise<{model: string, adapter: string, n_prompt: number, ttft_s: number, prefill_tok_s: number, n_gen: number, decode_tok_s: number}>}
   */
  benchmark({ nPrompt = 64, nGen = 64, promptIds, nStreams, speculative, lora, profile = false } = {}) {
    const ids = promptIds == null ? null : Array.from(promptIds, Number);
    const perStream = lora == null ? null : lora.map((x) => loraList(x) ?? []);
    return this._enqueue("bench", { nPrompt: ids ? ids.length : nPrompt, nGen, promptIds: ids, nStreams, speculative, lora: perStream, profile: !!profile });
  }

  /** Load timings, the adapter and the usage of the last request. */
  runtimeStats() {
    return this._enqueue("stats", {});
  }

  /**
   * Test hook (not for apps): destroy the GPU device under the model, as a driver reset would, so tests can
   * check that requests then fail with DeviceLostError.
   */
  _debugLoseDevice() {
    return this._enqueue("loseDevice", {});
  }

  /** Free the GPU memory and stop the worker. The engine cannot be used afterwards. Safe to call twice. */
  async unload() {
    if (this._dead?.code === "unloaded") return;
    this.interruptGenerate();
    const lost = this._dead;
    this._dead = new RealmError("this engine was unloaded", { code: "unloaded" });
    await this._queue;
    try {
      await this._client.call("unload", {});
    } catch (e) {
      if (!lost) throw e;
    } finally {
      this._client.terminate();
    }
  }
}

function messageText(m, i) {
  if (typeof m?.content === "string") return m.content;
  if (Array.isArray(m?.content)) {
    return m.content
      .map((part) => {
        if (part?.type === "text") return part.text;
        throw new RealmError(`messages[${i}]: content part of type "${part?.type}" is not supported (text only)`, { code: "invalid_request" });
      })
      .join("");
  }
  if (m?.content == null && m?.role === "assistant") return "";
  throw new RealmError(`messages[${i}].content must be a string or a list of text parts`, { code: "invalid_request" });
}

/** OpenAI chat.completions parameters -> the Python request (realm_web.web.WebModel.generate). */
export function chatRequest(p) {
  const bad = (msg) => new RealmError(msg, { code: "invalid_request" });
  if (!Array.isArray(p.messages) || p.messages.length === 0) throw bad("chat.completions.create: messages must be a non-empty array");
  if (p.n != null && p.n !== 1) throw bad("only n = 1 is supported");
  if (p.tools?.length || p.functions?.length) throw bad("tools / function calling are not supported");
  if (p.logprobs) throw bad("logprobs are not supported");
  if (p.response_format && p.response_format.type !== "text") throw bad(`response_format ${p.response_format.type} is not supported`);
  for (const k of ["frequency_penalty", "presence_penalty"]) {
    if (p[k]) throw bad(`${k} is not supported: use repetition_penalty`);
  }
  const messages = p.messages.map((m, i) => {
    if (!m || typeof m.role !== "string") throw bad(`messages[${i}] needs a role`);
    return { role: m.role, content: messageText(m, i) };
  });
  return dropEmpty({
    messages,
    max_tokens: p.max_completion_tokens ?? p.max_tokens,
    temperature: p.temperature,
    top_p: p.top_p,
    top_k: p.top_k,
    min_p: p.min_p,
    repeat_penalty: p.repetition_penalty ?? p.repeat_penalty,
    seed: p.seed,
    stop: stopList(p.stop),
    cache_salt: p.cache_salt,
    lora: loraList(p.lora),
  });
}
