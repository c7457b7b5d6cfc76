create function atl.gate_record_outcome(
  p_event_id uuid, p_succeeded boolean, p_upstream_status integer, p_result jsonb, p_error text,
  p_latency_ms integer, p_idempotency_key text default null, p_route text default 'sql atl.gate_record_outcome',
  p_user_id text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_ev atl.agent_action_events;
  v_answer jsonb;
  v_event_id uuid;
begin
  select * into v_ev from atl.agent_action_events e where e.tenant_id = v_tenant and e.id = p_event_id;
  if not found or v_ev.status <> 'dispatched' then
    raise exception 'no dispatched call with this event id' using errcode = 'AT404', hint = 'event_not_found';
  end if;
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, tool_result, status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error)
  values (v_tenant, v_ev.domain, v_ev.workflow_name, v_ev.agent, v_ev.trust_level, v_ev.stage, v_ev.tool_name,
    v_ev.tool_args, p_result, case when p_succeeded then 'succeeded' else 'failed' end, v_ev.approval_request_id,
    v_ev.sandbox_id, v_ev.trace_id, 'live', p_latency_ms, left(p_error, 2000))
  returning id into v_event_id;
  perform atl.audit_log_insert(v_ev.trace_id, v_ev.agent, p_route, 'live', case when p_succeeded then 'ok' else 'error' end,
    200, p_latency_ms, p_user_id, left(p_error, 2000));
  v_answer := jsonb_strip_nulls(jsonb_build_object('status', case when p_succeeded then 'succeeded' else 'failed' end,
    'event_id', v_event_id, 'trace_id', v_ev.trace_id, 'trust_level', v_ev.trust_level, 'mode', 'live',
    'approval_request_id', v_ev.approval_request_id, 'sandbox_id', v_ev.sandbox_id,
    'upstream_status', p_upstream_status, 'result', p_result, 'error', p_error));
  if p_idempotency_key is not null then
    update atl.idempotency_keys i set http_status = 200, response = v_answer
    where i.tenant_id = v_tenant and i.key = p_idempotency_key;
  end if;
  return jsonb_build_object('http_status', 200, 'body', v_answer);
end $$;
comment on function atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text) is
  'Records the outcome of a live call dispatched by atl.gate_execute: a succeeded/failed event with the bounded result, the audit row, and the idempotent answer.';
