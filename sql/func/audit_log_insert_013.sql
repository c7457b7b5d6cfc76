create or replace function atl.audit_log_insert(
  p_trace_id text, p_agent_id text, p_route text, p_mode text, p_status text,
  p_http_status integer, p_latency_ms integer, p_user_id text, p_error text)
returns setof atl.audit_logs
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._actor();
begin
  return query
  insert into atl.audit_logs (tenant_id, trace_id, agent_id, route, mode, status, http_status, latency_ms,
    user_id, error, actor_key_id, actor_subject, claimed_user_id)
  values (atl._require_tenant(), p_trace_id, p_agent_id, p_route, coalesce(p_mode, 'dry_run'), p_status,
    p_http_status, greatest(coalesce(p_latency_ms, 0), 0),
    case when v_actor.role in ('approver', 'admin') then v_actor.subject end, left(p_error, 2000),
    v_actor.id, v_actor.subject, p_user_id)
  returning *;
end $$;
comment on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) is
  'Appends one audit row for the current tenant, attributed to the key in app.key_hash (actor_key_id, actor_subject; user_id for human keys); p_user_id is kept only as the untrusted claimed_user_id.';
