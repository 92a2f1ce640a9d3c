// The Python side: load Pyodide and the realm_web wheel from the web bundle (build/web, served at runtimeUrl)
// and drive `realm_web.web`. Used in the worker and, with useWorker: false, on the page. Every call that
// touches the GPU goes through `callPromising` (realm_web.web awaits WebGPU with run_sync, which needs JSPI).

import { DeviceLostError, RealmError, fromPythonError } from "./errors.js";

const runtimes = new Map(); // runtimeUrl -> Promise<Runtime>: one Pyodide per realm (page or worker)

/**
 * Load (once per runtime URL) Pyodide, micropip, the wheels of the manifest and `realm_web.web`.
 * @param {string} runtimeUrl absolute URL of the bundle folder (with manifest.json)
 * @param {(step: number, steps: number, text: string) => void} [onStep]
 * @returns {Promise<Runtime>}
 */
export function loadRuntime(runtimeUrl, onStep) {
  const base = runtimeUrl.endsWith("/") ? runtimeUrl : runtimeUrl + "/";
  let p = runtimes.get(base);
  if (!p) {
    p = Runtime._load(base, onStep);
    runtimes.set(base, p);
    p.catch(() => runtimes.delete(base));
  } else {
    p.then(() => onStep?.(1, 1, "Python runtime ready"), () => {});
  }
  return p;
}

export class Runtime {
  constructor(py, web, manifest) {
    this.py = py;
    this.web = web;
    this.manifest = manifest;
  }

  static async _load(base, onStep) {
    const steps = 4;
    const manifestUrl = new URL("manifest.json", base).href;
    let manifest;
    try {
      const res = await fetch(manifestUrl);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      manifest = await res.json();
    } catch (e) {
      throw new RealmError(
        `could not load the realm_web runtime manifest ${manifestUrl} (${e.message}): is appConfig.runtimeUrl right, ` +
          "and was the web bundle built (scripts/build_web.py)?",
        { code: "runtime_unavailable", url: manifestUrl },
      );
    }
    const indexURL = new URL(manifest.pyodide, base).href;
    onStep?.(0, steps, "Loading the Python runtime (Pyodide)");
    let py;
    try {
      const { loadPyodide } = await import(new URL("pyodide.mjs", indexURL).href);
      py = await loadPyodide({
        indexURL,
        packages: ["micropip"], // fetched while the interpreter boots
        stdout: (s) => console.log(`[realm_web] ${s}`),
        stderr: (s) => console.warn(`[realm_web] ${s}`),
      });
    } catch (e) {
      throw new RealmError(`could not start Pyodide from ${indexURL}: ${e?.message ?? e}`, { code: "runtime_unavailable" });
    }
    onStep?.(2, steps, "Installing realm_web");
    const micropip = py.pyimport("micropip");
    try {
      for (const wheel of manifest.wheels) await micropip.install(new URL(wheel, base).href);
    } catch (e) {
      throw new RealmError(`could not install the realm_web wheel: ${e?.message ?? e}`, { code: "runtime_unavailable" });
    } finally {
      micropip.destroy();
    }
    onStep?.(3, steps, "Importing realm_web");
    const web = py.pyimport("realm_web.web");
    onStep?.(4, steps, "Python runtime ready");
    return new Runtime(py, web, manifest);
  }

  /**
   * Parse the GGUF behind `source`, open the WebGPU device and stream the weights into it.
   * @param {{size: number, read: (offset: number, length: number) => Promise<Uint8Array>}} source
   * @param {object} options {n_ctx, max_batch, chat_template, features, draft_max, ...}; undefined values are left out
   * @param {(done: number, total: number) => void} onUpload
   * @param {{size: number, read: Function} | null} [draft] a draft model's source (speculative decoding)
   * @returns {Promise<LoadedModel>}
   */
  async loadModel(source, options, onUpload, draft = null) {
    const model = new LoadedModel(this);
    const reader = (src) => (offset, length) =>
      src.read(offset, length).catch((e) => {
        model._readError = e; // Python turns it into a SourceError; the JS error is the better one to report
        throw e;
      });
    const progress = (phase, done, total) => onUpload(done, total);
    const opts = Object.fromEntries(Object.entries(options ?? {}).filter(([, v]) => v != null));
    const load = this.web.load;
    try {
      model.handle = await load.callPromising(
        reader(source), source.size, progress, opts, draft ? reader(draft) : null, draft ? draft.size : 0,
      );
    } catch (e) {
      throw model._error(e);
    } finally {
      load.destroy();
    }
    model._bind();
    model.info = await model._call(model._info);
    return model;
  }
}

