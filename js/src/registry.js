// Model registry: the built-in records (builtin-models.json) plus the app's own (appConfig.models), and the
// checks made before any byte is downloaded: is the id known, does this browser have WebGPU and the features
// the model needs.

import { DeviceError, NoWebGPUError, RealmError, UnknownModelError } from "./errors.js";

let builtinPromise = null;

function builtinRecords() {
  builtinPromise ??= (async () => {
    const url = new URL("./builtin-models.json", import.meta.url);
    const res = await fetch(url);
    if (!res.ok) throw new RealmError(`could not load the built-in model list ${url}: HTTP ${res.status}`);
    return res.json();
  })().catch((e) => {
    builtinPromise = null; // let a later call try again
    throw e;
  });
  return builtinPromise;
}

/** The page's base URL (the document in a page, the script in a worker). */
function pageBase() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

/**
 * Every model record known to the SDK: the built-in ones, then those of `appConfig.models`. An app record
 * replaces the built-in record with the same id (in place).
 * @param {{models?: object[]}} [appConfig]
 * @returns {Promise<object[]>} copies of the records, relative URLs as written
 */
export async function listModels(appConfig = {}) {
  const byId = new Map();
  for (const r of await builtinRecords()) byId.set(r.id, r);
  for (const r of appConfig.models ?? []) {
    if (!r || typeof r.id !== "string" || !(r.url || r.urls?.length)) {
      throw new RealmError(`appConfig.models: every record needs an "id" and a "url" or "urls": ${JSON.stringify(r)}`);
    }
    byId.set(r.id, r);
  }
  return [...byId.values()].map((r) => structuredClone(r));
}

/** True for what createEngine treats as a URL rather than a registry id. */
function looksLikeUrl(s) {
  return /^[a-z][a-z0-9+.-]*:/i.test(s) || /^\.{0,2}\//.test(s) || /\.gguf([?#].*)?$/i.test(s);
}

function absoluteUrl(url, base) {
  const u = new URL(url, base);
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new RealmError(`unsupported model URL ${u.href}: only http(s) URLs can be downloaded`);
  }
  return u.href;
}

/**
 * The record for a registry id or a .gguf URL, with `urls` made absolute.
 * A URL gives a record without sha256 or size (nothing to verify) unless `appConfig.models` names it.
 * @param {string} modelIdOrUrl
 * @param {object} [appConfig]
 * @returns {Promise<object>}
 */
export async function resolveModel(modelIdOrUrl, appConfig = {}) {
  if (typeof modelIdOrUrl !== "string" || !modelIdOrUrl) {
    throw new RealmError(`createEngine needs a model id or a .gguf URL, got ${JSON.stringify(modelIdOrUrl)}`);
  }
  const models = await listModels(appConfig);
  const record = models.find((r) => r.id === modelIdOrUrl);
  if (record) {
    const base = new URL(appConfig.modelBaseUrl ?? new URL("../models/", import.meta.url), pageBase());
    const urls = (record.urls ?? [record.url]).map((u) => absoluteUrl(u, base));
    return { ...record, urls, url: urls[0] };
  }
  if (looksLikeUrl(modelIdOrUrl)) {
    const url = absoluteUrl(modelIdOrUrl, pageBase());
    return { id: modelIdOrUrl, url, urls: [url], sha256: null, size: null, required_features: [] };
  }
  const known = models.map((r) => r.id);
  throw new UnknownModelError(
    `unknown model "${modelIdOrUrl}": it is not in the registry (known ids: ${known.join(", ") || "none"}). ` +
      "Pass a .gguf URL, or add a record to appConfig.models.",
    { modelId: modelIdOrUrl, knownIds: known },
  );
}

/**
 * Check that this browser can run `record` before anything is downloaded: WebGPU present, an adapter,
 * and every feature in `record.required_features`. Throws NoWebGPUError or DeviceError.
 * @param {object} record
 * @returns {Promise<GPUAdapter>}
 */
export async function checkWebGPU(record) {
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) {
    const why = globalThis.isSecureContext === false
      ? "this page is not a secure context: WebGPU needs https:// or http://localhost"
      : "this browser has no WebGPU (navigator.gpu is missing)";
    throw new NoWebGPUError(
      `WebGPU is not available: ${why}. Use a browser with WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ ` +
        "on Windows), or enable it (e.g. chrome://flags/#enable-unsafe-webgpu, and hardware acceleration on).",
    );
  }
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    throw new NoWebGPUError(`WebGPU is present but requesting a GPU adapter failed: ${e?.message ?? e}`);
  }
  if (!adapter) {
    throw new NoWebGPUError(
      "WebGPU is present but no GPU adapter is available: the GPU may be blocklisted or hardware acceleration " +
        "turned off. Check chrome://gpu (or about:support) and enable WebGPU/hardware acceleration.",
    );
  }
  const missing = (record.required_features ?? []).filter((f) => !adapter.features.has(f));
  if (missing.length) {
    throw new DeviceError(
      `model "${record.id}" needs the WebGPU feature${missing.length > 1 ? "s" : ""} ${missing.join(", ")}, ` +
        `which this GPU adapter does not offer (it has: ${[...adapter.features].sort().join(", ") || "none"}).`,
      { missing },
    );
  }
  return adapter;
}
