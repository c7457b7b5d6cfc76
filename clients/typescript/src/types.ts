// The API's shapes, from api/openapi.json (generated into openapi.d.ts by `npm run gen`).

import type { components, operations } from "./openapi.js";

type S = components["schemas"];
type Query<Op extends keyof operations> = NonNullable<operations[Op]["parameters"]["query"]>;

export type TrustLevel = S["TrustLevel"];
export type Mode = S["Mode"];
export type Stage = S["Stage"];
export type ApprovalStatus = S["ApprovalRequest"]["status"];
/** Every stable code the API answers in `error.code`. */
export type ErrorCode = S["ErrorCode"];

/** Body of POST /api/v1/agents/{agent_id}/execute. */
export type ExecuteRequest = S["ExecuteRequest"];
/** 200 answer of the gate: the call may go ahead (or, in live mode, ATL made it). */
export type ExecuteResult = S["ExecuteResult"];
/** 202 answer of the gate: held until humans decide. */
export type HeldResult = S["HeldResult"];
/** A gate refusal (403, 409): an error that was recorded as an event; ATLError.body holds it. */
export type GateRefusal = S["GateRefusal"];

export type Decision = S["Decision"];
export type ApprovalRequest = S["ApprovalRequest"];

/** One event of POST /api/v1/events. */
export type EventInput = S["EventInput"];
export type Event = S["Event"];
export type AuditLog = S["AuditLog"];

/** A list answer: newest first; pass next_cursor as `cursor` for the next page. */
export type Page<T> = Omit<S["EventPage"], "items"> & { items: T[] };
export type AuditLogPage = S["AuditLogPage"];
export type EventPage = S["EventPage"];
export type ApprovalPage = S["ApprovalPage"];
/** Any JSON value (a tool's result). */
export type JSONValue = S["AnyValue"];
/** Answer of POST /api/v1/events. */
export type EventsCreated = S["EventList"];
/** What was wrong with one event of a refused batch. */
export type EventError = S["EventError"];

/** A webhook target (POST/GET /api/v1/webhooks); `secret` only in the answer that creates it. */
/** An API key as listed (no secret), with who issued, revoked or replaced it. */
export type Key = S["Key"];
/** A rotation's answer: the replacement (with its secret, once) and the old key. */
export type KeyRotation = S["KeyRotation"];
/** A json webhook delivery's body: approval.* events carry approval, key.* events key and actor. */
export type WebhookEvent = S["WebhookEvent"];
export type Webhook = S["Webhook"];
export type WebhookCreated = S["WebhookCreated"];
/** One event for one webhook, with its attempts (GET /api/v1/webhooks/{id}/deliveries). */
export type WebhookDelivery = S["WebhookDelivery"];
export type WebhookDeliveryPage = S["WebhookDeliveryPage"];

/** Filters of GET /api/v1/audit/logs. */
export type AuditLogFilter = Query<"listAuditLogs">;
/** Filters of GET /api/v1/events. */
export type EventFilter = Query<"listEvents">;
/** Filters of GET /api/v1/approvals. */
export type ApprovalFilter = Query<"listApprovals">;
