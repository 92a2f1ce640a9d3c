// The realm-web demo page: pick a model, load it with a progress bar, chat with streamed replies.
//
// Query parameters: ?model=<id or .gguf URL> preselects a model, &autoload=1 loads it at once, &worker=0 runs
// the engine on the page instead of in a Web Worker, &mode=complete continues the prompt text as is (no chat
// template: base models without chat training answer best that way).
// `document.body.dataset.state` is one of idle | loading |
// ready | generating | error ("error": no usable engine; an error that leaves the engine usable, such as a
// full context, shows in #error with the state back at "ready"). `window.realmDemo` exposes the engine.

import { createEngine, listModels } from "/js/index.js";

const $ = (id) => document.getElementById(id);
const ui = {
  select: $("model-select"), load: $("load"), info: $("model-info"), progress: $("progress"),
  progressText: $("progress-text"), temperature: $("temperature"), maxTokens: $("max-tokens"), error: $("error"),
  messages: $("messages"), form: $("chat-form"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  clear: $("clear"), stats: $("stats"), mode: $("mode"),
};
const params = new URLSearchParams(location.search);
if (params.get("mode") === "complete") ui.mode.value = "complete";

/** Page state, also reachable from tests and the console as `window.realmDemo`. */
const demo = { state: "idle", engine: null, records: [], appConfig: {}, history: [], abort: null };
window.realmDemo = demo;

// ---- state and messages ------------------------------------------------------------------------------------

function setState(state) {
  demo.state = state;
  document.body.dataset.state = state;
  const busy = state === "loading" || state === "generating";
  ui.select.disabled = busy || demo.records.length === 0;
  ui.load.disabled = busy || demo.records.length === 0;
  ui.prompt.disabled = state !== "ready" && state !== "generating";
  ui.send.disabled = state !== "ready";
  ui.stop.disabled = state !== "generating";
  ui.clear.disabled = state === "generating";
}

const HINTS = {
  NoWebGPUError: "WebGPU is not available, so the model cannot run in this browser.",
  DeviceLostError: "The GPU device was lost (driver reset, GPU process crash or the tab was in the background " +
    "too long). Load the model again.",
  OutOfMemoryError: "The model does not fit in this GPU's memory. Try a smaller model or close other GPU-heavy tabs.",
  DownloadError: "Downloading the model failed. Check the connection and try again; the download resumes.",
  IntegrityError: "The downloaded model is corrupt: its SHA-256 does not match the registry. It was not used.",
  ModelError: "This model file cannot be run: it is malformed, truncated or uses something realm-web does not " +
    "support.",
  UnknownModelError: "That model is not in the registry.",
  ContextLengthError: "The conversation no longer fits in the model's context window. Press Clear to start over.",
};

function showError(err) {
  const name = err?.name ?? "Error";
  const hint = HINTS[name] ?? "Something went wrong.";
  ui.error.textContent = `${hint}\n${name}: ${err?.message ?? err}`;
  ui.error.dataset.name = name;
  ui.error.dataset.code = err?.code ?? "";
  ui.error.hidden = false;
  if (!HINTS[name]) console.error(err);
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  delete ui.error.dataset.name;
  delete ui.error.dataset.code;
}

/** A message bubble whose text content is exactly the message (notes are CSS-generated, out of the text). */
function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.dataset.who = role === "user" ? "You" : "Model";
  const body = document.createTextNode(text);
  el.append(body);
  ui.messages.append(el);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  return { el, body };
}

function addNote(el, text) {
  el.dataset.note = text;
}

// ---- the model list -----------------------------------------------------------------------------------------

const mib = (bytes) => (bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0);

function describe(r) {
  if (r.error) return `unreadable by realm-web: ${r.error}`;
  const parts = [r.architecture, r.quant];
  if (r.size) parts.push(`${mib(r.size)} MiB download`);
  if (r.estimated_gpu_memory) parts.push(`~${mib(r.estimated_gpu_memory)} MiB GPU memory`);
  if (r.context_length) parts.push(`context ${r.context_length}`);
  if (r.required_features?.length) parts.push(`needs ${r.required_features.join(", ")}`);
  return parts.filter(Boolean).join(" · ");
}

async function servedRecords() {
  try {
    const res = await fetch("/models/registry.json", { cache: "no-cache" });
    return res.ok ? await res.json() : [];
  } catch {
    return []; // the page may be hosted without `realm-web serve`: the built-in models remain
  }
}

async function fillModels() {
  demo.appConfig = { models: await servedRecords() };
  demo.records = await listModels(demo.appConfig);
  const wanted = params.get("model");
  if (wanted && !demo.records.some((r) => r.id === wanted)) {
    demo.records.push({ id: wanted, url: wanted }); // a .gguf URL: createEngine takes those too
  }
  ui.select.replaceChildren(
    ...demo.records.map((r) => {
      const opt = document.createElement("option");
      opt.value = r.id;
      opt.textContent = r.size ? `${r.id} (${mib(r.size)} MiB)` : r.id;
      return opt;
    }),
  );
  if (wanted) ui.select.value = wanted;
  showInfo();
}

function showInfo() {
  const r = demo.records.find((x) => x.id === ui.select.value);
  ui.info.textContent = r ? describe(r) : "";
}

// ---- load ---------------------------------------------------------------------------------------------------

