// The engine's worker-side handler: one Host owns one model. worker.js feeds it messages; with
// useWorker: false the page calls it directly. Both transports share everything below, so the two modes
// behave the same.

import { AbortError, RealmError } from "./errors.js";
import { checkWebGPU } from "./registry.js";
import { loadRuntime } from "./runtime.js";
import { openModel } from "./store.js";

const mib = (n) => (n / 2 ** 20).toFixed(1);

/**
 * Folds the three load phases (download, runtime, upload; download and runtime run in parallel) into one
 * monotone progress value. Weights are rough shares of the wall time of a first load.
 */
class LoadProgress {
  constructor(emit) {
    this.emit = emit;
    this.weight = { download: 0.45, runtime: 0.15, upload: 0.4 };
    this.done = { download: 0, runtime: 0, upload: 0 };
    this.best = 0;
  }

  /** A phase that will not happen (the model was cached, or is streamed during upload). */
  skip(phase) {
    this.weight[phase] = 0;
  }

  update(phase, fraction, loaded, total, text) {
    this.done[phase] = Math.max(this.done[phase], Math.min(1, fraction || 0));
    let sum = 0;
    let w = 0;
    for (const p in this.weight) {
      sum += this.weight[p] * this.done[p];
      w += this.weight[p];
    }
    this.best = Math.max(this.best, Math.min(0.999, sum / w));
    this.emit({ progress: this.best, text, phase, loaded, total });
  }

  ready(text) {
    this.emit({ progress: 1, text, phase: "ready", loaded: 1, total: 1 });
  }
}

function checkJSPI() {
  if (typeof WebAssembly.Suspending !== "function") {
    throw new RealmError(
      "this browser lacks WebAssembly JavaScript Promise Integration (JSPI), which the engine needs to wait for the " +
        "GPU from Python. Use Chrome or Edge 137 or newer.",
      { code: "unsupported_browser" },
    );
  }
}

export class Host {
  constructor() {
    this.model = null;
    this.record = null;
    this.loadStats = null;
    this.lastUsage = null;
  }

  /** Dispatch one operation by name (the worker message protocol's `op`). */
  handle(op, args, ctx) {
    const fn = Host.ops[op];
    if (!fn) return Promise.reject(new RealmError(`unknown engine operation ${op}`, { code: "internal" }));
    return fn.call(this, args ?? {}, ctx ?? {});
  }

