-- Reads at scale: every filter the list routes offer has an index that
-- yields its rows already in keyset order (tenant_id, filter, created_at desc,
-- id desc), so a page is an ordered index scan that stops after `limit` rows,
-- never a scan and sort of the whole tenant; and every list function runs a
-- statement holding only the filters given, so each filter set is planned
-- (custom or generic) against its own index. plan_test.go asserts the plans.

create index audit_logs_tenant_status_created_idx on atl.audit_logs (tenant_id, status, created_at desc, id desc);
create index audit_logs_tenant_mode_created_idx on atl.audit_logs (tenant_id, mode, created_at desc, id desc);
drop index atl.audit_logs_tenant_trace_idx;
create index audit_logs_tenant_trace_created_idx on atl.audit_logs (tenant_id, trace_id, created_at desc, id desc);

create index agent_action_events_tenant_tool_created_idx on atl.agent_action_events (tenant_id, tool_name, created_at desc, id desc);
create index agent_action_events_tenant_status_created_idx on atl.agent_action_events (tenant_id, status, created_at desc, id desc);
drop index atl.agent_action_events_tenant_trace_idx;
create index agent_action_events_tenant_trace_created_idx on atl.agent_action_events (tenant_id, trace_id, created_at desc, id desc);
drop index atl.agent_action_events_tenant_request_idx;
create index agent_action_events_tenant_request_created_idx on atl.agent_action_events
  (tenant_id, approval_request_id, created_at desc, id desc) where approval_request_id is not null;

-- The statement atl.audit_log_query runs for a set of filters: only the
-- filters given appear, so each set gets a plan that uses its own index.
-- Parameters $1..$9 are those of atl.audit_log_query, in order.
create function atl._audit_log_query_sql(
  p_agent_id text, p_trace_id text, p_status text, p_mode text, p_since timestamptz, p_until timestamptz,
  p_before_created_at timestamptz)
returns text
language sql immutable
as $$
  select 'select * from atl.audit_logs where tenant_id = atl.current_tenant()'
    || case when p_agent_id is not null then ' and agent_id = $1' else '' end
    || case when p_trace_id is not null then ' and trace_id = $2' else '' end
    || case when p_status is not null then ' and status = $3' else '' end
    || case when p_mode is not null then ' and mode = $4' else '' end
    || case when p_since is not null then ' and created_at >= $5' else '' end
    || case when p_until is not null then ' and created_at < $6' else '' end
    || case when p_before_created_at is not null
         then ' and (created_at, id) < ($7, coalesce($8, ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid))' else '' end
    || ' order by created_at desc, id desc limit $9'
$$;
comment on function atl._audit_log_query_sql(text, text, text, text, timestamptz, timestamptz, timestamptz) is
  'Private: the statement atl.audit_log_query executes for the filters that are not NULL (parameters $1..$9 as its own).';

create or replace function atl.audit_log_query(
  p_agent_id text default null, p_trace_id text default null, p_status text default null,
  p_mode text default null, p_since timestamptz default null, p_until timestamptz default null,
  p_before_created_at timestamptz default null, p_before_id uuid default null, p_limit integer default 50)
returns setof atl.audit_logs
language plpgsql stable
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  return query execute atl._audit_log_query_sql(p_agent_id, p_trace_id, p_status, p_mode, p_since, p_until, p_before_created_at)
    using p_agent_id, p_trace_id, p_status, p_mode, p_since, p_until, p_before_created_at, p_before_id, p_limit;
end $$;

-- The statement atl.event_query runs for a set of filters, as
-- atl._audit_log_query_sql; parameters $1..$10 are those of atl.event_query.
create function atl._event_query_sql(
  p_agent text, p_trace_id text, p_status text, p_tool_name text, p_approval_request_id uuid,
  p_since timestamptz, p_until timestamptz, p_before_created_at timestamptz)
returns text
language sql immutable
as $$
  select 'select * from atl.agent_action_events where tenant_id = atl.current_tenant()'
    || case when p_agent is not null then ' and agent = $1' else '' end
    || case when p_trace_id is not null then ' and trace_id = $2' else '' end
    || case when p_status is not null then ' and status = $3' else '' end
    || case when p_tool_name is not null then ' and tool_name = $4' else '' end
    || case when p_approval_request_id is not null then ' and approval_request_id = $5' else '' end
    || case when p_since is not null then ' and created_at >= $6' else '' end
    || case when p_until is not null then ' and created_at < $7' else '' end
    || case when p_before_created_at is not null
         then ' and (created_at, id) < ($8, coalesce($9, ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid))' else '' end
    || ' order by created_at desc, id desc limit $10'
