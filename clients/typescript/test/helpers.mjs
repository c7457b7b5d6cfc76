// Set-up through ATL's own API: a tenant per test, its keys and policies.
import { randomUUID } from "node:crypto";

export const baseUrl = process.env.ATL_URL;
const operator = process.env.ATL_ADMIN_TOKEN;
if (!baseUrl || !operator) {
  throw new Error("ATL_URL and ATL_ADMIN_TOKEN must name a running ATL (the Go test TestTypeScriptClient sets them)");
}

async function call(method, path, key, body) {
  const res = await fetch(baseUrl + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** How to start ATL for every test here, as the Go test TestTypeScriptClient does. */
export const harness =
  "start ATL on PostgreSQL with ATL_RATE_LIMIT=5 ATL_RATE_BURST=40 ATL_WAITERS_PER_TENANT=2, as TestTypeScriptClient does";

/** The service's storage and request limits in force (GET /api/v1/stats with the operator token; 0: off). */
export async function serverLimits() {
  const stats = await call("GET", "/api/v1/stats", operator);
  return { storage: stats.storage, rate_limit_per_second: 0, rate_burst: 0, waiters_per_tenant: 0, ...stats.limits };
}

/** A fresh tenant with an admin, an agent and two approvers, and its policies (tool → policy body). */
export async function tenant(policies = {}) {
  const id = `ts-${randomUUID().slice(0, 8)}`;
  const { api_key: admin } = await call("POST", "/api/v1/tenants", operator, { id, name: `client test ${id}` });
  const key = async (role, subject) => (await call("POST", "/api/v1/keys", admin, { role, subject })).api_key;
  const [agent, alice, bob] = await Promise.all([
    key("agent", "booker"),
    key("approver", "alice@example.com"),
    key("approver", "bob@example.com"),
  ]);
  for (const [tool, policy] of Object.entries(policies)) {
    await call("PUT", `/api/v1/policies/${encodeURIComponent(tool)}`, admin, policy);
  }
  return { id, admin, agent, alice, bob };
}

/** A promise with its resolve function, to hand a value from one side of a test to the other. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

/** A fetch that tells `onHeld` the approval request id of every 202 the gate answers. */
export function watchingFetch(onHeld) {
  return async (url, init) => {
    const res = await fetch(url, init);
    if (res.status === 202) onHeld((await res.clone().json()).approval_request_id);
    return res;
  };
}
