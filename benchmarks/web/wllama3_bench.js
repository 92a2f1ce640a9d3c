// The wllama 3.x half of benchmarks/browser_peers.py: load a GGUF with wllama 3 (llama.cpp's server loop compiled
// to wasm, with llama.cpp's WebGPU backend), then one streamed raw completion of a text prompt, greedy, EOS
// ignored, timed on the page.
//
// wllama 3 takes text only, so the harness sends a text that this model's tokenizer turns into exactly the prompt's
// token count; llama.cpp's own count (usage.prompt_tokens, timings.prompt_n and cache_n) goes back for
// browser_peers.py to check. The completion asks for nGen + 1 tokens: ttft = createCompletion called -> the first
// streamed chunk carrying a token; decode = that chunk -> the last one (nGen one-token steps, each a decode and a
// sample in llama.cpp). timings_per_token makes every chunk carry llama.cpp's token count, so a chunk that carries
// two tokens (a piece held back as incomplete UTF-8) is counted right, and llama.cpp's own timings come back beside
// the page's. Before timing, a short completion of the prompt's first words warms up; cache_prompt is off so the
// timed prompt is prefilled in full.
//
// Which device ran is read from llama.cpp's log (debug level): WebGPU prints `ggml_webgpu: adapter_info ...` and
// offloads layers; without shader-f16 wllama 3 falls back to its wasm CPU path and every layer is "assigned to
// device CPU", while isSupportWebGPU() still says true. The page's own WebGPU adapter is described beside it.

import { Wllama } from "./node_modules/wllama3/esm/index.js";
import { capture } from "./wllama_log.js";

const PATHS = { default: new URL("./node_modules/wllama3/esm/wasm/wllama.wasm", import.meta.url).href };
const DEBUG = 1; // wllama's LogLevel.DEBUG: llama.cpp logs each layer's device at debug level

/** The WebGPU adapter this page gets (the one wllama's worker asks for too), or null. */
async function pageAdapter() {
  const adapter = await navigator.gpu?.requestAdapter();
  if (!adapter) return null;
  const info = adapter.info ?? {};
  return {
    description: info.description || info.architecture || info.vendor || "unknown",
    vendor: info.vendor,
    architecture: info.architecture,
    fallback: !!(info.isFallbackAdapter ?? adapter.isFallbackAdapter),
    shader_f16: adapter.features.has("shader-f16"),
    features: [...adapter.features].sort(),
  };
}

/**
 * @param {{modelUrl: string, prompt: string, warmup: string, nPrompt: number, nGen: number, nCtx: number,
 *          nThreads: number}} args
 * @returns {Promise<object>} load_s, ttft_s, decode_s (seconds), llama.cpp's timings, the device log lines
 */
export async function run({ modelUrl, prompt, warmup, nPrompt, nGen, nCtx, nThreads }) {
  const adapter = await pageAdapter();
  const { log, logger, step } = capture(true);
  const wllama = new Wllama(PATHS, { logger });
  wllama.setCompat(null); // never the CDN's compat build (this Chromium has JSPI and Memory64; nothing is online)

  const t0 = performance.now();
  await step("loading the model", () =>
    wllama.loadModelFromUrl(modelUrl, {
      n_ctx: nCtx,
      n_batch: Math.max(512, nPrompt),
      n_threads: nThreads,
      n_gpu_layers: 99999, // every layer on WebGPU where llama.cpp's WebGPU backend accepts the adapter
      n_parallel: 1, // one sequence, as the other engines
      seed: 0,
      log_level: DEBUG,
      useCache: true, // as an app would: download into the browser cache, then load from it
    }),
  );
  const loadS = (performance.now() - t0) / 1000;
  const nLoadLog = log.length;

  const greedy = { temperature: 0, top_k: 1, ignore_eos: true, cache_prompt: false, timings_per_token: true };
  await step("warm-up", () => wllama.createCompletion({ prompt: warmup, max_tokens: 2, ...greedy }));

  // each streamed chunk: [ms since submit, llama.cpp's count of tokens generated so far]
  const marks = [];
  let last = null;
  const tSubmit = performance.now();
  await step("completion", () =>
    wllama.createCompletion({
      prompt,
      max_tokens: nGen + 1,
      ...greedy,
      stream: true,
      onData: (c) => {
        marks.push([performance.now() - tSubmit, c.timings?.predicted_n ?? null]);
        last = c;
      },
    }),
  );
  const counted = marks.filter(([, n]) => n !== null && n > 0);
  if (!counted.length || !last?.timings || !last?.usage) {
    throw new Error(`wllama 3 streamed no token counts (timings_per_token): ${JSON.stringify(last)}`);
  }
  const [tFirst, nFirst] = counted[0];
  const [tLast, nLast] = counted.find(([, n]) => n >= nGen + 1) ?? counted[counted.length - 1];
  const device = /ggml_webgpu|assigned to device|offload|using device|model buffer size|backend_ptrs/;
  const result = {
    load_s: loadS,
    ttft_s: tFirst / 1000,
    decode_s: (tLast - tFirst) / 1000,
    first_n: nFirst, // tokens the first chunk carried (1 unless a piece was held back as incomplete UTF-8)
    n_tokens: nLast,
    usage: last.usage,
    timings: last.timings, // llama.cpp's own
    device_log: log.slice(0, nLoadLog).filter((l) => device.test(l)),
    threads: wllama.getNumThreads(),
    multithread: wllama.isMultithread(),
    cross_origin_isolated: self.crossOriginIsolated,
    is_support_webgpu: wllama.isSupportWebGPU(),
    libllama: Wllama.getLibllamaVersion(),
    n_ctx: wllama.getLoadedContextInfo().n_ctx,
    adapter,
  };
  await wllama.exit();
  return result;
}
