create function atl._approval_json(r atl.approval_requests) returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', r.id, 'status', r.status, 'trust_level', r.trust_level,
    'required_approvals', r.required_approvals, 'approvals', r.approvals, 'expires_at', r.expires_at,
    'domain', r.domain, 'agent_id', r.agent_id, 'tool_name', r.tool_name, 'action_type', r.action_type,
    'action_payload', r.action_payload, 'requested_by', r.requested_by, 'trace_id', r.trace_id,
    'auto_approve_eligible', r.auto_approve_eligible, 'created_at', r.created_at,
    'decided_at', r.decided_at, 'consumed_at', r.consumed_at,
    'decisions', coalesce((select jsonb_agg(jsonb_build_object('id', d.id, 'decision', d.decision,
                             'decided_by', d.decided_by, 'reason', d.reason, 'created_at', d.created_at)
                           order by d.created_at, d.id)
                           from atl.approval_decisions d
                           where d.tenant_id = r.tenant_id and d.approval_request_id = r.id), '[]'::jsonb))
$$;
comment on function atl._approval_json(atl.approval_requests) is 'Private: an approval request and its decisions as JSON.';
