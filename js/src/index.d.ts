// Type declarations for realm-web (src/index.js). Kept by hand next to the JavaScript it describes.

/** What `engine.benchmark()` measures (the fields of `realm-web bench --json`). */
export interface BenchmarkResult {
  model: string;
  adapter: string;
  load_s: number;
  n_prompt: number;
  /** Seconds from submitting the prompt to having the first new token id. */
  ttft_s: number;
  prefill_tok_s: number;
  n_gen: number;
  decode_tok_s: number;
}

/** A model registry record (builtin-models.json, appConfig.models, the server's /models/registry.json). */
export interface ModelRecord {
  /** The id createEngine accepts. */
  id: string;
  /** Where the .gguf is: absolute, or relative to appConfig.modelBaseUrl. */
  url?: string;
  /** Mirrors tried in order (instead of `url`). */
  urls?: string[];
  /** Lowercase hex SHA-256 of the file; downloads are verified against it. */
  sha256?: string | null;
  /** File size in bytes. */
  size?: number | null;
  architecture?: string;
  /** The most common weight type, e.g. "Q4_K". */
  quant?: string;
  /** The context length the model was trained with. */
  context_length?: number;
  /** Rough bytes of GPU memory: weights + f32 KV cache at context_length + activations. */
  estimated_gpu_memory?: number;
  /** WebGPU features the model needs; checked against the adapter before anything is downloaded. */
  required_features?: string[];
  /** A draft model: the ids of the models it drafts for (speculative decoding: `createEngine(id, { draftModel })`). */
  draft_for?: string[];
  /** "lora": a LoRA adapter (`engine.loadLora(id)`), not a model. */
  type?: "lora";
  /** A LoRA adapter: the ids of the models it applies to. */
  base_models?: string[];
  /** A LoRA adapter's rank and alpha. */
  rank?: number;
  alpha?: number;
}

/** Adapters a request uses: names from `engine.loadLora`, each with its scale (default 1). */
export type LoraSelection = { id: string; scale?: number }[];

/** A loaded adapter, as `engine.listLoras()` reports it. */
export interface LoraInfo {
  name: string;
  alpha: number;
  rank: number;
  targets: string[];
  source: string;
  in_use: number;
  [key: string]: unknown;
}

export interface AppConfig {
  /** Extra registry records; one with a built-in record's id replaces it. */
  models?: ModelRecord[];
  /** The web bundle folder (manifest.json, pyodide/, wheels/). Default: `new URL("../runtime/", import.meta.url)`. */
  runtimeUrl?: string | URL;
  /** Base for relative record URLs. Default: `new URL("../models/", import.meta.url)`. */
  modelBaseUrl?: string | URL;
  /**
   * Keep downloaded models in the browser (OPFS), verified and resumable. Default true. With false (or where
   * the browser has no OPFS) the model is streamed from the server with HTTP Range requests on every load,
   * without SHA-256 verification.
   */
  useCache?: boolean;
  /** Context window to allocate (default: the model's, capped by realm_web). */
  n_ctx?: number;
  /** A Jinja chat template overriding the file's. */
  chat_template?: string;
  /** Advanced: tokens per engine step (the largest prompt chunk processed at once). */
  max_batch?: number;
  /** The most requests decoded together (default 4; `nParallel` overrides it). */
  n_parallel?: number;
  /** Advanced: positions in the paged KV cache shared by all requests (default: n_parallel contexts of ≤ 1024). */
  kv_cache_tokens?: number;
  /** The KV cache's element type: "f16" (default; packed in u32, half the memory, within 1e-3 of f32) or "f32". */
  kv_type?: "f16" | "f32";
  /** Advanced: restrict the optional WebGPU features used (e.g. [] to run without subgroups). */
  features?: string[];
}

export type InitProgressPhase = "download" | "runtime" | "upload" | "ready";

export interface InitProgressReport {
  /** Overall progress, 0..1 (monotone; 1 once ready). */
  progress: number;
  /** A human-readable line, e.g. "Downloading realm-tiny-facts: 1.2 / 2.2 MiB (54%)". */
  text: string;
  /** Seconds since createEngine was called. */
  timeElapsed: number;
  /** What this report is about; download and runtime loading run in parallel. */
  phase: InitProgressPhase;
  /** Bytes (download, upload) or steps (runtime) done in this phase. */
  loaded: number;
  /** Total of `loaded`, or null when unknown. */
  total: number | null;
}