async function load() {
  const id = ui.select.value;
  clearError();
  if (demo.engine) {
    const old = demo.engine;
    demo.engine = null;
    await old.unload().catch(() => {});
  }
  setState("loading");
  ui.progress.value = 0;
  ui.progressText.textContent = `Loading ${id}…`;
  ui.stats.textContent = "";
  try {
    demo.engine = await createEngine(id, {
      appConfig: demo.appConfig,
      useWorker: params.get("worker") !== "0",
      initProgressCallback: ({ progress, text }) => {
        ui.progress.value = progress;
        if (text) ui.progressText.textContent = text;
      },
    });
    ui.progress.value = 1;
    const m = demo.engine.modelInfo ?? {};
    if (m.adapter) ui.progressText.textContent = `Ready: ${id} on ${m.adapter} (context ${m.n_ctx} tokens)`;
    setState("ready");
    ui.prompt.focus();
  } catch (e) {
    showError(e);
    ui.progressText.textContent = `Loading ${id} failed.`;
    setState("error");
  }
}

// ---- chat ---------------------------------------------------------------------------------------------------

function numberFrom(input, fallback) {
  const v = Number(input.value);
  return Number.isFinite(v) && input.value !== "" ? v : fallback;
}

/** The runtime's own figures (usage) and the page's wall clock: TTFT, then tokens/s after the first token. */
function showStats(usage, t0, tFirst, tLast, nPieces) {
  const parts = [];
  if (usage?.decode_tokens_per_s != null) parts.push(`decode ${usage.decode_tokens_per_s.toFixed(1)} tok/s`);
  if (usage?.prefill_tokens_per_s != null) parts.push(`prefill ${usage.prefill_tokens_per_s.toFixed(1)} tok/s`);
  if (usage?.time_to_first_token_ms != null) parts.push(`TTFT ${usage.time_to_first_token_ms.toFixed(0)} ms`);
  if (usage?.completion_tokens != null) parts.push(`${usage.completion_tokens} tokens`);
  const page = [];
  if (tFirst != null) page.push(`TTFT ${(tFirst - t0).toFixed(0)} ms`);
  if (nPieces > 1 && tLast > tFirst) page.push(`${((nPieces - 1) / ((tLast - tFirst) / 1000)).toFixed(1)} tok/s`);
  page.push(`${((performance.now() - t0) / 1000).toFixed(2)} s in all`);
  ui.stats.textContent = `${parts.join(" · ")}${parts.length ? " · " : ""}measured on the page: ${page.join(", ")}`;
}

async function send() {
  const text = ui.prompt.value.trim();
  if (!text || demo.state !== "ready" || !demo.engine) return;
  const mode = ui.mode.value;
  clearError();
  ui.prompt.value = "";
  demo.history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.el.classList.add("streaming");
  const ctrl = new AbortController();
  demo.abort = ctrl;
  setState("generating");
  const t0 = performance.now();
  let tFirst = null;
  let tLast = null;
  let usage = null;
  let nPieces = 0;
  const onPiece = (piece) => {
    tLast = performance.now();
    tFirst ??= tLast;
    nPieces += 1;
    reply.body.appendData(piece);
    ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  const temperature = numberFrom(ui.temperature, 0.7);
  const maxTokens = Math.max(1, Math.round(numberFrom(ui.maxTokens, 128)));
  try {
    if (mode === "complete") {
      // a plain continuation of this message alone; the conversation is not sent
      demo.history.pop();
      const out = await demo.engine.generate(text, { maxTokens, temperature, onToken: onPiece, signal: ctrl.signal });
      usage = out.usage;
    } else {
      const stream = await demo.engine.chat.completions.create({
        messages: demo.history, stream: true, temperature, max_tokens: maxTokens, signal: ctrl.signal,
      });
      for await (const chunk of stream) {
        const piece = chunk.choices?.[0]?.delta?.content;
        if (piece) onPiece(piece);
        if (chunk.usage) usage = chunk.usage;
      }
    }
    if (usage?.finish_reason === "length") addNote(reply.el, "(max tokens reached)");
    if (mode === "chat") demo.history.push({ role: "assistant", content: reply.body.data });
    showStats(usage, t0, tFirst, tLast, nPieces);
    setState("ready");
  } catch (e) {
    if (e?.name === "AbortError") {
      addNote(reply.el, "(stopped)");
      if (mode === "chat") demo.history.push({ role: "assistant", content: reply.body.data });
      showStats(e.usage ?? null, t0, tFirst, tLast, nPieces);
      setState("ready");
    } else {
      if (mode === "chat") demo.history.pop(); // the turn failed: do not send it again
      addNote(reply.el, "(failed)");
      showError(e);
      const recoverable = e?.name === "ContextLengthError" || e?.code === "invalid_request";
      if (recoverable) {
        setState("ready");
      } else {
        const dead = demo.engine;
        demo.engine = null;
        dead?.unload().catch(() => {});
        ui.progressText.textContent = "The model is no longer loaded.";
        ui.progress.value = 0;
        setState("error");
      }
    }
  } finally {
    reply.el.classList.remove("streaming");
    demo.abort = null;
  }
}

// ---- wiring -------------------------------------------------------------------------------------------------

ui.select.addEventListener("change", showInfo);
ui.load.addEventListener("click", load);
ui.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => demo.abort?.abort());
ui.clear.addEventListener("click", () => {
  demo.history = [];
  ui.messages.replaceChildren();
  ui.stats.textContent = "";
  if (ui.error.dataset.name === "ContextLengthError") clearError();
});

setState("idle");
try {
  await fillModels();
  setState("idle");
  if (!("gpu" in navigator)) {
    showError({ name: "NoWebGPUError", message: "navigator.gpu is missing in this browser." });
  }
  if (params.get("autoload") === "1") await load();
} catch (e) {
  showError(e);
  setState("error");
}
