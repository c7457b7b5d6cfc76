// The client against a real ATL (ATL_URL), every tenant created here through the API. The package is imported
// by its name (a self-reference through package.json "exports"), as an agent would import it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import {
  createATL,
  ATLError,
  ATLApprovalError,
  ATLAuthError,
  ATLConflictError,
  ATLNetworkError,
  ATLNotFoundError,
  ATLRateLimitError,
  ATLTimeoutError,
  ATLValidationError,
} from "@asi/agent-trust-layer";
import { baseUrl, deferred, harness, serverLimits, tenant, watchingFetch } from "./helpers.mjs";

const policies = {
  search: { trust_level: "L0" },
  "bookings.create": { trust_level: "L3" },
  "payments.refund": { trust_level: "L4" },
  "quotes.hold": { trust_level: "L3", approval_ttl_seconds: 1 },
  "bookings.auto": { trust_level: "L3", auto_approve_eligible: true },
};

test("the seed's usage snippet, with a base URL and key for settings: an L0 tool is done", async () => {
  const t = await tenant(policies);
  const domain = "travel";
  const apiKey = t.agent;
  const workflow = "trip-planner";
  const agent = "booker";
  const tool = "search";
  const args = { q: "Lisbon hotels" };

  const atl = createATL({ domain, baseUrl, apiKey });
  const result = await atl.execute({ workflow, agent, tool, args });

  assert.equal(result.kind, "done");
  assert.equal(result.status, "allowed");
  assert.equal(result.trust_level, "L0");
  assert.equal(result.mode, "dry_run");
  assert.match(result.event_id, /^[0-9a-f-]{36}$/);
  assert.equal(result.replayed, false);
  const events = await atl.listEvents({ trace_id: result.trace_id });
  assert.equal(events.count, 1);
  assert.equal(events.items[0].domain, "travel");
  assert.equal(events.items[0].workflow_name, "trip-planner");
  assert.deepEqual(events.items[0].tool_args, args);
});

test("an L3 call is held; an approver decides; waitForApproval answers APPROVED; execute with it runs once", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent });
  const approver = createATL({ baseUrl, apiKey: t.alice });
  const call = { workflow: "trip", agent: "booker", tool: "bookings.create", args: { hotel: "H-204", nights: 2 } };

  const held = await atl.execute(call);
  assert.equal(held.kind, "held");
  assert.equal(held.status, "pending_approval");
  assert.equal(held.trust_level, "L3");
  assert.equal(held.required_approvals, 1);
  assert.equal(held.approvalRequestId, held.approval_request_id);
  assert.equal(held.expiresAt, held.expires_at);
  assert.ok(Date.parse(held.expiresAt) > Date.now());

  const pending = await atl.getApproval(held.approvalRequestId);
  assert.equal(pending.status, "PENDING");
  assert.deepEqual(pending.action_payload, { tool: "bookings.create", args: call.args });

  const waiting = atl.waitForApproval(held.approvalRequestId, { timeoutMs: 20_000 });
  const decided = await approver.decide(held.approvalRequestId, "APPROVE", "within the travel budget");
  assert.equal(decided.status, "APPROVED");
  const approval = await waiting;
  assert.equal(approval.status, "APPROVED");
  assert.equal(approval.decisions.length, 1);
  assert.equal(approval.decisions[0].decided_by, "alice@example.com");

  const done = await atl.execute({ ...call, approval_request_id: approval.id });
  assert.equal(done.kind, "done");
  assert.equal(done.status, "allowed");
  assert.equal(done.approval_request_id, approval.id);

  await assert.rejects(atl.execute({ ...call, approval_request_id: approval.id }), (err) => {
    assert.ok(err instanceof ATLConflictError);
    assert.equal(err.status, 409);
    assert.equal(err.code, "approval_consumed");
    assert.equal(err.body.status, "refused");
    return true;
  });
});

test("an L4 call needs two distinct approvers before waitForApproval answers", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  const held = await atl.execute({ tool: "payments.refund", args: { amount: 120 } });
  assert.equal(held.kind, "held");
  assert.equal(held.required_approvals, 2);
  const first = await createATL({ baseUrl, apiKey: t.alice }).decide(held.approvalRequestId, "APPROVE");
  assert.equal(first.status, "PENDING");
  await assert.rejects(atl.waitForApproval(held.approvalRequestId, { timeoutMs: 200 }), ATLTimeoutError);
  const waiting = atl.waitForApproval(held.approvalRequestId, { timeoutMs: 20_000 });
  await createATL({ baseUrl, apiKey: t.bob }).decide(held.approvalRequestId, "APPROVE");
  const approval = await waiting;
  assert.equal(approval.status, "APPROVED");
  assert.deepEqual(approval.decisions.map((d) => d.decided_by).sort(), ["alice@example.com", "bob@example.com"]);
});

