// realm-web: run GGUF language models in the browser on WebGPU.
//
//   import { createEngine } from "/js/index.js";
//   const engine = await createEngine("realm-tiny-facts", { initProgressCallback: (p) => console.log(p.text) });
//   const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi!" }] });
//
// The engine (Pyodide + realm_web) runs in a module Web Worker by default; see worker.js for the protocol.

import { LocalClient, WorkerClient } from "./client.js";
import { Engine } from "./engine.js";
import { RealmError } from "./errors.js";
import { resolveModel } from "./registry.js";
import { deleteCached, isCached } from "./store.js";

export { Engine } from "./engine.js";
export {
  AbortError, ContextLengthError, DeviceError, DeviceLostError, DownloadError, IntegrityError, ModelError,
  NoWebGPUError, OutOfMemoryError, RealmError, UnknownModelError,
} from "./errors.js";
export { listModels } from "./registry.js";

function pageBase() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

/**
 * Load a model and return an engine for it. Resolves once the weights are on the GPU.
 *
 * @param {string} modelIdOrUrl a registry id (built-in or from appConfig.models) or the URL of a .gguf file
 * @param {import("./index.js").CreateEngineOptions} [options]
 * @returns {Promise<Engine>}
 * @throws {UnknownModelError | NoWebGPUError | DeviceError | DownloadError | IntegrityError | ModelError | OutOfMemoryError}
 */
export async function createEngine(
  modelIdOrUrl,
  { initProgressCallback, appConfig = {}, useWorker = true, nParallel, draftModel, speculative, draftMax, draftMin, draftPMin } = {},
) {
  const t0 = performance.now();
  const record = await resolveModel(modelIdOrUrl, appConfig);
  if (record.type === "lora") {
    throw new RealmError(`"${record.id}" is a LoRA adapter, not a model: load its base model, then engine.loadLora("${record.id}")`, { code: "invalid_request" });
  }
  const draftRecord = draftModel != null ? await resolveModel(draftModel, appConfig) : null;
  const config = {
    runtimeUrl: new URL(appConfig.runtimeUrl ?? new URL("../runtime/", import.meta.url), pageBase()).href,
    useCache: appConfig.useCache ?? true,
    n_ctx: appConfig.n_ctx,
    chat_template: appConfig.chat_template,
    max_batch: appConfig.max_batch,
    features: appConfig.features,
    n_parallel: nParallel ?? appConfig.n_parallel,
    kv_cache_tokens: appConfig.kv_cache_tokens,
    kv_type: appConfig.kv_type,
    speculative: speculative ?? appConfig.speculative,
    draft_max: draftMax ?? appConfig.draft_max,
    draft_min: draftMin ?? appConfig.draft_min,
    draft_p_min: draftPMin ?? appConfig.draft_p_min,
    ngram_n: appConfig.ngram_n,
  };
  const onProgress = (report) => {
    try {
      initProgressCallback?.({ ...report, timeElapsed: (performance.now() - t0) / 1000 });
    } catch (e) {
      console.error("realm-web: initProgressCallback threw", e);
    }
  };
  const client = useWorker ? new WorkerClient() : new LocalClient();
  try {
    const loaded = await client.call("load", { record, config, draftRecord }, { onProgress });
    return new Engine(client, record, loaded, { appConfig, useCache: config.useCache });
  } catch (e) {
    client.terminate();
    throw e;
  }
}

/**
 * Whether a model is downloaded and verified in this browser's storage.
 * @param {string} modelIdOrUrl
 * @param {object} [appConfig]
 * @returns {Promise<boolean>}
 */
export async function hasModelInCache(modelIdOrUrl, appConfig = {}) {
  return isCached(await resolveModel(modelIdOrUrl, appConfig));
}

/**
 * Delete a model's downloaded file (and any partial download) from this browser's storage; with no id,
 * every model realm-web stored.
 * @param {string} [modelIdOrUrl]
 * @param {object} [appConfig]
 * @returns {Promise<void>}
 */
export async function deleteModelCache(modelIdOrUrl, appConfig = {}) {
  await deleteCached(modelIdOrUrl == null ? null : await resolveModel(modelIdOrUrl, appConfig));
}
