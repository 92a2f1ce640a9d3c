// Model bytes: downloaded once into the browser's Origin Private File System (OPFS), verified by SHA-256 while
// they arrive, resumed after an interruption, and read back in bounded slices. Without OPFS (or with
// useCache: false) the file is read straight from the server with HTTP Range requests. Either way the model is
// never held whole in memory: the engine pulls it through `read(offset, length)`.
//
// Cache layout, in the OPFS folder "realm-web-models":
//   <key>.gguf   a complete, verified file (renamed from .part only after its hash matched)
//   <key>.json   {id, url, sha256, size} written after the .gguf; an entry without it is not trusted
//   <key>.part   bytes downloaded so far (resumed with `Range: bytes=<size>-`)
// where <key> is "sha256-<hex>" for records with a hash (so a different hash is simply a different file) and
// "url-<sha256 of the URL>" for models known only by URL.

import { downloadPart, httpReader, progressReporter } from "./download.js";
import { DownloadError, IntegrityError } from "./errors.js";
import { sha256Text } from "./sha256.js";

const DIR_NAME = "realm-web-models";

/** The cache folder, or null when this browser (or context, e.g. private mode) has no OPFS. */
async function cacheDir() {
  if (!globalThis.navigator?.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(DIR_NAME, { create: true });
  } catch (e) {
    console.warn(`realm-web: no browser storage (OPFS) here (${e?.message ?? e}); models will stream from the network`);
    return null;
  }
}

function cacheKey(record) {
  return record.sha256 ? `sha256-${record.sha256.toLowerCase()}` : `url-${sha256Text(record.urls[0]).slice(0, 40)}`;
}

async function fileHandle(dir, name, create = false) {
  try {
    return await dir.getFileHandle(name, { create });
  } catch (e) {
    if (e?.name === "NotFoundError" || e?.name === "TypeMismatchError") return null;
    throw e;
  }
}

async function removeEntry(dir, name) {
  try {
    await dir.removeEntry(name);
  } catch (e) {
    if (e?.name !== "NotFoundError") throw e;
  }
}

/** Run `fn` holding a cross-tab lock on one cache entry (two tabs must not download the same file at once). */
function withLock(key, fn) {
  const locks = globalThis.navigator?.locks;
  return locks ? locks.request(`realm-web:${key}`, fn) : fn();
}

/** Bytes of a File (OPFS entry) by slices: only the requested range is ever in memory. */
function fileReader(file, source) {
  return {
    size: file.size,
    source,
    async read(offset, length) {
      const buf = await file.slice(offset, offset + length).arrayBuffer();
      if (buf.byteLength !== length) {
        throw new DownloadError(`cached model file is shorter than expected (read ${buf.byteLength} of ${length} bytes at ${offset})`);
      }
      return new Uint8Array(buf);
    },
  };
}

/** Rename `<key>.part` to `<key>.gguf` (FileSystemHandle.move where it exists, else a streamed copy). */
async function promote(dir, key) {
  const part = await fileHandle(dir, `${key}.part`);
  if (typeof part.move === "function") {
    await removeEntry(dir, `${key}.gguf`);
    await part.move(`${key}.gguf`);
    return;
  }
  const dest = await fileHandle(dir, `${key}.gguf`, true);
  const w = await dest.createWritable();
  await (await part.getFile()).stream().pipeTo(w);
  await removeEntry(dir, `${key}.part`);
}

/**
 * The verified cache entry for `record`, or null. With `repair` (only under the entry's lock) an untrusted
 * or stale entry is removed.
 */
async function cachedFile(dir, key, record, repair = true) {
  const handle = await fileHandle(dir, `${key}.gguf`);
  if (!handle) return null;
  const file = await handle.getFile();
  let meta = null;
  try {
    const m = await fileHandle(dir, `${key}.json`);
    meta = m ? JSON.parse(await (await m.getFile()).text()) : null;
  } catch {
    meta = null;
  }
  const ok = meta && meta.size === file.size && (record.size == null || record.size === file.size) &&
    (!record.sha256 || meta.sha256 === record.sha256.toLowerCase());
  if (ok) return file;
  if (!repair) return null;
  await removeEntry(dir, `${key}.gguf`);
  await removeEntry(dir, `${key}.json`);
  return null;
}

async function downloadToCache(dir, key, record, progress) {
  let lastError = null;
  for (const url of record.urls) {
    let got;
    try {
      got = await downloadPart(await fileHandle(dir, `${key}.part`, true), url, record, progress);
    } catch (e) {
      lastError = e;
      if (e instanceof IntegrityError) await removeEntry(dir, `${key}.part`);
      if (e instanceof DownloadError || e instanceof IntegrityError) continue; // try the next mirror
      throw e;
    }
    const expected = record.sha256?.toLowerCase();
    if (expected && got.sha256 !== expected) {
      await removeEntry(dir, `${key}.part`); // never keep (or resume) bytes that hash wrong
      lastError = new IntegrityError(
        `${url} does not match the registry: SHA-256 expected ${expected}, got ${got.sha256}. The download was discarded.`,
        { url, expected, actual: got.sha256 },
      );
      continue;
    }
    await promote(dir, key);
    const meta = await fileHandle(dir, `${key}.json`, true);
    const w = await meta.createWritable();
    await w.write(JSON.stringify({ id: record.id, url, sha256: got.sha256, size: got.size }));
    await w.close();
    return;
  }
  throw lastError;
}

/**
 * Open a model's bytes for the engine.
 * @param {object} record a resolved registry record (absolute `urls`)
 * @param {{useCache?: boolean, onProgress?: (p: {phase: string, loaded: number, total: number|null, text: string}) => void}} [opts]
 * @returns {Promise<{size: number, source: "cache"|"download"|"network", read: (offset: number, length: number) => Promise<Uint8Array>}>}
 */
export async function openModel(record, { useCache = true, onProgress } = {}) {
  const progress = progressReporter(record, onProgress);
  const dir = useCache ? await cacheDir() : null;
  if (!dir) {
    let lastError = null;
    for (const url of record.urls) {
      try {
        const r = await httpReader(url);
        if (record.size != null && r.size !== record.size) {
          throw new IntegrityError(`${url} is ${r.size} bytes but the registry record "${record.id}" says ${record.size}`, {
            url, expectedSize: record.size, actualSize: r.size,
          });
        }
        return r;
      } catch (e) {
        lastError = e;
      }
    }
    throw lastError;
  }
  const key = cacheKey(record);
  return withLock(key, async () => {
    const hit = await cachedFile(dir, key, record);
    if (hit) return fileReader(hit, "cache");
    await downloadToCache(dir, key, record, progress);
    return fileReader(await cachedFile(dir, key, record), "download");
  });
}

/**
 * Whether the model is downloaded and verified in this browser's cache.
 * @param {object} record a resolved record (see resolveModel)
 */
export async function isCached(record) {
  const dir = await cacheDir();
  if (!dir) return false;
  return (await cachedFile(dir, cacheKey(record), record, false)) !== null;
}

/**
 * Delete one model's cache entry (complete and partial), or with no record every cached model.
 * @param {object} [record]
 */
export async function deleteCached(record) {
  const dir = await cacheDir();
  if (!dir) return;
  if (!record) {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry(DIR_NAME, { recursive: true }).catch((e) => {
      if (e?.name !== "NotFoundError") throw e;
    });
    return;
  }
  const key = cacheKey(record);
  await withLock(key, async () => {
    for (const ext of [".json", ".gguf", ".part"]) await removeEntry(dir, key + ext);
  });
}