test("wrap: gate, wait, approval consumed, the tool runs locally once, its outcome is an event", async () => {
  const t = await tenant(policies);
  const held = deferred();
  const atl = createATL({ baseUrl, apiKey: t.agent, domain: "travel", fetch: watchingFetch(held.resolve) });
  const approver = createATL({ baseUrl, apiKey: t.alice });
  const calls = [];
  const book = atl.wrap(
    "bookings.create",
    async (args) => {
      calls.push(args);
      return { confirmation: `C-${args.hotel}` };
    },
    { agent: "booker", workflow: "trip" },
  );

  const running = book({ hotel: "H-204", nights: 2 });
  const id = await held.promise;
  await approver.decide(id, "APPROVE", "ok");
  const result = await running;

  assert.deepEqual(result, { confirmation: "C-H-204" });
  assert.deepEqual(calls, [{ hotel: "H-204", nights: 2 }]);
  const approval = await atl.getApproval(id);
  assert.equal(approval.status, "APPROVED");
  assert.notEqual(approval.consumed_at, null, "wrap executes with the approval, which consumes it");

  const events = await atl.listEvents({ approval_request_id: id });
  const byStatus = Object.fromEntries(events.items.map((e) => [e.status, e]));
  assert.deepEqual(Object.keys(byStatus).sort(), ["allowed", "pending_approval", "succeeded"]);
  const outcome = byStatus.succeeded;
  assert.equal(outcome.tool_name, "bookings.create");
  assert.deepEqual(outcome.tool_args, { hotel: "H-204", nights: 2 });
  assert.deepEqual(outcome.tool_result, { confirmation: "C-H-204" });
  assert.equal(outcome.trust_level, "L3");
  assert.equal(outcome.agent, "booker");
  assert.equal(outcome.domain, "travel");
  assert.equal(outcome.workflow_name, "trip");
  assert.equal(outcome.trace_id, byStatus.allowed.trace_id);
  assert.equal(byStatus.allowed.trace_id, byStatus.pending_approval.trace_id, "one trace from hold to outcome");
  assert.ok(outcome.latency_ms >= 0);
});

test("wrap: an L0 tool runs without waiting; a tool that throws is reported failed and its error rethrown", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  const search = atl.wrap("search", (args) => `found ${args.q}`);
  assert.equal(await search({ q: "Porto" }), "found Porto");

  const boom = new Error("upstream said no");
  const broken = atl.wrap("search", () => {
    throw boom;
  });
  const traceId = randomUUID().replaceAll("-", "");
  await assert.rejects(broken({ q: "Faro" }, { trace_id: traceId }), (err) => err === boom);
  const events = await atl.listEvents({ trace_id: traceId });
  const failed = events.items.find((e) => e.status === "failed");
  assert.ok(failed, "a failed event is reported");
  assert.equal(failed.error, "Error: upstream said no");
  assert.equal(failed.tool_result, null);
  assert.ok(events.items.some((e) => e.status === "allowed"));
});

test("wrap: a REJECT throws ATLApprovalError and the tool never runs", async () => {
  const t = await tenant(policies);
  const held = deferred();
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker", fetch: watchingFetch(held.resolve) });
  let ran = false;
  const book = atl.wrap("bookings.create", () => {
    ran = true;
  });
  const running = book({ hotel: "H-1" });
  // The wait may end (and reject) before the decide call returns: mark the
  // rejection handled now, and check it below.
  running.catch(() => {});
  const id = await held.promise;
  await createATL({ baseUrl, apiKey: t.bob }).decide(id, "REJECT", "over budget");
  await assert.rejects(running, (err) => {
    assert.ok(err instanceof ATLApprovalError);
    assert.ok(err instanceof ATLError);
    assert.equal(err.approvalStatus, "REJECTED");
    assert.equal(err.code, "approval_rejected");
    assert.equal(err.approval.id, id);
    assert.equal(err.approval.decisions[0].reason, "over budget");
    return true;
  });
  assert.equal(ran, false);
  const events = await atl.listEvents({ approval_request_id: id });
  assert.deepEqual(events.items.map((e) => e.status), ["pending_approval"]);
});

