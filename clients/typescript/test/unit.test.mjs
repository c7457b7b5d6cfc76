// The client's handling of answers ATL itself rarely gives (proxies, outages), through a stand-in fetch.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  createATL,
  ATLError,
  ATLNetworkError,
  ATLRateLimitError,
  ATLTimeoutError,
  ATLUnavailableError,
} from "@asi/agent-trust-layer";

// A fetch that records each request and answers with the next of `answers`.
function stand(...answers) {
  const seen = [];
  const fetch = async (url, init) => {
    seen.push({ url, init, headers: new Headers(init.headers) });
    const next = answers.shift();
    return typeof next === "function" ? next(init) : next;
  };
  return { fetch, seen };
}

const json = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });

test("requests carry the key, the JSON content type and the traceparent; baseUrl may end in a slash", async () => {
  const { fetch, seen } = stand(
    json(200, { status: "allowed", event_id: "e", trace_id: "t", trust_level: "L0", mode: "dry_run" }),
    json(200, { items: [], count: 0, next_cursor: null }),
  );
  const atl = createATL({ baseUrl: "http://atl.test/", apiKey: "k-1", domain: "travel", fetch });
  await atl.execute({ agent: "bot/1", tool: "search", args: {} }, { traceparent: "00-abc-def-01" });
  await atl.listEvents({ tool_name: "search", limit: 5, agent: undefined });
  assert.equal(seen[0].url, "http://atl.test/api/v1/agents/bot%2F1/execute");
  assert.equal(seen[0].init.method, "POST");
  assert.equal(seen[0].headers.get("authorization"), "Bearer k-1");
  assert.equal(seen[0].headers.get("content-type"), "application/json");
  assert.equal(seen[0].headers.get("traceparent"), "00-abc-def-01");
  assert.deepEqual(JSON.parse(seen[0].init.body), { agent: "bot/1", tool: "search", args: {}, domain: "travel" });
  assert.equal(seen[1].url, "http://atl.test/api/v1/events?tool_name=search&limit=5");
  assert.equal(seen[1].init.body, undefined);
  assert.equal(seen[1].headers.get("content-type"), null);
});

test("error answers become typed errors, with Retry-After and a code even without an ATL body", async () => {
  const { fetch } = stand(
    json(503, { error: { code: "database_unavailable", message: "the database is unavailable" } }, { "Retry-After": "2" }),
    json(429, { error: { code: "rate_limited", message: "slow down" } }, { "Retry-After": "1" }),
    new Response("<html>bad gateway</html>", { status: 502 }),
    new Response("not json", { status: 200 }),
  );
  const atl = createATL({ baseUrl: "http://atl.test", apiKey: "k", fetch });
  await assert.rejects(atl.listAuditLogs(), (err) => {
    assert.ok(err instanceof ATLUnavailableError);
    assert.equal(err.code, "database_unavailable");
    assert.equal(err.retryAfter, 2);
    return true;
  });
  await assert.rejects(atl.listAuditLogs(), (err) => err instanceof ATLRateLimitError && err.retryAfter === 1);
  await assert.rejects(atl.listAuditLogs(), (err) => {
    assert.equal(err.constructor, ATLError);
    assert.equal(err.status, 502);
    assert.equal(err.code, "http_502");
    return true;
  });
  await assert.rejects(atl.listAuditLogs(), (err) => err instanceof ATLNetworkError && err.status === 200);
});

test("a request with no answer within timeoutMs is an ATLTimeoutError", async () => {
  const hang = (init) =>
    new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)));
  const atl = createATL({ baseUrl: "http://atl.test", apiKey: "k", timeoutMs: 50, fetch: stand(hang).fetch });
  await assert.rejects(atl.listEvents(), (err) => err instanceof ATLTimeoutError && err.code === "timeout");
});
