create or replace function atl.event_insert(
  p_domain text[], p_workflow_name text[], p_agent text[], p_trust_level text[], p_stage text[],
  p_tool_name text[], p_tool_args jsonb[], p_tool_result jsonb[], p_status text[],
  p_approval_request_id uuid[], p_sandbox_id text[], p_trace_id text[], p_mode text[],
  p_latency_ms integer[], p_error text[])
returns setof atl.agent_action_events
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['agent']);
  v_allowed text[];
  v_bad text;
begin
  select a into v_bad from unnest(p_agent) a
  where a is distinct from v_actor.subject and not (a = any (coalesce(v_actor.agents, '{}'))) limit 1;
  if found then
    raise exception 'this key may not act as agent %', v_bad using errcode = 'AT403', hint = 'agent_mismatch';
  end if;
  select t.allowed_domains into v_allowed from atl.tenants t where t.id = v_tenant;
  if v_allowed is not null then
    select d into v_bad from unnest(p_domain) d where coalesce(d, 'default') <> all (v_allowed) limit 1;
    if found then
      raise exception 'domain % is not accepted by this tenant', v_bad using errcode = 'AT400', hint = 'domain_not_allowed';
    end if;
  end if;
  return query
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, tool_result, status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error,
    source, actor_key_id)
  select v_tenant, coalesce(u.domain, 'default'), u.workflow_name, u.agent, coalesce(u.trust_level, 'L0'),
         coalesce(u.stage, 'execute'), u.tool_name, u.tool_args, u.tool_result, u.status, u.approval_request_id,
         u.sandbox_id, u.trace_id, coalesce(u.mode, 'dry_run'), u.latency_ms, left(u.error, 2000),
         'agent', v_actor.id
  from unnest(p_domain, p_workflow_name, p_agent, p_trust_level, p_stage, p_tool_name, p_tool_args, p_tool_result,
              p_status, p_approval_request_id, p_sandbox_id, p_trace_id, p_mode, p_latency_ms, p_error)
       with ordinality as u(domain, workflow_name, agent, trust_level, stage, tool_name, tool_args, tool_result,
                            status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error, n)
  order by u.n
  returning *;
end $$;
comment on function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) is
  'Appends a batch of events an agent key reports (source agent, actor_key_id) from parallel arrays; each agent must be the key''s subject or one of its agents (AT403 agent_mismatch).';