$$;
comment on function atl._event_query_sql(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz) is
  'Private: the statement atl.event_query executes for the filters that are not NULL (parameters $1..$10 as its own).';

create or replace function atl.event_query(
  p_agent text default null, p_trace_id text default null, p_status text default null,
  p_tool_name text default null, p_approval_request_id uuid default null,
  p_since timestamptz default null, p_until timestamptz default null,
  p_before_created_at timestamptz default null, p_before_id uuid default null, p_limit integer default 50)
returns setof atl.agent_action_events
language plpgsql stable
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  return query execute atl._event_query_sql(p_agent, p_trace_id, p_status, p_tool_name, p_approval_request_id,
      p_since, p_until, p_before_created_at)
    using p_agent, p_trace_id, p_status, p_tool_name, p_approval_request_id, p_since, p_until,
          p_before_created_at, p_before_id, p_limit;
end $$;

-- The statement atl.approval_list runs: a status filter only when one is
-- given, so a cached generic plan never has to serve both.
create function atl._approval_list_sql(p_status text, p_before_created_at timestamptz)
returns text
language sql immutable
as $$
  select 'select atl._approval_json(r) from atl.approval_requests r where r.tenant_id = atl.current_tenant()'
    || case when p_status is not null then ' and r.status = $1' else '' end
    || case when p_before_created_at is not null
         then ' and (r.created_at, r.id) < ($2, coalesce($3, ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid))' else '' end
    || ' order by r.created_at desc, r.id desc limit $4'
$$;
comment on function atl._approval_list_sql(text, timestamptz) is
  'Private: the statement atl.approval_list executes for the filters that are not NULL (parameters $1..$4 as its own).';

create or replace function atl.approval_list(
  p_status text default null, p_before_created_at timestamptz default null, p_before_id uuid default null,
  p_limit integer default 50)
returns setof jsonb
language plpgsql stable
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  if p_status is not null and p_status not in ('PENDING', 'APPROVED', 'REJECTED', 'EXPIRED') then
    raise exception 'status must be PENDING, APPROVED, REJECTED or EXPIRED' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  return query execute atl._approval_list_sql(p_status, p_before_created_at)
    using p_status, p_before_created_at, p_before_id, p_limit;
end $$;

revoke all on function atl._audit_log_query_sql(text, text, text, text, timestamptz, timestamptz, timestamptz),
  atl._event_query_sql(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz),
  atl._approval_list_sql(text, timestamptz) from public;
grant execute on function atl._audit_log_query_sql(text, text, text, text, timestamptz, timestamptz, timestamptz),
  atl._event_query_sql(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz),
  atl._approval_list_sql(text, timestamptz) to {{ .app_role }};

---- create above / drop below ----

create or replace function atl.audit_log_query(
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

create or replace function atl.event_query(
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

create or replace function atl.approval_list(
  p_status text default null, p_before_created_at timestamptz default null, p_before_id uuid default null,
  p_limit integer default 50)
returns setof jsonb
language plpgsql stable
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  if p_status is not null and p_status not in ('PENDING', 'APPROVED', 'REJECTED', 'EXPIRED') then
    raise exception 'status must be PENDING, APPROVED, REJECTED or EXPIRED' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  return query
  select atl._approval_json(r) from atl.approval_requests r
  where r.tenant_id = atl.current_tenant()
    and (p_status is null or r.status = p_status)
    and (p_before_created_at is null
         or (r.created_at, r.id) < (p_before_created_at, coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)))
  order by r.created_at desc, r.id desc
  limit p_limit;
end $$;

drop function atl._approval_list_sql(text, timestamptz);
drop function atl._event_query_sql(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz);
drop function atl._audit_log_query_sql(text, text, text, text, timestamptz, timestamptz, timestamptz);

drop index atl.agent_action_events_tenant_request_created_idx;
create index agent_action_events_tenant_request_idx on atl.agent_action_events (tenant_id, approval_request_id)
  where approval_request_id is not null;
drop index atl.agent_action_events_tenant_trace_created_idx;
create index agent_action_events_tenant_trace_idx on atl.agent_action_events (tenant_id, trace_id);
drop index atl.agent_action_events_tenant_status_created_idx;
drop index atl.agent_action_events_tenant_tool_created_idx;

drop index atl.audit_logs_tenant_trace_created_idx;
create index audit_logs_tenant_trace_idx on atl.audit_logs (tenant_id, trace_id);
drop index atl.audit_logs_tenant_mode_created_idx;
drop index atl.audit_logs_tenant_status_created_idx;