test("an approval that expires undecided ends the wait as EXPIRED, and wrap throws", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  let ran = false;
  const hold = atl.wrap("quotes.hold", () => {
    ran = true;
  });
  const started = Date.now();
  await assert.rejects(hold({ quote: "Q-9" }), (err) => {
    assert.ok(err instanceof ATLApprovalError);
    assert.equal(err.approvalStatus, "EXPIRED");
    assert.equal(err.code, "approval_expired");
    return true;
  });
  assert.equal(ran, false);
  assert.ok(Date.now() - started < 15_000, "the wait ends near the request's expiry");
});

test("an auto-approved L3 call is done at once, carrying its approval id", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  const result = await atl.execute({ tool: "bookings.auto", args: { hotel: "H-7" } });
  assert.equal(result.kind, "done");
  assert.equal(result.auto_approved, true);
  assert.match(result.approval_request_id, /^[0-9a-f-]{36}$/);
});

test("waitForApproval gives up with ATLTimeoutError; an abort signal stops it", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  const held = await atl.execute({ tool: "bookings.create", args: { hotel: "H-5" } });
  const started = Date.now();
  await assert.rejects(atl.waitForApproval(held.approvalRequestId, { timeoutMs: 700 }), (err) => {
    assert.ok(err instanceof ATLTimeoutError);
    assert.equal(err.code, "timeout");
    assert.equal(err.body.status, "PENDING");
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took >= 700 && took < 10_000, `took ${took} ms`);

  const ctl = new AbortController();
  const waiting = atl.waitForApproval(held.approvalRequestId, { signal: ctl.signal });
  const reason = new Error("the agent was cancelled");
  ctl.abort(reason);
  await assert.rejects(waiting, (err) => err === reason);
});

test("typed errors carry the API's status and code", async () => {
  const t = await tenant(policies);
  const bad = createATL({ baseUrl, apiKey: "not-a-key", agent: "booker" });
  await assert.rejects(bad.execute({ tool: "search", args: {} }), (err) => {
    assert.ok(err instanceof ATLAuthError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "unauthorized");
    return true;
  });

  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  await assert.rejects(atl.execute({ tool: "no spaces allowed", args: {} }), (err) => {
    assert.ok(err instanceof ATLValidationError);
    assert.equal(err.status, 400);
    assert.equal(err.code, "validation_failed");
    assert.match(err.message, /tool is required/);
    return true;
  });
  await assert.rejects(atl.getApproval(randomUUID()), (err) => {
    assert.ok(err instanceof ATLNotFoundError);
    assert.equal(err.status, 404);
    assert.equal(err.code, "approval_not_found");
    return true;
  });
  const held = await atl.execute({ tool: "bookings.create", args: { hotel: "H-3" } });
  await assert.rejects(atl.decide(held.approvalRequestId, "APPROVE"), (err) => {
    assert.ok(err instanceof ATLAuthError);
    assert.equal(err.status, 403);
    assert.equal(err.code, "forbidden");
    return true;
  });
  await assert.rejects(atl.execute({ tool: "search", args: {}, mode: "live" }), (err) => {
    assert.ok(err instanceof ATLAuthError);
    assert.equal(err.code, "live_disabled");
    assert.match(err.body.event_id, /^[0-9a-f-]{36}$/, "the refusal is recorded");
    return true;
  });
  await assert.rejects(
    atl.reportEvents([{ tool_name: "search", status: "succeeded" }, { tool_name: "search" }]),
    (err) => {
      assert.ok(err instanceof ATLValidationError);
      assert.equal(err.code, "invalid_events");
      assert.equal(err.events.length, 1);
      assert.equal(err.events[0].index, 1);
      return true;
    },
  );

  const closed = createATL({ baseUrl: "http://127.0.0.1:9", apiKey: t.agent, agent: "booker" });
  await assert.rejects(closed.execute({ tool: "search", args: {} }), (err) => {
    assert.ok(err instanceof ATLNetworkError);
    assert.equal(err.status, 0);
    assert.equal(err.code, "network_error");
    return true;
  });
  assert.throws(() => createATL({ baseUrl, apiKey: "" }), TypeError);
});

