// Downloading one file: HTTP with retries and Range resume, SHA-256 while the bytes arrive, written to an
// OPFS file handle; and a reader that serves ranges straight from the server. store.js decides where files go.

import { DownloadError, IntegrityError } from "./errors.js";
import { Sha256 } from "./sha256.js";

const MAX_RETRIES = 5; // consecutive failed attempts without progress before a download gives up
const HASH_SLICE = 8 << 20; // bytes read at a time when re-hashing a partial file
const PROGRESS_EVERY_MS = 100;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function fetchRetrying(url, init, what) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (e) {
      if (attempt >= MAX_RETRIES) throw new DownloadError(`${what} ${url} failed: network error (${e?.message ?? e})`, { url });
      await sleep(Math.min(500 * 2 ** attempt, 8000));
    }
  }
}

function contentRange(res) {
  // "bytes 100-199/1000" or "bytes */1000"
  const m = /^bytes (?:(\d+)-(\d+)|\*)\/(\d+|\*)$/.exec(res.headers.get("Content-Range") ?? "");
  if (!m) return null;
  return { start: m[1] === undefined ? null : Number(m[1]), end: m[2] === undefined ? null : Number(m[2]), total: m[3] === "*" ? null : Number(m[3]) };
}

function httpError(url, res, doing) {
  const hint = res.status === 404 ? " (no such file: check the model URL / modelBaseUrl)" : "";
  return new DownloadError(`${doing} ${url} failed: HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}${hint}`, {
    url, status: res.status,
  });
}

/** A reader over HTTP Range requests (no local copy). Resolves the size with a one-byte probe. */
export async function httpReader(url) {
  const probe = await fetchRetrying(url, { headers: { Range: "bytes=0-0" }, cache: "no-store" }, "Fetching");
  if (!probe.ok) throw httpError(url, probe, "Fetching");
  const total = probe.status === 206 ? contentRange(probe)?.total : null;
  await probe.body?.cancel();
  if (total == null) {
    throw new DownloadError(
      `cannot stream ${url}: the server does not answer HTTP Range requests (got ${probe.status} without Content-Range). ` +
        "Enable the browser cache (appConfig.useCache) or serve the file with Range support.",
      { url, status: probe.status },
    );
  }
  return {
    size: total,
    source: "network",
    async read(offset, length) {
      if (length === 0) return new Uint8Array(0);
      for (let attempt = 0; ; attempt++) {
        const res = await fetchRetrying(url, { headers: { Range: `bytes=${offset}-${offset + length - 1}` }, cache: "no-store" }, "Reading");
        if (res.status !== 206) {
          await res.body?.cancel();
          if (!res.ok) throw httpError(url, res, `Reading bytes ${offset}+${length} of`);
          throw new DownloadError(`Reading ${url}: the server stopped honouring Range requests (HTTP ${res.status})`, { url, status: res.status });
        }
        let why;
        try {
          const buf = new Uint8Array(await res.arrayBuffer());
          if (buf.length === length) return buf;
          why = `got ${buf.length} of ${length} bytes at ${offset}`;
        } catch (e) {
          why = `connection lost reading ${length} bytes at ${offset} (${e?.message ?? e})`;
        }
        if (attempt >= MAX_RETRIES) throw new DownloadError(`Reading ${url}: ${why}`, { url });
        await sleep(Math.min(500 * 2 ** attempt, 8000));
      }
    },
  };
}

/**
 * A writer appending to `handle` from `offset`. In a worker, a sync access handle writes in place, so what is
 * written survives the page closing (resume across sessions). On a page only createWritable exists: it writes
 * to a swap file committed by close(), which is why failures close() it before giving up.
 */
async function partWriter(handle, offset) {
  if (typeof handle.createSyncAccessHandle === "function" && typeof globalThis.WorkerGlobalScope !== "undefined") {
    const h = await handle.createSyncAccessHandle();
    h.truncate(offset);
    let pos = offset;
    let sinceFlush = 0;
    return {
      async write(chunk) {
        for (let done = 0; done < chunk.length; ) done += h.write(chunk.subarray(done), { at: pos + done });
        pos += chunk.length;
        sinceFlush += chunk.length;
        if (sinceFlush >= 64 << 20) {
          h.flush();
          sinceFlush = 0;
        }
      },
      async restart() {
        h.truncate(0);
        pos = 0;
      },
      async close() {
        h.flush();
        h.close();
      },
    };
  }
  const w = await handle.createWritable({ keepExistingData: true });
  await w.truncate(offset);
  await w.seek(offset);
  return {
    write: (chunk) => w.write(chunk),
    async restart() {
      await w.truncate(0);
      await w.seek(0);
    },
    close: () => w.close(),
  };
}

async function writeOrExplain(writer, chunk, url) {
  try {
    await writer.write(chunk);
  } catch (e) {
    if (e?.name === "QuotaExceededError") {
      throw new DownloadError(`browser storage is full while saving ${url}: free space (deleteModelCache) or pass appConfig.useCache: false`, { url });
    }
    throw e;
  }
}

/** Hash the bytes already in a partial file (resuming needs the hash state of the prefix). */
async function hashPrefix(file, hasher, onProgress) {
  for (let at = 0; at < file.size; at += HASH_SLICE) {
    const end = Math.min(at + HASH_SLICE, file.size);
    hasher.update(new Uint8Array(await file.slice(at, end).arrayBuffer()));
    onProgress?.(end, file.size);
  }
}

async function checkQuota(need, url) {
  const est = await globalThis.navigator?.storage?.estimate?.().catch(() => null);
  if (!est?.quota) return;
  const free = est.quota - (est.usage ?? 0);
  if (need > free) {
    const mb = (n) => `${(n / 2 ** 20).toFixed(0)} MiB`;
    throw new DownloadError(
      `not enough browser storage for ${url}: it needs ${mb(need)} more, ${mb(free)} are free. ` +
        "Free space (deleteModelCache) or pass appConfig.useCache: false to stream the model instead.",
      { url },
    );
  }
}

