// Shared by wllama_bench.js (wllama 2.x) and wllama3_bench.js (3.x): collect wllama's log (its own messages and
// llama.cpp's, which wllama forwards from its worker) and wrap each step so a failure carries the log's tail.

/**
 * @param {boolean} debug keep debug-level lines too (llama.cpp logs e.g. each layer's device at debug level)
 * @returns {{log: string[], logger: object, step: (what: string, fn: () => Promise<any>) => Promise<any>}}
 */
export function capture(debug = false) {
  const log = [];
  const keep = (level) => (...a) => log.push(`${level}: ${a.join(" ")}`);
  const logger = { debug: debug ? keep("debug") : () => {}, log: keep("log"), warn: keep("warn"), error: keep("error") };
  const step = async (what, fn) => {
    try {
      return await fn();
    } catch (e) {
      throw new Error(`wllama ${what} failed: ${e?.message ?? e}\n${log.slice(-20).join("\n")}`);
    }
  };
  return { log, logger, step };
}
