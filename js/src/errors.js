// The errors the SDK throws. Every one extends RealmError and carries a stable `.code`; they cross the
// worker boundary as plain {name, message, code, details} and are rebuilt as the same class on the page.

/** Base class of every error the SDK throws. */
export class RealmError extends Error {
  static code = "realm_error";
  /**
   * @param {string} message
   * @param {object} [details] extra fields copied onto the error (e.g. `url`, `status`, `partialText`)
   */
  constructor(message, details = undefined) {
    super(message);
    /** @type {string} */
    this.code = new.target.code;
    if (details) Object.assign(this, details);
  }
}

/** The browser has no WebGPU (`navigator.gpu` missing) or no GPU adapter. */
export class NoWebGPUError extends RealmError {
  static code = "no_webgpu";
}

/**
 * The GPU cannot do what is asked: the adapter lacks a feature the model needs (`.missing` lists them), or a
 * request goes beyond the device's limits. DeviceLostError and OutOfMemoryError are its special cases.
 */
export class DeviceError extends RealmError {
  static code = "device_error";
}

/** The GPU device was lost (driver reset, GPU process crash, destroyed). Create a new engine. */
export class DeviceLostError extends DeviceError {
  static code = "device_lost";
}

/** The GPU could not allocate memory: the model or its context does not fit. */
export class OutOfMemoryError extends DeviceError {
  static code = "out_of_memory";
}

/** The model file is malformed, truncated or uses something realm_web does not support. */
export class ModelError extends RealmError {
  static code = "model_error";
}

/** A download failed: HTTP error status, network failure, wrong URL, or no storage left. */
export class DownloadError extends RealmError {
  static code = "download_failed";
}

/** A downloaded file's SHA-256 differs from the registry's: `.expected` and `.actual` hold both. */
export class IntegrityError extends RealmError {
  static code = "integrity";
}

/** A model id is in no registry: `.knownIds` lists the ids that are. */
export class UnknownModelError extends RealmError {
  static code = "unknown_model";
}

/** The prompt plus the requested completion does not fit in the model's context window. */
export class ContextLengthError extends RealmError {
  static code = "context_length_exceeded";
}

/** A request was cancelled through its AbortSignal. `.partialText` and `.usage` hold what was done. */
export class AbortError extends RealmError {
  static code = "aborted";
  constructor(message = "The request was aborted", details = undefined) {
    super(message, details);
  }
}

const CLASSES = {
  RealmError, NoWebGPUError, DeviceError, DeviceLostError, OutOfMemoryError, ModelError, DownloadError,
  IntegrityError, UnknownModelError, ContextLengthError, AbortError,
};

// Python exception class (realm_web.errors and friends) -> SDK class.
// `name` on the prototypes, from the literal keys above, so it survives minifiers that rename classes.
for (const [name, Cls] of Object.entries(CLASSES)) Cls.prototype.name = name;

const PYTHON_CLASSES = {
  GGUFError: ModelError,
  SourceError: ModelError,
  TokenizerError: ModelError,
  DeviceError,
  DeviceLostError,
  OutOfMemoryError,
  ContextError: ContextLengthError,
  ChatTemplateError: RealmError,
  RealmError,
};

/**
 * Turn a Pyodide `PythonError` into an SDK error. Its message is the traceback; the last non-empty line
 * is "ClassName: text", which becomes the message. Unknown Python classes are internal errors: the
 * traceback is kept in `.pythonTraceback` and logged.
 * @param {Error & {type?: string}} err
 * @returns {RealmError}
 */
export function fromPythonError(err) {
  const type = err.type ?? "Exception";
  const lines = String(err.message ?? "").split("\n").filter((l) => l.trim());
  let text = lines.at(-1) ?? type;
  const prefix = /^[\w.]+: /.exec(text);
  if (prefix && prefix[0].slice(0, -2).split(".").at(-1) === type) text = text.slice(prefix[0].length);
  const Cls = PYTHON_CLASSES[type];
  if (Cls) return new Cls(text, { pythonType: type });
  return new RealmError(`internal error in realm_web (${type}): ${text}`, {
    code: "internal", pythonType: type, pythonTraceback: err.message,
  });
}

/**
 * A plain object that survives structured cloning (postMessage).
 * @param {unknown} err
 * @returns {{name: string, message: string, code: string, details: object}}
 */
export function serializeError(err) {
  if (!(err instanceof Error)) return { name: "RealmError", message: String(err), code: "internal", details: {} };
  const details = {};
  for (const [k, v] of Object.entries(err)) {
    if (k === "name" || k === "code" || typeof v === "function") continue;
    try {
      details[k] = structuredClone(v);
    } catch {
      details[k] = String(v);
    }
  }
  const name = err instanceof RealmError ? err.name : "RealmError";
  const code = err instanceof RealmError ? err.code : "internal";
  const message = err instanceof RealmError ? err.message : `${err.name}: ${err.message}`;
  return { name, message, code, details };
}

/**
 * Rebuild the SDK error class from `serializeError`'s output.
 * @param {{name: string, message: string, code: string, details?: object}} data
 * @returns {RealmError}
 */
export function deserializeError(data) {
  const Cls = CLASSES[data.name] ?? RealmError;
  const err = new Cls(data.message, data.details);
  if (err.code !== data.code) err.code = data.code;
  return err;
}
