// Typed errors: every failure of a call to ATL is an ATLError carrying the API's stable error code.

import type { ApprovalRequest, ApprovalStatus, ErrorCode, EventError } from "./types.js";

/** Codes the client itself gives when there is no API error to carry. */
export type ClientErrorCode =
  | "network_error" // no answer, or an answer that is not JSON
  | "timeout" // no answer in time, or no decision in time
  | "approval_rejected" // wrap: a human rejected the call
  | "approval_expired" // wrap: nobody decided before expires_at (also an API code)
  | "unexpected_answer" // an answer the API does not document
  | `http_${number}`; // an error answer without an ATL error body (e.g. from a proxy)

/** What ATL answered with an error, or what kept the call from getting an answer. */
export class ATLError extends Error {
  /** HTTP status of the answer; 0 when there was none (network error, timeout). */
  readonly status: number;
  /** The API's stable snake_case code (`error.code`), e.g. `unauthorized`, `approval_consumed`. */
  readonly code: ErrorCode | ClientErrorCode | (string & {});
  /** Seconds the server asked to wait before retrying (`Retry-After`), when it sent one. */
  readonly retryAfter: number | undefined;
  /** The whole answer body as parsed JSON (the gate adds `event_id`, `trace_id` and `status` to its refusals). */
  readonly body: unknown;
  /** For a refused event batch (`invalid_events`): what was wrong with each event. */
  readonly events: EventError[] | undefined;

  constructor(
    message: string,
    init: { status: number; code: ATLError["code"]; retryAfter?: number; body?: unknown; events?: EventError[]; cause?: unknown },
  ) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code;
    this.retryAfter = init.retryAfter;
    this.body = init.body;
    this.events = init.events;
  }
}

/** 400: bad JSON, a field that fails validation, an unknown field. */
export class ATLValidationError extends ATLError {}
/** 401 (no, unknown or revoked key) and 403 (role, `tenant_mismatch`, `live_disabled`, `self_approval`). */
export class ATLAuthError extends ATLError {}
/** 404: the id does not exist, or belongs to another tenant. */
export class ATLNotFoundError extends ATLError {}
/** 409: a state conflict, e.g. `approval_consumed`, `already_decided`, `idempotency_key_reused`. */
export class ATLConflictError extends ATLError {}
/** 429: `rate_limited`, `tenant_busy`, `too_many_waits`; see `retryAfter`. */
export class ATLRateLimitError extends ATLError {}
/** 503: `database_unavailable` (see `retryAfter`) or `requires_database`. */
export class ATLUnavailableError extends ATLError {}
/** No answer: the connection failed or the answer was unreadable (`code` is `network_error`). */
export class ATLNetworkError extends ATLError {}
/** A request or a wait for a decision took longer than allowed (`code` is `timeout`). */
export class ATLTimeoutError extends ATLError {}

/** A held call whose approval request ended REJECTED or EXPIRED; `wrap` throws it instead of running the tool. */
export class ATLApprovalError extends ATLError {
  /** The final status of the approval request. */
  readonly approvalStatus: Exclude<ApprovalStatus, "PENDING" | "APPROVED">;
  /** The approval request as ATL last answered it, with its decisions. */
  readonly approval: ApprovalRequest;

  constructor(approval: ApprovalRequest, status: Exclude<ApprovalStatus, "PENDING" | "APPROVED">) {
    super(`approval request ${approval.id} is ${status}`, {
      status: 0,
      code: status === "REJECTED" ? "approval_rejected" : "approval_expired",
      body: approval,
    });
    this.approvalStatus = status;
    this.approval = approval;
  }
}

/** The tool ran but reporting its outcome to ATL failed; `result` (or `toolError`) holds what the tool did. */
export class ATLReportError extends ATLError {
  readonly result: unknown;
  readonly toolError: unknown;

  constructor(cause: ATLError, outcome: { result?: unknown; toolError?: unknown }) {
    super(`the tool ran but its outcome was not recorded: ${cause.message}`, {
      status: cause.status,
      code: cause.code,
      retryAfter: cause.retryAfter,
      body: cause.body,
      cause,
    });
    this.result = outcome.result;
    this.toolError = outcome.toolError;
  }
}

/** The error class for an HTTP status. */
export function errorClassFor(status: number): typeof ATLError {
  switch (true) {
    case status === 400:
      return ATLValidationError;
    case status === 401 || status === 403:
      return ATLAuthError;
    case status === 404:
      return ATLNotFoundError;
    case status === 409:
      return ATLConflictError;
    case status === 429:
      return ATLRateLimitError;
    case status === 503:
      return ATLUnavailableError;
    default:
      return ATLError;
  }
}
