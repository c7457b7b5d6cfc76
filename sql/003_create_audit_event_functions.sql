-- Audit log and action event functions: insert and keyset-paged queries.

-- Writes one audit row for the current tenant and returns it.
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

-- The current tenant's audit rows, newest first. NULL filters match everything;
-- (p_before_created_at, p_before_id) is the keyset cursor: rows strictly older.
-- Built per call so each filter combination is planned on its own index.
create function atl.audit_log_query(
  p_agent_id text default null, p_trace_id text default null, p_status text default null,
  p_mode text default null, p_since timestamptz default null, p_until timestamptz default null,
  p_before_created_at timestamptz default null, p_before_id uuid default null, p_limit integer default 50)
returns setof atl.audit_logs
language plpgsql stable
as $$
declare
  v_sql text := 'select * from atl.audit_logs where tenant_id = atl.current_tenant()';
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  if p_agent_id is not null then v_sql := v_sql || ' and agent_id = $1'; end if;
  if p_trace_id is not null then v_sql := v_sql || ' and trace_id = $2'; end if;
  if p_status is not null then v_sql := v_sql || ' and status = $3'; end if;
  if p_mode is not null then v_sql := v_sql || ' and mode = $4'; end if;
  if p_since is not null then v_sql := v_sql || ' and created_at >= $5'; end if;
  if p_until is not null then v_sql := v_sql || ' and created_at < $6'; end if;
  if p_before_created_at is not null then
    v_sql := v_sql || ' and (created_at, id) < ($7, coalesce($8, ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid))';
  end if;
  v_sql := v_sql || ' order by created_at desc, id desc limit $9';
  return query execute v_sql
    using p_agent_id, p_trace_id, p_status, p_mode, p_since, p_until, p_before_created_at, p_before_id, p_limit;
end $$;
comment on function atl.audit_log_query(text, text, text, text, timestamptz, timestamptz, timestamptz, uuid, integer) is
  'Current tenant''s audit rows newest first, filtered by agent, trace, status, mode, [since, until); keyset cursor (created_at, id); limit 1..1000.';

-- Appends a batch of action events for the current tenant through unnest
-- (COPY is refused under RLS). Arrays are parallel: element i of each is event i.
create function atl.event_insert(
  p_domain text[], p_workflow_name text[], p_agent text[], p_trust_level text[], p_stage text[],
  p_tool_name text[], p_tool_args jsonb[], p_tool_result jsonb[], p_status text[],
  p_approval_request_id uuid[], p_sandbox_id text[], p_trace_id text[], p_mode text[],
  p_latency_ms integer[], p_error text[])
returns setof atl.agent_action_events
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_allowed text[];
  v_bad text;
begin
  select t.allowed_domains into v_allowed from atl.tenants t where t.id = v_tenant;
  if v_allowed is not null then
    select d into v_bad from unnest(p_domain) d where coalesce(d, 'default') <> all (v_allowed) limit 1;
    if found then
      raise exception 'domain % is not accepted by this tenant', v_bad using errcode = 'AT400', hint = 'domain_not_allowed';
    end if;
  end if;
  return query
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, tool_result, status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error)
  select v_tenant, coalesce(u.domain, 'default'), u.workflow_name, u.agent, coalesce(u.trust_level, 'L0'),
         coalesce(u.stage, 'execute'), u.tool_name, u.tool_args, u.tool_result, u.status, u.approval_request_id,
         u.sandbox_id, u.trace_id, coalesce(u.mode, 'dry_run'), u.latency_ms, left(u.error, 2000)
  from unnest(p_domain, p_workflow_name, p_agent, p_trust_level, p_stage, p_tool_name, p_tool_args, p_tool_result,
              p_status, p_approval_request_id, p_sandbox_id, p_trace_id, p_mode, p_latency_ms, p_error)
       with ordinality as u(domain, workflow_name, agent, trust_level, stage, tool_name, tool_args, tool_result,
                            status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error, n)
  order by u.n
  returning *;
end $$;
comment on function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) is
  'Appends a batch of action events for the current tenant from parallel arrays (unnest; COPY is refused under RLS); NULL domain/trust_level/stage/mode take defaults.';

-- The current tenant's action events, newest first, like atl.audit_log_query.
create function atl.event_query(
  p_agent text default null, p_trace_id text default null, p_status text default null,
  p_tool_name text default null, p_approval_request_id uuid default null,
  p_since timestamptz default null, p_until timestamptz default null,
  p_before_created_at timestamptz default null, p_before_id uuid default null, p_limit integer default 50)
returns setof atl.agent_action_events
language plpgsql stable
as $$
declare
  v_sql text := 'select * from atl.agent_action_events where tenant_id = atl.current_tenant()';
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  if p_agent is not null then v_sql := v_sql || ' and agent = $1'; end if;
  if p_trace_id is not null then v_sql := v_sql || ' and trace_id = $2'; end if;
  if p_status is not null then v_sql := v_sql || ' and status = $3'; end if;
  if p_tool_name is not null then v_sql := v_sql || ' and tool_name = $4'; end if;
  if p_approval_request_id is not null then v_sql := v_sql || ' and approval_request_id = $5'; end if;
  if p_since is not null then v_sql := v_sql || ' and created_at >= $6'; end if;
  if p_until is not null then v_sql := v_sql || ' and created_at < $7'; end if;
  if p_before_created_at is not null then
    v_sql := v_sql || ' and (created_at, id) < ($8, coalesce($9, ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid))';
  end if;
  v_sql := v_sql || ' order by created_at desc, id desc limit $10';
  return query execute v_sql
    using p_agent, p_trace_id, p_status, p_tool_name, p_approval_request_id, p_since, p_until,
          p_before_created_at, p_before_id, p_limit;
end $$;
comment on function atl.event_query(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz, uuid, integer) is
  'Current tenant''s action events newest first, filtered by agent, trace, status, tool, approval request, [since, until); keyset cursor (created_at, id).';

revoke all on all functions in schema atl from public;
grant execute on function
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.audit_log_query(text, text, text, text, timestamptz, timestamptz, timestamptz, uuid, integer),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.event_query(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz, uuid, integer)
  to {{ .app_role }};

---- create above / drop below ----

drop function atl.event_query(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz, uuid, integer);
drop function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]);
drop function atl.audit_log_query(text, text, text, text, timestamptz, timestamptz, timestamptz, uuid, integer);
drop function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text);
