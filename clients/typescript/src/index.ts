// @asi/agent-trust-layer: a client for ATL with no dependency beyond the platform's fetch.

import {
  ATLApprovalError,
  ATLError,
  ATLNetworkError,
  ATLRateLimitError,
  ATLReportError,
  ATLTimeoutError,
  errorClassFor,
} from "./errors.js";
import type {
  ApprovalFilter,
  ApprovalPage,
  ApprovalRequest,
  ApprovalStatus,
  AuditLogFilter,
  AuditLogPage,
  EventError,
  EventFilter,
  EventInput,
  EventPage,
  EventsCreated,
  ExecuteRequest,
  ExecuteResult,
  HeldResult,
  JSONValue,
} from "./types.js";
import type { paths } from "./openapi.js";

export * from "./errors.js";
export type * from "./types.js";

export interface ATLOptions {
  /** Where ATL answers, e.g. `https://atl.example.com` (no trailing `/api/v1`). */
  baseUrl: string;
  /** An API key (`Authorization: Bearer`); its role decides what the client may do. */
  apiKey: string;
  /** Domain sent with every execute and event unless the call names one; ATL's default is `default`. */
  domain?: string;
  /** Agent used when a call names none. */
  agent?: string;
  /** A fetch implementation; the platform's by default. */
  fetch?: typeof globalThis.fetch;
  /** Time allowed for one request, in ms (default 30 000); a long-poll gets its wait on top. */
  timeoutMs?: number;
}

/** Per-call options. */
export interface CallOptions {
  signal?: AbortSignal;
  /** A W3C `traceparent` header to pass on; ATL takes the trace id from it when the body has none. */
  traceparent?: string;
}

/** The execute body; `agent` names the path's agent_id and may come from createATL instead. */
export type ExecuteInput = ExecuteRequest;

/** The call may go ahead: ATL recorded it (200). */
export type ExecuteDone = ExecuteResult & { kind: "done"; replayed: boolean };
/** The call is held for humans (202): wait with waitForApproval(approvalRequestId), then execute again with it. */
export type ExecuteHeld = HeldResult & { kind: "held"; approvalRequestId: string; expiresAt: string; replayed: boolean };
export type ExecuteDecision = ExecuteDone | ExecuteHeld;

