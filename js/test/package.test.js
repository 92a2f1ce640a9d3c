// The SDK as an npm package: `npm pack` gives a tarball that installs into a fresh folder and imports, and its
// TypeScript declarations type-check a program that uses the public API (test/types/usage.ts) with `tsc --noEmit`
// (typescript from npm, a devDependency). The install takes pyodide from npm's cache when it is there (npm ci
// put it there), else from the registry.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const JS = join(dirname(fileURLToPath(import.meta.url)), "..");
const TSC = join(JS, "node_modules", "typescript", "bin", "tsc");

function run(cmd, args, cwd) {
  try {
    return execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed in ${cwd}:\n${e.stdout}\n${e.stderr}`);
  }
}

test("npm pack gives a tarball that installs into a fresh folder, imports, and whose types compile", { timeout: 300_000 }, () => {
  const tmp = mkdtempSync(join(tmpdir(), "realm-web-pack-"));
  try {
    const [packed] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", tmp], JS));
    const files = packed.files.map((f) => f.path);
    for (const f of ["package.json", "src/index.js", "src/index.d.ts", "src/worker.js", "src/builtin-models.json"]) {
      assert.ok(files.includes(f), `${f} is not in the tarball: ${files.join(", ")}`);
    }
    assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")), files.join(", "));

    const app = join(tmp, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error",
                join(tmp, packed.filename)], app);

    // imports in Node from the installed package (the browser-only parts run only when an engine is created);
    // the worker entry runs only inside a Web Worker, so it is resolved, not imported
    const script = `const m = await import("realm-web");
      console.log(JSON.stringify({ keys: Object.keys(m).sort(), engine: typeof m.createEngine,
                                   err: new m.NoWebGPUError("x") instanceof m.RealmError,
                                   worker: import.meta.resolve("realm-web/worker.js") }));`;
    const got = JSON.parse(run(process.execPath, ["--input-type=module", "-e", script], app));
    assert.ok(got.worker.endsWith("/node_modules/realm-web/src/worker.js"), got.worker);
    for (const name of ["createEngine", "listModels", "hasModelInCache", "deleteModelCache", "Engine", "RealmError",
                        "NoWebGPUError", "AbortError", "IntegrityError", "ContextLengthError"]) {
      assert.ok(got.keys.includes(name), `realm-web does not export ${name}: ${got.keys}`);
    }
    assert.equal(got.engine, "function");
    assert.equal(got.err, true);

    // the declarations, resolved through the package's "exports" -> "types", against a program using the API
    for (const f of ["usage.ts", "tsconfig.json"]) copyFileSync(join(JS, "test", "types", f), join(app, f));
    const out = run(process.execPath, [TSC, "--noEmit", "-p", app, "--listFilesOnly"], app);
    assert.ok(out.includes(join("node_modules", "realm-web", "src", "index.d.ts")), out);
    run(process.execPath, [TSC, "--noEmit", "-p", app], app); // throws with tsc's diagnostics on any error
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
