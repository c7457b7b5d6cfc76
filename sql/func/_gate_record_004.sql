create function atl._gate_record(
  p_tenant text, p_http_status integer, p_answer jsonb, p_audit_status text, p_event_status text,
  p_agent_id text, p_workflow text, p_level text, p_stage text, p_tool text, p_args jsonb,
  p_request_id uuid, p_sandbox_id text, p_trace_id text, p_mode text, p_domain text,
  p_route text, p_user_id text, p_latency_ms integer, p_error text, p_write_audit boolean default true)
returns jsonb
language plpgsql volatile
as $$
declare
  v_event_id uuid;
begin
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, status, approval_request_id, sandbox_id, trace_id, mode, error)
  values (p_tenant, p_domain, p_workflow, p_agent_id, p_level, p_stage, p_tool, p_args, p_event_status,
    p_request_id, p_sandbox_id, p_trace_id, p_mode, p_error)
  returning id into v_event_id;
  if p_write_audit then
    perform atl.audit_log_insert(p_trace_id, p_agent_id, p_route, p_mode, p_audit_status, p_http_status,
                                 p_latency_ms, p_user_id, p_error);
  end if;
  return jsonb_build_object('http_status', p_http_status,
    'body', jsonb_strip_nulls(p_answer || jsonb_build_object('event_id', v_event_id, 'trace_id', p_trace_id,
                                  'trust_level', p_level, 'mode', p_mode, 'approval_request_id', p_request_id,
                                  'sandbox_id', p_sandbox_id)));
end $$;
comment on function atl._gate_record(text, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean) is
  'Private: appends a gate call''s event (and audit row) and returns {"http_status", "body"}.';
