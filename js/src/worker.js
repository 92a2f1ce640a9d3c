// Module Web Worker entry: runs a Host (Pyodide + the model) off the page's main thread.
//
// Message protocol (page -> worker):
//   {id, op, args}      op: "load" | "generate" | "logits" | "tokenize" | "detokenize" | "stats" |
//                           "loseDevice" | "unload"; args as Host.ops documents
//   {id, op: "abort"}   stop request `id` at its next token (generate only; other ops run to completion)
// (worker -> page):
//   {id, type: "progress", report}   load progress {progress, text, phase, loaded, total}
//   {id, type: "token", piece}       one non-empty text piece of a generate request
//   {id, type: "result", value}      the op's result (logits' Float32Array buffer is transferred)
//   {id, type: "error", error}       {name, message, code, details}: rebuilt as the same SDK error class

import { serializeError } from "./errors.js";
import { Host } from "./host.js";

const host = new Host();
const aborts = new Map(); // request id -> {aborted}: read by the per-token callback

self.onmessage = async (event) => {
  const { id, op, args } = event.data;
  if (op === "abort") {
    const flag = aborts.get(id);
    if (flag) flag.aborted = true;
    return;
  }
  const abort = { aborted: false };
  aborts.set(id, abort);
  try {
    const value = await host.handle(op, args, {
      abort,
      onProgress: (report) => self.postMessage({ id, type: "progress", report }),
      onToken: (piece) => self.postMessage({ id, type: "token", piece }),
    });
    const transfer = value?.data instanceof Float32Array ? [value.data.buffer] : [];
    self.postMessage({ id, type: "result", value }, transfer);
  } catch (e) {
    self.postMessage({ id, type: "error", error: serializeError(e) });
  } finally {
    aborts.delete(id);
  }
};