test("traceparent is passed on, idempotency keys replay, events and audit logs list", async () => {
  const t = await tenant(policies);
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker" });
  const traceId = randomUUID().replaceAll("-", "");
  const traceparent = `00-${traceId}-00f067aa0ba902b7-01`;
  const first = await atl.execute({ tool: "search", args: { q: "x" }, idempotency_key: `k-${traceId}` }, { traceparent });
  assert.equal(first.trace_id, traceId);
  assert.equal(first.replayed, false);
  const again = await atl.execute({ tool: "search", args: { q: "x" }, idempotency_key: `k-${traceId}` });
  assert.equal(again.replayed, true);
  assert.equal(again.event_id, first.event_id);

  const reported = await atl.reportEvents([
    { tool_name: "search", status: "succeeded", trace_id: traceId, tool_result: { hits: 3 } },
    { tool_name: "search", status: "failed", trace_id: traceId, error: "timeout" },
  ]);
  assert.equal(reported.count, 2);
  const one = await atl.reportEvents({ tool_name: "search", status: "succeeded", trace_id: traceId });
  assert.equal(one.count, 1);
  const events = await atl.listEvents({ trace_id: traceId, limit: 10 });
  assert.equal(events.count, 4);
  const page = await atl.listEvents({ trace_id: traceId, limit: 3 });
  assert.equal(page.count, 3);
  assert.ok(page.next_cursor);
  const rest = await atl.listEvents({ trace_id: traceId, limit: 3, cursor: page.next_cursor });
  assert.equal(rest.count, 1);

  const logs = await atl.listAuditLogs({ trace_id: traceId });
  assert.ok(logs.count >= 3, `audit rows for the trace: ${logs.count}`);
  assert.ok(logs.items.every((l) => l.trace_id === traceId));
});

test("a key over its rate gets ATLRateLimitError with retryAfter (the harness sets ATL_RATE_LIMIT=5, burst 40)", async (ctx) => {
  const limits = await serverLimits();
  if (!(limits.rate_limit_per_second > 0 && limits.rate_burst < 100)) {
    ctx.skip(`needs ATL_RATE_LIMIT set and a burst under 100; this service has rate ${limits.rate_limit_per_second}/s, burst ${limits.rate_burst} (${harness})`);
    return;
  }
  const t = await tenant();
  const atl = createATL({ baseUrl, apiKey: t.alice });
  // 100 at once against a bucket of 40 that refills 5 a second: even a slow machine refuses some.
  const answers = await Promise.allSettled(Array.from({ length: 100 }, () => atl.listApprovals({ limit: 1 })));
  const refused = answers.filter((a) => a.status === "rejected").map((a) => a.reason);
  assert.ok(refused.some((err) => err.code === "rate_limited"), "no 429 rate_limited in 100 requests");
  for (const err of refused) {
    assert.ok(err instanceof ATLRateLimitError, String(err));
    assert.equal(err.status, 429);
    // A slow machine may also queue the admitted ones past the tenant's slots.
    assert.ok(["rate_limited", "tenant_busy"].includes(err.code), err.code);
    assert.ok(err.retryAfter >= 1);
  }
});

test("waitForApproval waits on when the tenant has too many waiters (the harness sets ATL_WAITERS_PER_TENANT=2)", async (ctx) => {
  const limits = await serverLimits();
  if (limits.storage !== "postgres" || limits.waiters_per_tenant < 1 || limits.waiters_per_tenant > 2) {
    ctx.skip(`needs ATL_WAITERS_PER_TENANT at most 2 on PostgreSQL; this service has ${limits.waiters_per_tenant} on ${limits.storage} (${harness})`);
    return;
  }
  const t = await tenant(policies);
  const busy = deferred();
  let refused = 0;
  const fetch = async (url, init) => {
    const res = await globalThis.fetch(url, init);
    if (res.status === 429) {
      refused++;
      busy.resolve();
    }
    return res;
  };
  const atl = createATL({ baseUrl, apiKey: t.agent, agent: "booker", fetch });
  const held = await Promise.all([1, 2, 3].map((n) => atl.execute({ tool: "bookings.create", args: { n } })));
  const waits = held.map((h) => atl.waitForApproval(h.approvalRequestId, { timeoutMs: 30_000 }));
  await busy.promise; // three long-polls, two slots: one was refused 429 too_many_waits
  const alice = createATL({ baseUrl, apiKey: t.alice });
  for (const h of held) await alice.decide(h.approvalRequestId, "APPROVE");
  const approvals = await Promise.all(waits);
  assert.deepEqual(approvals.map((a) => a.status), ["APPROVED", "APPROVED", "APPROVED"]);
  assert.ok(refused >= 1);
});
