// The page-side transports to a Host: WorkerClient talks to worker.js by messages, LocalClient calls a Host
// on the page. Both expose call(op, args, {onProgress, onToken, signal}) and terminate().

import { AbortError, RealmError, deserializeError, serializeError } from "./errors.js";
import { Host } from "./host.js";

export class WorkerClient {
  constructor() {
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "realm-web" });
    this.pending = new Map(); // id -> {resolve, reject, onProgress, onToken}
    this.nextId = 1;
    this.dead = null;
    this.worker.onmessage = (event) => this._receive(event.data);
    this.worker.onerror = (event) => {
      event.preventDefault?.();
      const why = event.message || "its script failed to load (are the SDK files served next to index.js?)";
      this._fail(new RealmError(`the realm-web worker failed: ${why}`, { code: "worker_failed" }));
    };
    this.worker.onmessageerror = () => this._fail(new RealmError("a message from the realm-web worker could not be read", { code: "worker_failed" }));
  }

  call(op, args, { onProgress, onToken, signal } = {}) {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const onAbort = () => this.worker.postMessage({ id, op: "abort" });
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => signal?.removeEventListener("abort", onAbort);
      this.pending.set(id, {
        onProgress, onToken,
        resolve: (v) => (done(), resolve(v)),
        reject: (e) => (done(), reject(e)),
      });
      this.worker.postMessage({ id, op, args });
    });
  }

  _receive(msg) {
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === "progress") p.onProgress?.(msg.report);
    else if (msg.type === "token") p.onToken?.(msg.piece);
    else {
      this.pending.delete(msg.id);
      if (msg.type === "result") p.resolve(msg.value);
      else p.reject(deserializeError(msg.error));
    }
  }

  _fail(err) {
    this.dead ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  terminate() {
    this.worker.terminate();
    this._fail(new RealmError("the engine was unloaded", { code: "unloaded" }));
  }
}

export class LocalClient {
  constructor() {
    this.host = new Host();
  }

  async call(op, args, { onProgress, onToken, signal } = {}) {
    const abort = { aborted: false };
    const onAbort = () => (abort.aborted = true);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      // Structured-clone the arguments as postMessage would, so both modes see the same values.
      return await this.host.handle(op, structuredClone(args), { onProgress, onToken, abort });
    } catch (e) {
      throw e instanceof RealmError ? e : deserializeError(serializeError(e));
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  terminate() {}
}

/** The AbortError for a request aborted before it started. */
export function abortedBeforeStart(signal) {
  const reason = signal?.reason;
  if (reason instanceof AbortError) return reason;
  return new AbortError("the request was aborted before it started", { partialText: "", usage: null });
}
