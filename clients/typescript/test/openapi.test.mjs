// src/openapi.d.ts is what openapi-typescript makes of ../../api/openapi.json today, so the types cannot drift.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

test("src/openapi.d.ts matches a fresh generation from api/openapi.json (npm run gen)", async () => {
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  try {
    await promisify(execFile)(npm, ["run", "--silent", "gen", "--", "--check"], { timeout: 180_000 });
  } catch (err) {
    assert.fail(`src/openapi.d.ts is stale; run npm run gen and commit it:\n${err.stdout}\n${err.stderr}`);
  }
});