/** A model loaded on the GPU: a thin wrapper over realm_web.web.WebModel that converts values and errors. */
export class LoadedModel {
  constructor(runtime) {
    this.runtime = runtime;
    this.handle = null;
    this.info = null;
    this.lost = null; // the DeviceLostError once the GPU device is gone
    this._readError = null;
    // Python is entered by one call at a time: a call suspended in run_sync (awaiting the GPU) must not have
    // another Python call run on its stack. Calls queue here; engine steps take turns with them.
    this._turn = Promise.resolve();
    this._active = new Map(); // request id -> {resolve, reject, onToken, abort, cancelled}
    this._driving = false;
  }

  _bind() {
    // Method proxies fetched once: each attribute access on a PyProxy makes a new PyProxy to destroy.
    const h = this.handle;
    this._info = h.info;
    this._submit = h.submit;
    this._cancel = h.cancel;
    this._step = h.step;
    this._stats = h.stats;
    this._logits = h.logits;
    this._tokenize = h.tokenize;
    this._detokenize = h.detokenize;
    this._bench = h.bench;
    this._unload = h.unload;
    this._loadLora = h.load_lora;
    this._unloadLora = h.unload_lora;
    this._loras = h.loras;
  }

  /** Map a failure to an SDK error; remember device loss so later calls fail fast. */
  _error(e) {
    let err = e;
    if (e instanceof this.runtime.py.ffi.PythonError || e?.isPythonError) {
      err = this._readError && (e.type === "SourceError" || e.type === "JsException") ? this._readError : fromPythonError(e);
    } else if (!(e instanceof RealmError)) {
      const fatal = /fatal error/i.test(String(e?.message));
      err = new RealmError(`${fatal ? "the Python runtime crashed" : "internal error"}: ${e?.message ?? e}`, { code: fatal ? "runtime_crashed" : "internal" });
      if (fatal) this.lost = err;
    }
    this._readError = null;
    if (err instanceof DeviceLostError) this.lost = err;
    return err;
  }

  _checkUsable() {
    if (!this.handle) throw new RealmError("this model was unloaded", { code: "unloaded" });
    if (this.lost) {
      const Cls = this.lost.constructor;
      throw new Cls(`${this.lost.message} (the engine cannot be used any more: create a new one)`, { code: this.lost.code });
    }
  }

  /** Call into Python when no other call is in it (see _turn). */
  _call(fn, ...args) {
    const run = async () => {
      this._checkUsable();
      try {
        return toJs(await fn.callPromising(...args));
      } catch (e) {
        throw this._error(e);
      }
    };
    const result = this._turn.then(run, run);
    this._turn = result.catch(() => {});
    return result;
  }

  /**
   * Generate for one request (see realm_web.web.WebModel.submit): it joins the batched engine beside every
   * other request in flight. `onToken(piece)` runs once per token; `abort.aborted` (read before each engine
   * step) cancels this request alone.
   * @returns {Promise<object>} the usage record (finish_reason "abort" when cancelled)
   */
  async generate(request, onToken, abort = null) {
    const req = Object.fromEntries(Object.entries(request).filter(([, v]) => v != null));
    let entry = null;
    const done = new Promise((resolve, reject) => (entry = { resolve, reject, onToken, abort, cancelled: false }));
    const onEvent = (piece, finished, usage, errorType, errorMessage) => {
      if (piece) {
        try {
          entry.onToken?.(piece);
        } catch (e) {
          console.error("realm-web: onToken threw", e);
        }
      }
      if (!finished) return;
      this._active.delete(entry.id);
      if (errorType) {
        const err = this._error({ type: errorType, message: `${errorType}: ${errorMessage}`, isPythonError: true });
        entry.reject(err);
      } else {
        entry.resolve(toJs(usage));
      }
    };
    entry.id = await this._call(this._submit, req, onEvent);
    this._active.set(entry.id, entry);
    this._drive();
    return done;
  }

