-- Audit log and action event functions: insert and keyset-paged queries.

-- Writes one audit row for the current tenant and returns it.
{{ template "func/audit_log_insert_003.sql" . }}

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
{{ template "func/event_insert_003.sql" . }}

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