export type InitProgressCallback = (report: InitProgressReport) => void;

export interface CreateEngineOptions {
  initProgressCallback?: InitProgressCallback;
  appConfig?: AppConfig;
  /** Run the engine in a module Web Worker (default true) so the page never freezes. */
  useWorker?: boolean;
  /**
   * The most requests decoded together (default 4): concurrent `chat.completions.create` and `generate` calls
   * on one engine share each step's read of the weights; more wait in a queue. Same as `appConfig.n_parallel`.
   */
  nParallel?: number;
  /**
   * Speculative decoding with a draft model: a registry id (e.g. "realm-tiny-facts-draft") or a .gguf URL of a
   * smaller model with the same vocabulary. The output is exactly what the model alone gives (greedy: token for
   * token; sampled: the same distribution); usage reports draft_tokens and accepted_draft_tokens.
   */
  draftModel?: string;
  /** "ngram": draft from the conversation itself (prompt lookup), no draft model. */
  speculative?: "ngram";
  /** Most draft tokens per step (default 16). */
  draftMax?: number;
  /** Fewest draft tokens worth verifying (default 0). */
  draftMin?: number;
  /** Stop drafting when the draft's top probability falls below this (default 0.8). */
  draftPMin?: number;
}

/** What realm_web reports about the loaded model and the GPU. */
export interface ModelInfo {
  architecture: string;
  /** The allocated context window. */
  n_ctx: number;
  n_ctx_train: number;
  n_vocab: number;
  n_layer: number;
  n_embd: number;
  /** The GPU adapter's name. */
  adapter: string;
  adapter_type?: string;
  features: string[];
  subgroups: boolean;
  max_storage_binding?: number;
  max_buffer?: number;
  /** The KV cache's element type. */
  kv_type?: "f16" | "f32";
  [key: string]: unknown;
}

/** Token counts and timings of one request (OpenAI's usage plus realm_web's timings). */
export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  time_to_first_token_ms: number;
  prefill_ms: number;
  decode_ms: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  [key: string]: unknown;
}

export type FinishReason = "stop" | "length";

export interface GenerateOptions {
  /** Tokens to generate at most (realm_web's default: 256). */
  maxTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repeatPenalty?: number;
  seed?: number;
  /** Stop strings: generation ends before any of them; they are not part of the text. */
  stop?: string | string[];
  /** LoRA adapters for this request (loaded with `engine.loadLora`). */
  lora?: LoraSelection;
  /** Called with each non-empty piece of text as it is generated. A throw stops generation and rejects. */
  onToken?: (piece: string) => void;
  /** Abort: generation stops at the next token and the promise rejects with AbortError. */
  signal?: AbortSignal;
}

export interface GenerateResult {
  text: string;
  finishReason: FinishReason;
  usage: CompletionUsage;
}

export interface ChatCompletionContentPartText {
  type: "text";
  text: string;
}

export interface ChatCompletionMessageParam {
  role: "system" | "user" | "assistant" | (string & {});
  content: string | ChatCompletionContentPartText[] | null;
}

/** OpenAI's chat.completions.create parameters (the supported subset, plus top_k, min_p, signal). */
export interface ChatCompletionCreateParamsBase {
  messages: ChatCompletionMessageParam[];
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  /** llama.cpp-style repetition penalty (1 = off). frequency/presence penalties are not supported. */
  repetition_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  /** Prefix-cache tenant: requests share cached prompt blocks only with requests of the same salt. */
  cache_salt?: string | null;
  /** realm_web extension: LoRA adapters for this request (names from `engine.loadLora`, each with its scale). */
  lora?: LoraSelection | null;
  /** Only 1. */
  n?: number | null;
  /** Abort the request (with stream: rejects the iteration with AbortError). */
  signal?: AbortSignal;
}

export interface ChatCompletionCreateParamsNonStreaming extends ChatCompletionCreateParamsBase {
  stream?: false | null;
}