  /** Step the engine while any request is in flight, cancelling aborted ones between steps. */
  _drive() {
    if (this._driving) return;
    this._driving = true;
    (async () => {
      try {
        for (;;) {
          for (const r of this._active.values()) {
            if (r.abort?.aborted && !r.cancelled) {
              r.cancelled = true;
              await this._call(this._cancel, r.id);
            }
          }
          if (!(await this._call(this._step))) break;
        }
      } catch (e) {
        for (const r of this._active.values()) r.reject(e);
        this._active.clear();
      } finally {
        this._driving = false;
        if (this._active.size && !this.lost && this.handle) this._drive();
      }
    })();
  }

  /** The engine's counters: waiting, running, kv_blocks_*, prefix_cache_*. */
  async stats() {
    return this._call(this._stats);
  }

  /**
   * Stream a LoRA adapter's GGUF from `source` ({size, read}) to the GPU beside the model.
   * @returns {Promise<string>} the adapter's name (requests select it with `lora: [{id: name, scale}]`)
   */
  async loadLora(source, name = null) {
    const read = (offset, length) =>
      source.read(offset, length).catch((e) => {
        this._readError = e;
        throw e;
      });
    return this._call(this._loadLora, read, source.size, name);
  }

  async unloadLora(name) {
    return this._call(this._unloadLora, name);
  }

  /** The loaded adapters by name: {alpha, rank, targets, in_use, ...}. */
  async loras() {
    return this._call(this._loras);
  }

  /** Teacher-forced logits as one Float32Array of [ids.length * n_vocab] (row-major); `lora` as in requests. */
  async logits(ids, lora = null) {
    let bytes = await this._call(this._logits, ids, lora);
    if (bytes.byteOffset % 4) bytes = bytes.slice();
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }

  async tokenize(text) {
    return this._call(this._tokenize, text);
  }

  async detokenize(ids) {
    return this._call(this._detokenize, ids);
  }

  /**
   * `realm-web bench`'s measurement in this browser: {ttft_s, prefill_tok_s, decode_tok_s, n_prompt, n_gen, ...}.
   * `promptIds` (array of token ids, or null): the exact prompt to prefill. `nStreams`: instead, the aggregate
   * decode tokens/s of that many concurrent streams ({n_streams, decode_tok_s, per_stream_tok_s, ttft_s}).
   */
  async bench(nPrompt, nGen, promptIds = null, nStreams = null, speculative = null, lora = null, profile = false) {
    return this._call(this._bench, nPrompt, nGen, promptIds, nStreams, speculative, lora, profile);
  }

  /** Test hook: destroy the GPU device under the model (the real device-lost path). */
  async loseDevice() {
    this._checkUsable();
    const lose = this.runtime.web.lose_device;
    try {
      await lose.callPromising(this.handle);
    } catch (e) {
      throw this._error(e);
    } finally {
      lose.destroy();
    }
  }

  /** Free every GPU buffer and the device. Safe to call twice, and after a device loss. */
  async unload() {
    if (!this.handle) return;
    try {
      if (!this.lost) await this._unload.callPromising();
    } catch (e) {
      const err = this._error(e);
      if (!(err instanceof DeviceLostError)) throw err;
    } finally {
      for (const m of [this._info, this._submit, this._cancel, this._step, this._stats, this._logits, this._tokenize, this._detokenize, this._bench, this._unload, this._loadLora, this._unloadLora, this._loras]) {
        m?.destroy();
      }
      this.handle.destroy();
      this.handle = null;
    }
  }
}

/** A Python return value as plain JS (PyProxies converted and freed; JS values pass through). */
function toJs(value) {
  if (value && typeof value === "object" && typeof value.toJs === "function" && typeof value.destroy === "function") {
    const out = value.toJs({ dict_converter: Object.fromEntries });
    value.destroy();
    return out;
  }
  return value;
}
