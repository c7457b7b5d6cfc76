// The API's shapes. Hand-written until api/openapi.json is generated into openapi.d.ts.

export type TrustLevel = "L0" | "L1" | "L2" | "L3" | "L4";
export type Mode = "dry_run" | "live";
export type Stage = "plan" | "execute" | "review" | "commit";
export type ApprovalStatus = "PENDING" | "APPROVED" | "REJECTED" | "EXPIRED";

/** Body of POST /api/v1/agents/{agent_id}/execute. */
export interface ExecuteRequest {
  agent?: string;
  workflow?: string;
  tool: string;
  args?: Record<string, unknown> | null;
  stage?: Stage;
  trace_id?: string;
  mode?: Mode;
  idempotency_key?: string;
  approval_request_id?: string;
  trust_level?: TrustLevel;
  domain?: string;
}

/** 200 answer of the gate: the call may go ahead (or, in live mode, ATL made it). */
export interface ExecuteResult {
  event_id: string;
  trace_id: string;
  trust_level: TrustLevel;
  mode: Mode;
  status: "allowed" | "dispatched" | "succeeded" | "failed";
  sandbox_id?: string;
  approval_request_id?: string;
  auto_approved?: boolean;
  upstream_status?: number;
  result?: unknown;
  error?: string;
}

/** 202 answer of the gate: held until humans decide. */
export interface HeldResult {
  event_id: string;
  trace_id: string;
  trust_level: TrustLevel;
  mode: Mode;
  status: "pending_approval";
  approval_request_id: string;
  expires_at: string;
  required_approvals: number;
}

export interface Decision {
  id: string;
  decision: "APPROVE" | "REJECT";
  decided_by: string;
  reason: string | null;
  created_at: string;
}

export interface ApprovalRequest {
  id: string;
  domain: string;
  status: ApprovalStatus;
  agent_id: string;
  trace_id: string | null;
  tool_name: string;
  action_type: string;
  action_payload: { tool: string; args: Record<string, unknown> };
  trust_level: TrustLevel;
  requested_by: string;
  required_approvals: number;
  approvals: number;
  auto_approve_eligible: boolean;
  decisions: Decision[];
  created_at: string;
  decided_at: string | null;
  expires_at: string;
  consumed_at: string | null;
}

/** One event of POST /api/v1/events. */
export interface EventInput {
  domain?: string;
  workflow_name?: string | null;
  agent?: string;
  trust_level?: TrustLevel;
  stage?: Stage;
  tool_name: string;
  tool_args?: Record<string, unknown> | null;
  tool_result?: unknown;
  status: string;
  approval_request_id?: string | null;
  sandbox_id?: string | null;
  trace_id?: string;
  mode?: Mode;
  latency_ms?: number | null;
  error?: string | null;
}

export interface Event {
  id: string;
  tenant_id: string;
  domain: string;
  workflow_name: string | null;
  agent: string;
  trust_level: TrustLevel;
  stage: Stage;
  tool_name: string;
  tool_args: Record<string, unknown> | null;
  tool_result: unknown;
  status: string;
  approval_request_id: string | null;
  sandbox_id: string | null;
  trace_id: string;
  mode: Mode;
  latency_ms: number | null;
  error: string | null;
  created_at: string;
}

export interface AuditLog {
  id: string;
  tenant_id: string;
  trace_id: string;
  agent_id: string | null;
  route: string;
  mode: Mode;
  status: string;
  http_status: number;
  latency_ms: number | null;
  user_id: string | null;
  error: string | null;
  created_at: string;
}

export interface Page<T> {
  items: T[];
  count: number;
  next_cursor: string | null;
}

/** Answer of POST /api/v1/events. */
export interface EventsCreated {
  items: Event[];
  count: number;
}

/** What was wrong with one event of a refused batch. */
export interface EventError {
  index: number;
  code: string;
  message: string;
}
