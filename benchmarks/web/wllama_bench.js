// The wllama half of benchmarks/browser_peers.py: load a GGUF with wllama (llama.cpp compiled to wasm), prefill
// the exact prompt token ids, then decode greedily one token at a time, EOS ignored, timed on the page.
//
// wllama 2.x's low-level API is used (3.x only takes text prompts): every call is one message to wllama's worker,
// where llama.cpp runs. Prefill = decode(prompt ids) then samplingSample() -> the first new token id. Each decode
// step = samplingAccept([id]), decode([id]), samplingSample() -> the next id: the loop of wllama's own
// createCompletion. Before timing, an 8-token prefill and one step run and the KV cache is cleared (warm-up, as
// realm_web's bench does).

import { Wllama } from "./node_modules/@wllama/wllama/esm/index.js";
import { capture } from "./wllama_log.js";

const base = new URL("./node_modules/@wllama/wllama/esm/", import.meta.url);
const PATHS = {
  "single-thread/wllama.wasm": new URL("single-thread/wllama.wasm", base).href,
  "multi-thread/wllama.wasm": new URL("multi-thread/wllama.wasm", base).href,
};

/**
 * @param {{modelUrl: string, prompt: number[], nGen: number, nCtx: number, nThreads: number}} args
 * @returns {Promise<object>} load_s, ttft_s, decode_s (seconds), the generated ids, the threads used
 */
export async function run({ modelUrl, prompt, nGen, nCtx, nThreads }) {
  const { logger, step } = capture();
  const wllama = new Wllama(PATHS, { logger });

  const t0 = performance.now();
  await step("loading the model", () =>
    wllama.loadModelFromUrl(modelUrl, {
      n_ctx: nCtx,
      n_batch: Math.max(512, prompt.length),
      n_threads: nThreads,
      seed: 0,
      useCache: true, // as an app would: download into the browser cache, then load from it
    }),
  );
  const loadS = (performance.now() - t0) / 1000;

  const greedy = { temp: 0, top_k: 1 };
  await step("warm-up", async () => {
    await wllama.samplingInit(greedy);
    await wllama.decode(prompt.slice(0, 8), {});
    const { token } = await wllama.samplingSample();
    await wllama.samplingAccept([token]);
    await wllama.decode([token], {});
    await wllama.samplingSample();
    await wllama.kvClear();
  });

  const ids = [];
  await wllama.samplingInit(greedy);
  const tSubmit = performance.now();
  const first = await step("prefill", async () => {
    await wllama.decode(prompt, {});
    return (await wllama.samplingSample()).token;
  });
  const tFirst = performance.now();
  ids.push(first);
  await step("decode", async () => {
    for (let i = 0; i < nGen; i++) {
      const last = ids[ids.length - 1];
      await wllama.samplingAccept([last]);
      await wllama.decode([last], {});
      ids.push((await wllama.samplingSample()).token);
    }
  });
  const tEnd = performance.now();
  const result = {
    load_s: loadS,
    ttft_s: (tFirst - tSubmit) / 1000,
    decode_s: (tEnd - tFirst) / 1000,
    ids,
    threads: wllama.getNumThreads(),
    multithread: wllama.isMultithread(),
    cross_origin_isolated: self.crossOriginIsolated,
    libllama: Wllama.getLibllamaVersion(),
    n_ctx: wllama.getLoadedContextInfo().n_ctx,
  };
  await wllama.exit();
  return result;
}