export interface ChatCompletionCreateParamsStreaming extends ChatCompletionCreateParamsBase {
  stream: true;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: Array<{
    index: 0;
    message: { role: "assistant"; content: string };
    finish_reason: FinishReason;
    logprobs: null;
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: Array<{
    index: 0;
    /** `role` on the first chunk only; the last chunk's delta is empty. */
    delta: { role?: "assistant"; content?: string };
    /** null until the last chunk. */
    finish_reason: FinishReason | null;
    logprobs: null;
  }>;
  /** On the last chunk only. */
  usage?: CompletionUsage;
}

export interface Completions {
  /** With stream: true, an async iterable of chunks; leaving the loop early stops generation. */
  create(params: ChatCompletionCreateParamsStreaming): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(params: ChatCompletionCreateParamsNonStreaming): Promise<ChatCompletion>;
  create(params: ChatCompletionCreateParamsBase & { stream?: boolean | null }): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
}

export interface RuntimeStats {
  model: string | null;
  adapter: string | null;
  load: {
    /** "download" (fetched now), "cache" (OPFS) or "network" (streamed with Range requests). */
    source: "download" | "cache" | "network";
    downloadMs: number;
    runtimeMs: number;
    uploadMs: number;
    totalMs: number;
  } | null;
  lastUsage: CompletionUsage | null;
  /** The batched engine's counters now. */
  engine: EngineStats | null;
}

/** The batched engine's counters (what `realm-web serve`'s /metrics reports natively). */
export interface EngineStats {
  /** Requests queued, not yet admitted (or preempted, to be recomputed). */
  waiting: number;
  /** Requests holding a slot and KV blocks (prefilling or decoding). */
  running: number;
  kv_blocks_total: number;
  kv_blocks_free: number;
  kv_blocks_used: number;
  /** Free blocks that still hold a cached prefix. */
  kv_blocks_cached: number;
  /** GPU memory of the KV pool (K and V of every layer), in bytes. */
  kv_cache_bytes: number;
  prefix_cache_hit_tokens: number;
  prefix_cache_query_tokens: number;
  preemptions: number;
  /** Engine steps run so far (each one read of the weights for every request in it). */
  steps: number;
}

/**
 * A loaded model. Concurrent `chat.completions.create` and `generate` calls are decoded together (up to
 * `nParallel` at once, the rest queued); other calls run one at a time, in call order.
 */
export declare class Engine {
  private constructor();
  /** The id (or URL) the engine was created with. */
  readonly modelId: string;
  /** The registry record, URLs made absolute. */
  readonly modelRecord: ModelRecord & { urls: string[] };
  readonly modelInfo: ModelInfo;
  readonly chat: { completions: Completions };
  /** Complete a raw prompt (no chat template). */
  generate(prompt: string, options?: GenerateOptions): Promise<GenerateResult>;
  /** Stop the generation that is running now (it rejects with AbortError). */
  interruptGenerate(): void;
  tokenize(text: string): Promise<number[]>;
  detokenize(ids: ArrayLike<number>): Promise<string>;
  /** Teacher-forced logits: one row of n_vocab scores per position of `ids` (with `lora`: through those adapters). */
  logits(ids: ArrayLike<number>, options?: { lora?: LoraSelection }): Promise<Float32Array[]>;
  /**
   * Load a LoRA adapter (registry id of a `type: "lora"` record, or a .gguf URL): downloaded and cached like a
   * model, checked against it, streamed to the GPU. Resolves to its name, which requests pass in `lora`.
   */
  loadLora(idOrUrl: string, options?: { name?: string; onProgress?: (report: InitProgressReport) => void }): Promise<string>;
  /** Unload an adapter: new requests cannot use it; those using it finish with it. */
  unloadLora(name: string): Promise<void>;
  /** The loaded adapters by name. */
  listLoras(): Promise<Record<string, LoraInfo>>;
  runtimeStats(): Promise<RuntimeStats>;
  /**
   * Prefill and decode tokens/s measured as `realm-web bench` does natively (greedy, end-of-text ignored).
   * `promptIds`: the exact prompt token ids to prefill (`nPrompt` is then their count); without it, BOS then a
   * fixed spread of `nPrompt` ids. `nStreams`: instead, the aggregate decode tokens/s of that many concurrent
   * greedy streams, each with its own `nPrompt`-token prompt (the result's `n_streams`, `per_stream_tok_s`).
   * `speculative` (an engine with `draftModel` or `speculative`): instead, decode tokens/s with and without its
   * drafts at that temperature (`plain_decode_tok_s`, `speculative_decode_tok_s`, `speedup`, `acceptance_rate`,
   * `mean_accepted`).
   */
  benchmark(options?: {
    nPrompt?: number;
    nGen?: number;
    promptIds?: ArrayLike<number>;
    nStreams?: number;
    speculative?: { temperature?: number };
    /** With nStreams: each stream's adapters (stream i takes lora[i % lora.length]). */
    lora?: LoraSelection[];
    /** Instead, `realm-web bench --profile`'s report of nGen decode steps (GPU µs per kernel, host time per step). */
    profile?: boolean;
  }): Promise<BenchmarkResult & { n_streams?: number; per_stream_tok_s?: number; [key: string]: unknown }>;
  /** Free the GPU memory and stop the worker; the engine cannot be used afterwards. */
  unload(): Promise<void>;
  /** Test hook, not for apps: destroy the GPU device so later requests fail with DeviceLostError. */
  _debugLoseDevice(): Promise<void>;
}

/**
 * Load a model (registry id or .gguf URL) and return an engine once its weights are on the GPU.
 * Checks WebGPU (NoWebGPUError) and the model's required features (DeviceError) before downloading.
 */
export declare function createEngine(modelIdOrUrl: string, options?: CreateEngineOptions): Promise<Engine>;

/** Built-in records followed by appConfig.models (which replace built-ins with the same id). */
export declare function listModels(appConfig?: AppConfig): Promise<ModelRecord[]>;

/** Whether the model is downloaded and verified in this browser's storage. */
export declare function hasModelInCache(modelIdOrUrl: string, appConfig?: AppConfig): Promise<boolean>;

/** Delete a model's stored file and any partial download; with no id, every model realm-web stored. */
export declare function deleteModelCache(modelIdOrUrl?: string, appConfig?: AppConfig): Promise<void>;

/** Base class of every SDK error. */
export declare class RealmError extends Error {
  constructor(message: string, details?: Record<string, unknown>);
  /**
   * Stable machine-readable code: the class's code ("no_webgpu", "device_lost", ...), or for plain
   * RealmErrors one of "realm_error", "invalid_request", "unloaded", "runtime_unavailable",
   * "unsupported_browser", "worker_failed", "runtime_crashed", "internal".
   */
  code: string;
  /** The Python exception class, for errors raised by realm_web. */
  pythonType?: string;
  /** The Python traceback of an internal error. */
  pythonTraceback?: string;
  [key: string]: unknown;
}
/** No WebGPU in this browser/context, or no GPU adapter. */
export declare class NoWebGPUError extends RealmError {}
/** The GPU cannot do what is asked (missing feature: `.missing`; beyond a device limit). */
export declare class DeviceError extends RealmError {
  missing?: string[];
}
/** The GPU device was lost; create a new engine. */
export declare class DeviceLostError extends DeviceError {}
/** GPU memory ran out (the model or its context does not fit). */
export declare class OutOfMemoryError extends DeviceError {}
/** Malformed or unsupported GGUF, or its bytes could not be read. */
export declare class ModelError extends RealmError {}
/** A download failed (HTTP status, network, storage full). */
export declare class DownloadError extends RealmError {
  url?: string;
  status?: number;
}
/** A download's SHA-256 (or size) differs from its registry record. */
export declare class IntegrityError extends RealmError {
  url?: string;
  expected?: string | null;
  actual?: string | null;
}
/** The model id is in no registry. */
export declare class UnknownModelError extends RealmError {
  modelId: string;
  knownIds: string[];
}
/** The prompt plus completion does not fit in the context window. */
export declare class ContextLengthError extends RealmError {}
/** The request was aborted through its AbortSignal (or interruptGenerate). */
export declare class AbortError extends RealmError {
  /** The text generated before the abort. */
  partialText?: string;
  /** Usage up to the abort (null when aborted before it started). */
  usage?: CompletionUsage | null;
}