export interface WaitOptions {
  /** Give up after this many ms with ATLTimeoutError; without it the wait lasts until the request expires. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A final approval request: it has left PENDING. */
export type FinalApproval = ApprovalRequest & { status: Exclude<ApprovalStatus, "PENDING"> };

export interface WrapOptions {
  agent?: string;
  workflow?: string;
  domain?: string;
  stage?: ExecuteRequest["stage"];
  trust_level?: ExecuteRequest["trust_level"];
  /** How long to wait for a decision on a held call (ms); by default until the request expires. */
  approvalTimeoutMs?: number;
  /** Derives an idempotency key from the args, so a retried call is not held twice. */
  idempotencyKey?: (args: Record<string, unknown>) => string;
}

export interface WrapCallOptions extends CallOptions {
  trace_id?: string;
}

export interface ATLClient {
  /** Asks the gate about one tool call: `done` (go ahead) or `held` (wait for approval). */
  execute(req: ExecuteInput, opts?: CallOptions): Promise<ExecuteDecision>;
  /** Waits until the approval request leaves PENDING (long-polls, 50 s at a time). */
  waitForApproval(id: string, opts?: WaitOptions): Promise<FinalApproval>;
  /** Wraps a local tool: gate, approval, run, outcome reported as an event. */
  wrap<A extends Record<string, unknown>, R>(
    toolName: string,
    fn: (args: A) => R | Promise<R>,
    opts?: WrapOptions,
  ): (args: A, callOpts?: WrapCallOptions) => Promise<Awaited<R>>;
  /** Reports one event or a batch (up to 1000). */
  reportEvents(events: EventInput | EventInput[], opts?: CallOptions): Promise<EventsCreated>;
  /** One approval request with its decisions; `waitMs` long-polls while it is PENDING (at most 50 000). */
  getApproval(id: string, opts?: CallOptions & { waitMs?: number }): Promise<ApprovalRequest>;
  /** Decides an approval request (approver or admin key). */
  decide(id: string, decision: "APPROVE" | "REJECT", reason?: string, opts?: CallOptions): Promise<ApprovalRequest>;
  listAuditLogs(filter?: AuditLogFilter, opts?: CallOptions): Promise<AuditLogPage>;
  listEvents(filter?: EventFilter, opts?: CallOptions): Promise<EventPage>;
  listApprovals(filter?: ApprovalFilter, opts?: CallOptions): Promise<ApprovalPage>;
}

const maxWaitMs = 50_000;
// A request is taken as expired this long after its expires_at, to absorb clock differences.
const expiryGraceMs = 1_000;

export function createATL(options: ATLOptions): ATLClient {
  if (!options || typeof options.baseUrl !== "string" || options.baseUrl === "") {
    throw new TypeError("createATL: baseUrl is required");
  }
  if (typeof options.apiKey !== "string" || options.apiKey === "") {
    throw new TypeError("createATL: apiKey is required");
  }
  const base = options.baseUrl.replace(/\/+$/, "");
  const doFetch = options.fetch ?? globalThis.fetch;
  if (typeof doFetch !== "function") {
    throw new TypeError("createATL: no fetch on this platform; pass options.fetch");
  }
  const timeoutMs = options.timeoutMs ?? 30_000;

  interface Answer<T> {
    status: number;
    body: T;
    headers: Headers;
  }

  async function request<T>(
    method: string,
    path: string,
    body: unknown,
    opts: CallOptions & { extraMs?: number } = {},
  ): Promise<Answer<T>> {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${options.apiKey}`,
      Accept: "application/json",
    };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (opts.traceparent) headers["traceparent"] = opts.traceparent;
    const limit = timeoutMs + (opts.extraMs ?? 0);
    const { signal, timedOut, done } = deadline(limit, opts.signal);
    let res: Response;
    let text: string;
    try {
      res = await doFetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      text = await res.text();
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (timedOut()) {
        throw new ATLTimeoutError(`${method} ${path}: no answer within ${limit} ms`, { status: 0, code: "timeout", cause: err });
      }
      throw new ATLNetworkError(`${method} ${path}: ${(err as Error)?.message ?? String(err)}`, {
        status: 0,
        code: "network_error",
        cause: err,
      });
    } finally {
      done();
    }
    let parsed: unknown = undefined;
    if (text !== "") {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (res.status >= 400) throw errorFrom(res, parsed, method, path);
    if (parsed === undefined) {
      throw new ATLNetworkError(`${method} ${path}: answer ${res.status} is not JSON`, {
        status: res.status,
        code: "network_error",
      });
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  const client: ATLClient = {
    async execute(req, opts) {
      const agent = req.agent ?? options.agent;
      if (!agent) throw new TypeError("execute: agent is required (in the call or in createATL)");
      const body: ExecuteRequest = { ...req, agent };
      if (body.domain === undefined && options.domain !== undefined) body.domain = options.domain;
      const ans = await request<ExecuteResult | HeldResult>(
        "POST",
        route("/api/v1/agents/{agent_id}/execute", { agent_id: agent }),
        body,
        opts,
      );
      const replayed = ans.headers.get("Idempotent-Replayed") === "true";
      if (ans.status === 202) {
        const held = ans.body as HeldResult;
        return { ...held, kind: "held", approvalRequestId: held.approval_request_id, expiresAt: held.expires_at, replayed };
      }
      return { ...(ans.body as ExecuteResult), kind: "done", replayed };
    },

    async getApproval(id, opts = {}) {
      return (await readApproval(id, opts.waitMs ?? 0, opts)).approval;
    },

    async waitForApproval(id, opts = {}) {
      const until = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
      let waitMs = 0; // the first read does not wait, so a decided request answers at once
      for (;;) {
        let read;
        try {
          read = await readApproval(id, waitMs, { signal: opts.signal });
        } catch (err) {
          // The tenant has too many waiters: waiting is what we are doing anyway, so wait and ask again.
          if (!(err instanceof ATLRateLimitError && err.code === "too_many_waits" && Date.now() < until)) throw err;
          await sleep(Math.min((err.retryAfter ?? 1) * 1000, until - Date.now()), opts.signal);
          continue;
        }
        const { approval, skewMs } = read;
        if (approval.status !== "PENDING") return approval as FinalApproval;
        const now = Date.now();
        // Past expires_at nobody may decide it (409 approval_expired); only the sweep has not marked it yet.
        const toExpiry = Date.parse(approval.expires_at) + expiryGraceMs - (now + skewMs);
        if (toExpiry <= 0) return { ...approval, status: "EXPIRED" };
        if (now >= until) {
          throw new ATLTimeoutError(`approval request ${id} is still PENDING after ${opts.timeoutMs} ms`, {
            status: 0,
            code: "timeout",
            body: approval,
          });
        }
        waitMs = Math.max(1, Math.ceil(Math.min(maxWaitMs, until - now, toExpiry)));
      }
    },

    wrap<A extends Record<string, unknown>, R>(toolName: string, fn: (args: A) => R | Promise<R>, wopts: WrapOptions = {}) {
      return async (args: A, callOpts: WrapCallOptions = {}): Promise<Awaited<R>> => {
        const base: ExecuteInput = {
          tool: toolName,
          args,
          agent: wopts.agent ?? options.agent,
          workflow: wopts.workflow,
          domain: wopts.domain,
          stage: wopts.stage,
          trust_level: wopts.trust_level,
          trace_id: callOpts.trace_id,
          idempotency_key: wopts.idempotencyKey?.(args),
        };
        const call: CallOptions = { signal: callOpts.signal, traceparent: callOpts.traceparent };
        let decision = await client.execute(strip(base), call);
        if (decision.kind === "held") {
          const approval = await client.waitForApproval(decision.approvalRequestId, {
            timeoutMs: wopts.approvalTimeoutMs,
            signal: callOpts.signal,
          });
          if (approval.status !== "APPROVED") throw new ATLApprovalError(approval, approval.status);
          // The approval runs once: this call consumes it, so the tool runs only if ATL says so.
          decision = await client.execute(
            strip({ ...base, idempotency_key: undefined, trace_id: decision.trace_id, approval_request_id: approval.id }),
            call,
          );
          if (decision.kind !== "done") {
            throw new ATLError(`execute with approval ${approval.id} was held again`, {
              status: 202,
              code: "unexpected_answer",
              body: decision,
            });
          }
        }
        const done = decision;
        const event: Omit<EventInput, "status"> = strip({
          tool_name: toolName,
          tool_args: args,
          agent: base.agent,
          workflow_name: base.workflow,
          domain: base.domain ?? options.domain,
          stage: base.stage,
          trust_level: done.trust_level,
          trace_id: done.trace_id,
          mode: done.mode,
          approval_request_id: done.approval_request_id,
          sandbox_id: done.sandbox_id,
        });
        const started = Date.now();
        let result: Awaited<R>;
        try {
          result = await fn(args);
        } catch (toolError) {
          await report({ ...event, status: "failed", error: errorText(toolError), latency_ms: Date.now() - started }, call, {
            toolError,
          });
          throw toolError;
        }
        await report(
          { ...event, status: "succeeded", tool_result: (result ?? null) as JSONValue, latency_ms: Date.now() - started },
          call,
          { result },
        );
        return result;
      };
    },

    async reportEvents(events, opts) {
      const one = !Array.isArray(events);
      const list = (one ? [events] : events).map((e) =>
        e.domain === undefined && options.domain !== undefined ? { ...e, domain: options.domain } : e,
      );
      const ans = await request<EventsCreated>("POST", route("/api/v1/events"), one ? list[0] : { events: list }, opts);
      return ans.body;
    },

    async decide(id, decision, reason, opts) {
      const body: { decision: string; reason?: string } = { decision };
      if (reason !== undefined) body.reason = reason;
      const ans = await request<ApprovalRequest>(
        "POST",
        route("/api/v1/approvals/{id}/decisions", { id }),
        body,
        opts,
      );
      return ans.body;
    },

    async listAuditLogs(filter = {}, opts) {
      return (await request<AuditLogPage>("GET", route("/api/v1/audit/logs") + query(filter), undefined, opts)).body;
    },

    async listEvents(filter = {}, opts) {
      return (await request<EventPage>("GET", route("/api/v1/events") + query(filter), undefined, opts)).body;
    },

    async listApprovals(filter = {}, opts) {
      return (await request<ApprovalPage>("GET", route("/api/v1/approvals") + query(filter), undefined, opts)).body;
    },
  };

  // One read of an approval request, with the server's clock ahead of ours by skewMs (0 when it does not say).
  async function readApproval(id: string, waitMs: number, opts: CallOptions) {
    if (!(waitMs >= 0 && waitMs <= maxWaitMs)) throw new RangeError(`waitMs must be 0 to ${maxWaitMs}`);
    const q = waitMs > 0 ? `?wait=${Math.ceil(waitMs)}ms` : "";
    const ans = await request<ApprovalRequest>("GET", route("/api/v1/approvals/{id}", { id }) + q, undefined, {
      ...opts,
      extraMs: waitMs,
    });
    const serverDate = Date.parse(ans.headers.get("Date") ?? "");
    // Date has a resolution of one second; a smaller difference is noise.
    const skew = Number.isNaN(serverDate) ? 0 : serverDate - Date.now();
    return { approval: ans.body, skewMs: Math.abs(skew) < 2_000 ? 0 : skew };
  }

  async function report(event: EventInput, call: CallOptions, outcome: { result?: unknown; toolError?: unknown }) {
    try {
      await client.reportEvents(event, call);
    } catch (err) {
      if (err instanceof ATLError) throw new ATLReportError(err, outcome);
      throw err;
    }
  }

  return client;
}

function errorFrom(res: Response, parsed: unknown, method: string, path: string): ATLError {
  const retry = res.headers.get("Retry-After");
  const retryAfter = retry !== null && /^\d+$/.test(retry) ? Number(retry) : undefined;
  const err = (parsed as { error?: { code?: unknown; message?: unknown; events?: unknown } } | undefined)?.error;
  const code = typeof err?.code === "string" ? err.code : `http_${res.status}`;
  const message = typeof err?.message === "string" ? err.message : `${method} ${path} answered ${res.status}`;
  const events = Array.isArray(err?.events) ? (err.events as EventError[]) : undefined;
  const Class = errorClassFor(res.status);
  return new Class(message, { status: res.status, code, retryAfter, body: parsed, events });
}

// An AbortSignal that fires on the caller's signal or after ms; done() clears the timer.
function deadline(ms: number, outer?: AbortSignal) {
  const ctl = new AbortController();
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    ctl.abort(new Error(`timed out after ${ms} ms`));
  }, ms);
  const onAbort = () => ctl.abort(outer?.reason);
  if (outer?.aborted) ctl.abort(outer.reason);
  else outer?.addEventListener("abort", onAbort, { once: true });
  return {
    signal: ctl.signal,
    timedOut: () => expired,
    done: () => {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    },
  };
}

// Resolves after ms, or rejects with the signal's reason when it aborts first.
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

// A path of the OpenAPI document with its {params} filled in; a path the document lacks does not compile.
function route(template: keyof paths, params: Record<string, string> = {}): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const v = params[name];
    if (v === undefined || v === "") throw new TypeError(`${name} is required`);
    return encodeURIComponent(v);
  });
}

function query(filter: object): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filter)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s === "" ? "" : `?${s}`;
}

// Drops undefined fields, so the body carries only what the caller set.
function strip<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function errorText(err: unknown): string {
  const s = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return s.length > 2000 ? s.slice(0, 2000) : s;
}
