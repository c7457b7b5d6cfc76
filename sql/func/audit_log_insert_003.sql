create function atl.audit_log_insert(
  p_trace_id text, p_agent_id text, p_route text, p_mode text, p_status text,
  p_http_status integer, p_latency_ms integer, p_user_id text, p_error text)
returns setof atl.audit_logs
language sql volatile
as $$
  insert into atl.audit_logs (tenant_id, trace_id, agent_id, route, mode, status, http_status, latency_ms, user_id, error)
  values (atl._require_tenant(), p_trace_id, p_agent_id, p_route, coalesce(p_mode, 'dry_run'), p_status,
          p_http_status, greatest(coalesce(p_latency_ms, 0), 0), p_user_id, left(p_error, 2000))
  returning *
$$;
comment on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) is
  'Appends one audit row (trace, agent, route, mode, status ok|pending_approval|denied|error, http status, latency, user, error) for the current tenant.';