/**
 * Download `url` into the OPFS file `partHandle`, resuming what is there, hashing as it goes; returns the hex
 * SHA-256 and size. Network drops and 5xx answers are retried (with Range from the bytes already written); a
 * server that ignores Range (200 instead of 206) makes the download start over from byte 0.
 * @param {FileSystemFileHandle} partHandle
 * @param {string} url
 * @param {{id: string, size?: number|null, sha256?: string|null}} record
 * @param {ReturnType<typeof progressReporter>} progress
 * @returns {Promise<{sha256: string, size: number}>}
 */
export async function downloadPart(partHandle, url, record, progress) {
  let file = await partHandle.getFile();
  let have = file.size;
  let hasher = new Sha256();
  if (record.size != null && have > record.size) have = 0; // not a prefix of this file
  if (have > 0) {
    progress.label(`Checking ${(have / 2 ** 20).toFixed(1)} MiB downloaded earlier`);
    await hashPrefix(file.slice(0, have), hasher, (done) => progress.report(done, record.size ?? have));
    progress.label(`Resuming the download of ${record.id}`);
  }
  file = null;
  const writer = await partWriter(partHandle, have);
  let total = record.size ?? null;
  let failures = 0;
  let quotaChecked = false;
  const restart = async () => {
    await writer.restart();
    have = 0;
    hasher = new Sha256();
  };
  const retry = async (err) => {
    if (++failures > MAX_RETRIES) throw err;
    progress.label(`Downloading ${record.id} (connection lost, retry ${failures}/${MAX_RETRIES})`);
    await sleep(Math.min(500 * 2 ** (failures - 1), 8000));
  };
  let failed = null;
  try {
    for (;;) {
      if (total != null && have === total) break;
      const headers = have > 0 ? { Range: `bytes=${have}-` } : {};
      let res;
      try {
        res = await fetch(url, { headers, cache: "no-store" });
      } catch (e) {
        await retry(new DownloadError(`Downloading ${url} failed: network error (${e?.message ?? e})`, { url }));
        continue;
      }
      if (res.status === 416 && have > 0) {
        // Nothing after `have`: either the partial is already whole, or the file changed under it.
        const t = contentRange(res)?.total;
        await res.body?.cancel();
        if (t === have && (total == null || total === have)) {
          total = have;
          break;
        }
        await restart();
        continue;
      }
      if (!res.ok) {
        const err = httpError(url, res, "Downloading");
        await res.body?.cancel();
        if (res.status >= 500 || res.status === 408 || res.status === 429) {
          await retry(err);
          continue;
        }
        throw err;
      }
      let size;
      if (res.status === 206) {
        const cr = contentRange(res);
        if (cr?.start !== have) {
          await res.body?.cancel();
          await restart();
          continue;
        }
        size = cr.total;
      } else {
        if (have > 0) await restart(); // the server ignored Range: start over
        const len = res.headers.get("Content-Length");
        size = len != null && !res.headers.get("Content-Encoding") ? Number(len) : null;
      }
      if (size != null && record.size != null && size !== record.size) {
        await res.body?.cancel();
        throw new IntegrityError(
          `${url} is ${size} bytes but the registry record "${record.id}" says ${record.size}: not the expected file`,
          { url, expected: record.sha256, actual: null, expectedSize: record.size, actualSize: size },
        );
      }
      total = size ?? total;
      if (!quotaChecked && total != null) {
        await checkQuota(total - have, url);
        quotaChecked = true;
      }
      const reader = res.body.getReader();
      const before = have;
      let dropped = null;
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          dropped = e;
          break;
        }
        if (chunk.done) break;
        hasher.update(chunk.value);
        await writeOrExplain(writer, chunk.value, url);
        have += chunk.value.length;
        progress.report(have, total);
      }
      if (have > before) failures = 0;
      if (dropped) {
        await retry(new DownloadError(`Downloading ${url} failed after ${have} bytes: ${dropped?.message ?? dropped}`, { url }));
        continue;
      }
      if (total == null) total = have; // no length announced: the end of the body is the end of the file
      if (have < total) {
        await retry(new DownloadError(`Downloading ${url}: the connection closed at byte ${have} of ${total}`, { url }));
      }
    }
  } catch (e) {
    failed = e;
    throw e;
  } finally {
    try {
      await writer.close(); // commits what was written (resume later) on success and on failure alike
    } catch (e) {
      if (!failed) throw e; // a stream that errored (storage full) cannot close: report why it errored instead
    }
  }
  progress.report(have, total);
  return { sha256: hasher.hex(), size: have };
}

/** Download progress as {phase: "download", loaded, total, text}, at most every PROGRESS_EVERY_MS. */
export function progressReporter(record, onProgress) {
  let last = 0;
  let lastLoaded = -1;
  let text = `Downloading ${record.id}`;
  const mb = (n) => (n / 2 ** 20).toFixed(1);
  return {
    label(t) {
      text = t;
      lastLoaded = -1;
    },
    report(loaded, total) {
      const now = Date.now();
      if (loaded === lastLoaded || (now - last < PROGRESS_EVERY_MS && loaded !== total)) return;
      last = now;
      lastLoaded = loaded;
      const t = total ? `${text}: ${mb(loaded)} / ${mb(total)} MiB (${Math.floor((100 * loaded) / total)}%)` : `${text}: ${mb(loaded)} MiB`;
      onProgress?.({ phase: "download", loaded, total: total ?? null, text: t });
    },
  };
}