  static ops = {
    /**
     * {record, config, draftRecord} -> {modelInfo, loadStats}. Checks WebGPU before anything is downloaded.
     * `draftRecord`: a draft model for speculative decoding, downloaded and cached like the model.
     */
    async load({ record, config, draftRecord }, { onProgress }) {
      if (this.model) throw new RealmError("this engine already has a model loaded", { code: "internal" });
      const t0 = performance.now();
      checkJSPI();
      await checkWebGPU(record);
      const progress = new LoadProgress((r) => onProgress?.(r));
      const stats = { source: null, downloadMs: 0, runtimeMs: 0, uploadMs: 0, totalMs: 0 };
      const runtimeP = loadRuntime(config.runtimeUrl, (i, n, text) => progress.update("runtime", i / n, i, n, text)).then(
        (rt) => {
          stats.runtimeMs = performance.now() - t0;
          return rt;
        },
      );
      const sourceP = openModel(record, {
        useCache: config.useCache !== false,
        onProgress: (p) => progress.update("download", p.total ? p.loaded / p.total : 0, p.loaded, p.total, p.text),
      }).then((src) => {
        stats.source = src.source;
        stats.downloadMs = performance.now() - t0;
        if (src.source !== "download") progress.skip("download");
        const where = { cache: "Found in the browser cache", network: "Streaming from the network" }[src.source];
        if (where) progress.update("download", 1, src.size, src.size, `${where}: ${record.id} (${mib(src.size)} MiB)`);
        return src;
      });
      const [runtime, source] = await Promise.all([runtimeP, sourceP]);
      let draft = null;
      if (draftRecord) {
        draft = await openModel(draftRecord, {
          useCache: config.useCache !== false,
          onProgress: (p) => progress.update("download", p.total ? p.loaded / p.total : 0, p.loaded, p.total, `draft: ${p.text}`),
        });
      }
      const t1 = performance.now();
      const options = {
        n_ctx: config.n_ctx, chat_template: config.chat_template, max_batch: config.max_batch, features: config.features,
        n_parallel: config.n_parallel, kv_cache_tokens: config.kv_cache_tokens, kv_type: config.kv_type, speculative: config.speculative,
        draft_max: config.draft_max, draft_min: config.draft_min, draft_p_min: config.draft_p_min, ngram_n: config.ngram_n,
      };
      this.model = await runtime.loadModel(
        source,
        options,
        (done, total) =>
          progress.update("upload", total ? done / total : 0, done, total, `Uploading weights to the GPU: ${mib(done)} / ${mib(total)} MiB`),
        draft,
      );
      this.record = record;
      stats.uploadMs = performance.now() - t1;
      stats.totalMs = performance.now() - t0;
      this.loadStats = stats;
      progress.ready(`Ready: ${record.id} on ${this.model.info.adapter} (${(stats.totalMs / 1000).toFixed(1)} s)`);
      return { modelInfo: this.model.info, loadStats: stats };
    },

    /**
     * {request} -> {text, finishReason, usage}. Concurrent calls are decoded together by the engine.
     * `onToken(piece)` per non-empty piece; `abort.aborted` is read before every engine step and cancels this
     * request alone (then AbortError with .partialText and .usage).
     */
    async generate({ request }, { onToken, abort }) {
      const model = this._model();
      let text = "";
      const usage = await model.generate(
        request,
        (piece) => {
          text += piece;
          onToken?.(piece);
        },
        abort,
      );
      this.lastUsage = usage;
      const finishReason = usage.finish_reason;
      delete usage.finish_reason;
      if (finishReason === "abort") throw new AbortError("generation was aborted", { partialText: text, usage });
      return { text, finishReason, usage };
    },

    /** {ids, lora?} -> {data: Float32Array [ids.length * nVocab], nVocab} */
    async logits({ ids, lora = null }) {
      const model = this._model();
      return { data: await model.logits(Array.from(ids, Number), lora), nVocab: model.info.n_vocab };
    },

    /**
     * {record, name, useCache} -> the adapter's name. Downloads (and caches, verifying sha256) the adapter's GGUF
     * like a model, then streams it to the GPU beside the loaded model.
     */
    async loadLora({ record, name = null, useCache = true }, { onProgress }) {
      const model = this._model();
      const source = await openModel(record, { useCache, onProgress: (p) => onProgress?.(p) });
      return model.loadLora(source, name ?? record.id);
    },

    async unloadLora({ name }) {
      return this._model().unloadLora(String(name));
    },

    async loras() {
      return this._model().loras();
    },

    async tokenize({ text }) {
      return this._model().tokenize(String(text));
    },

    async detokenize({ ids }) {
      return this._model().detokenize(Array.from(ids, Number));
    },

    /** {nPrompt, nGen, promptIds?} -> realm-web bench's figures for this model in this browser. */
    async bench({ nPrompt = 64, nGen = 64, promptIds = null, nStreams = null, speculative = null, lora = null, profile = false }) {
      const ids = promptIds == null ? null : Array.from(promptIds, Number);
      return this._model().bench(nPrompt, nGen, ids, nStreams, speculative, lora, profile);
    },

    async stats() {
      const engine = this.model ? await this.model.stats() : null;
      return { model: this.record?.id ?? null, adapter: this.model?.info?.adapter ?? null, load: this.loadStats, lastUsage: this.lastUsage, engine };
    },

    /** Test hook: destroy the GPU device (the real device-lost path). */
    async loseDevice() {
      await this._model().loseDevice();
    },

    async unload() {
      const model = this.model;
      this.model = null;
      await model?.unload();
    },
  };

  _model() {
    if (!this.model) throw new RealmError("no model is loaded (the engine was unloaded)", { code: "unloaded" });
    return this.model;
  }
}
