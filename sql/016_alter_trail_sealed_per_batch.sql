-- The write path as cheap as a plain insert.
--
-- Until now every chained row went through a row trigger that rendered the
-- whole row with to_jsonb, hashed it, and carried the head in a setting, and
-- the gate wrote its event and audit row one statement each. Now:
--
-- * A chained row's hash is SHA-256(prev_hash || leaf), where the leaf is the
--   SHA-256 of the row's record text (atl._chain_leaf: the table name, every
--   column but the hashes in table order, created_at as epoch microseconds).
--   chain_v = 2 marks these rows; rows chained before keep chain_v NULL and
--   their JSON encoding, and atl._chain_row_hash (used by atl.audit_verify)
--   computes either from a row's JSON.
-- * atl._trail_append seals a whole set of events and audit rows of the
--   current tenant at once (the head read once, each row hashed in order) and
--   writes each table with one INSERT and moves the head once; the row
--   trigger runs only for rows that arrive unsealed (WHEN seq IS NULL) and
--   moves the head itself, so no statement trigger copies every inserted row
--   into a transition table any more.
-- * atl.gate_execute_batch decides many calls in one call, each in its own
--   subtransaction (a bad call fails only itself), and seals all their rows
--   once. atl.gate_execute is the same code for one call.
-- * atl.event_insert_batch does the same for event reports and their audit
--   rows; atl.event_insert shares its checks (atl._event_rows).
-- * CHECKs on the trail use a plain pattern and char_length instead of
--   bounded repeats such as {1,128}, which PostgreSQL's regex engine expands.

-- ---------------------------------------------------------------- encoding

alter table atl.audit_logs add column chain_v smallint, add constraint audit_logs_chain_v check (chain_v = 2);
alter table atl.agent_action_events add column chain_v smallint, add constraint agent_action_events_chain_v check (chain_v = 2);
alter table atl.change_log add column chain_v smallint, add constraint change_log_chain_v check (chain_v = 2);
comment on column atl.audit_logs.chain_v is
  'How row_hash encodes the row: 2 = atl._chain_leaf (record text); NULL = the JSON encoding of rows chained before it.';
comment on column atl.agent_action_events.chain_v is
  'How row_hash encodes the row: 2 = atl._chain_leaf (record text); NULL = the JSON encoding of rows chained before it.';
comment on column atl.change_log.chain_v is
  'How row_hash encodes the row: 2 = atl._chain_leaf (record text); NULL = the JSON encoding of rows chained before it.';

-- A record's text form is unambiguous for a fixed list of columns (quoted
-- where needed, NULL as nothing); created_at goes in as epoch microseconds
-- because the text of a timestamptz depends on the session's TimeZone. Every
-- column but prev_hash and row_hash is in the list (a test checks it).
-- STABLE, not IMMUTABLE, only because record_out and convert_to are: a SQL
-- function whose body is no more volatile than itself is inlined where it is
-- called, which makes the hash of a row cost about what its expression does.
create function atl._chain_leaf(r atl.audit_logs) returns bytea
language sql stable parallel safe
as $$
  select sha256(convert_to(row('audit_logs', r.tenant_id, r.id, r.trace_id, r.agent_id, r.route, r.mode, r.status,
    r.http_status, r.latency_ms, r.user_id, r.error,
    (extract(epoch from r.created_at - timestamptz 'epoch') * 1000000)::bigint, r.seq,
    r.actor_key_id, r.actor_subject, r.claimed_user_id, r.chain_v)::text, 'UTF8'))
$$;
comment on function atl._chain_leaf(atl.audit_logs) is
  'Private: SHA-256 of an audit row''s canonical record text (every column but the hashes; created_at in epoch microseconds).';

create function atl._chain_leaf(r atl.agent_action_events) returns bytea
language sql stable parallel safe
as $$
  select sha256(convert_to(row('agent_action_events', r.tenant_id, r.id, r.domain, r.workflow_name, r.agent,
    r.trust_level, r.stage, r.tool_name, r.tool_args, r.tool_result, r.status, r.approval_request_id,
    r.sandbox_id, r.trace_id, r.mode, r.latency_ms, r.error,
    (extract(epoch from r.created_at - timestamptz 'epoch') * 1000000)::bigint, r.seq,
    r.source, r.actor_key_id, r.chain_v)::text, 'UTF8'))
$$;
comment on function atl._chain_leaf(atl.agent_action_events) is
  'Private: SHA-256 of an event''s canonical record text (every column but the hashes; created_at in epoch microseconds).';

create function atl._chain_leaf(r atl.change_log) returns bytea
language sql stable parallel safe
as $$
  select sha256(convert_to(row('change_log', r.tenant_id, r.id, r.entity, r.entity_id, r.action, r.actor_key_id,
    r.actor_subject, r.detail, (extract(epoch from r.created_at - timestamptz 'epoch') * 1000000)::bigint, r.seq,
    r.chain_v)::text, 'UTF8'))
$$;
comment on function atl._chain_leaf(atl.change_log) is
  'Private: SHA-256 of a change record''s canonical record text (every column but the hashes; created_at in epoch microseconds).';

-- The hash of a chained row from its JSON, in whichever encoding it was
-- chained: what atl.audit_verify recomputes.
create or replace function atl._chain_row_hash(p_table text, p_row jsonb, p_prev bytea) returns bytea
language sql immutable parallel safe
as $$
  select case when p_row -> 'chain_v' = '2'::jsonb then
    sha256(p_prev || case p_table
      when 'audit_logs' then atl._chain_leaf(jsonb_populate_record(null::atl.audit_logs, p_row))
      when 'agent_action_events' then atl._chain_leaf(jsonb_populate_record(null::atl.agent_action_events, p_row))
      when 'change_log' then atl._chain_leaf(jsonb_populate_record(null::atl.change_log, p_row)) end)
  else
    sha256(p_prev || convert_to(
      ((p_row - 'row_hash' - 'prev_hash' - 'created_at'
         - array(select k from unnest(array['source', 'actor_key_id', 'actor_subject', 'claimed_user_id', 'chain_v']) k
                 where p_row -> k = 'null'::jsonb))
        || jsonb_build_object('table', p_table,
             'created_at_us', (extract(epoch from (p_row ->> 'created_at')::timestamptz) * 1000000)::bigint))::text,
      'UTF8'))
  end
$$;
comment on function atl._chain_row_hash(text, jsonb, bytea) is
  'Private: SHA-256 of the previous hash and a chained row given as JSON: its atl._chain_leaf when chain_v is 2, else the JSON encoding of rows chained before migration 016 (columns added later left out while NULL).';

-- The row trigger, for rows that arrive unsealed (a DBA's insert, the change
-- log): the same encoding as atl._trail_append.
create or replace function atl._chain_append() returns trigger
language plpgsql
as $$
declare
  v_key text := 'atl.chain_' || md5(new.tenant_id);
  v_cached text := current_setting(v_key, true);
  v_seq bigint;
  v_hash bytea;
begin
  select h.seq, h.hash into v_seq, v_hash from atl.audit_chain_heads h where h.tenant_id = new.tenant_id for update;
  if not found then
    insert into atl.audit_chain_heads (tenant_id) values (new.tenant_id) on conflict (tenant_id) do nothing;
    select h.seq, h.hash into v_seq, v_hash from atl.audit_chain_heads h where h.tenant_id = new.tenant_id for update;
  end if;
  if coalesce(v_cached, '') <> '' and v_cached <> v_seq || ':' || encode(v_hash, 'hex') then
    raise exception 'the audit chain of tenant % moved under this statement', new.tenant_id
      using errcode = '40001', hint = 'chain_conflict';
  end if;
  new.seq := v_seq + 1;
  new.prev_hash := v_hash;
  new.chain_v := 2;
  new.row_hash := sha256(v_hash || atl._chain_leaf(new));
  update atl.audit_chain_heads h set seq = new.seq, hash = new.row_hash, updated_at = now()
  where h.tenant_id = new.tenant_id;
  perform set_config(v_key, new.seq || ':' || encode(new.row_hash, 'hex'), true);
  return new;
end $$;
comment on function atl._chain_append() is
  'Private trigger (rows inserted without a seq: the change log, a DBA''s insert): links the row into its tenant''s hash chain (chain_v 2) under the head''s row lock and moves the head; a transaction-local setting of the head that does not match it (forged or stale) fails with chain_conflict.';

drop trigger _200_chain on atl.audit_logs;
drop trigger _200_chain on atl.agent_action_events;
drop trigger _200_chain on atl.change_log;
create trigger _200_chain before insert on atl.audit_logs
  for each row when (new.seq is null) execute function atl._chain_append();
create trigger _200_chain before insert on atl.agent_action_events
  for each row when (new.seq is null) execute function atl._chain_append();
create trigger _200_chain before insert on atl.change_log
  for each row when (new.seq is null) execute function atl._chain_append();

-- No statement trigger: each path moves the head itself. The trigger's
-- transition table copied every inserted row (about a third of the cost of
-- a sealed insert) only to check what the writer had just checked.
drop trigger _900_chain_head on atl.audit_logs;
drop trigger _900_chain_head on atl.agent_action_events;
drop trigger _900_chain_head on atl.change_log;
drop function atl._chain_advance();

-- ---------------------------------------------------------------- sealing

-- Seals events and then audit rows of the current tenant into its chain and
-- inserts them, one INSERT a table; returns them sealed. The head is locked
-- and compared with this transaction's setting (a stale or forged setting
-- fails with chain_conflict instead of forking) and moved once.
create function atl._trail_append(inout p_events atl.agent_action_events[], inout p_audits atl.audit_logs[])
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_key text := 'atl.chain_' || md5(v_tenant);
  v_cached text := current_setting(v_key, true);
  v_seq bigint;
  v_hash bytea;
  v_ne integer := coalesce(cardinality(p_events), 0);
  v_na integer := coalesce(cardinality(p_audits), 0);
  e atl.agent_action_events;
  a atl.audit_logs;
begin
  if v_ne + v_na = 0 then
    return;
  end if;
  -- The head, locked (again, if this transaction holds it already): a
  -- setting that does not match it was forged or is stale.
  select h.seq, h.hash into v_seq, v_hash from atl.audit_chain_heads h where h.tenant_id = v_tenant for update;
  if not found then
    insert into atl.audit_chain_heads (tenant_id) values (v_tenant) on conflict (tenant_id) do nothing;
    select h.seq, h.hash into v_seq, v_hash from atl.audit_chain_heads h where h.tenant_id = v_tenant for update;
  end if;
  if coalesce(v_cached, '') <> '' and v_cached <> v_seq || ':' || encode(v_hash, 'hex') then
    raise exception 'the audit chain of tenant % moved under this statement', v_tenant
      using errcode = '40001', hint = 'chain_conflict';
  end if;
  for i in 1 .. v_ne loop
    e := p_events[i];
    v_seq := v_seq + 1;
    e.tenant_id := v_tenant;
    e.seq := v_seq;
    -- JSON null is kept as SQL NULL: the two have different record texts,
    -- but audit_verify reads rows back through JSON, where they are one.
    e.tool_args := nullif(e.tool_args, 'null'::jsonb);
    e.tool_result := nullif(e.tool_result, 'null'::jsonb);
    e.prev_hash := v_hash;
    e.chain_v := 2;
    v_hash := sha256(v_hash || atl._chain_leaf(e));
    e.row_hash := v_hash;
    p_events[i] := e;
  end loop;
  for i in 1 .. v_na loop
    a := p_audits[i];
    v_seq := v_seq + 1;
    a.tenant_id := v_tenant;
    a.seq := v_seq;
    a.prev_hash := v_hash;
    a.chain_v := 2;
    v_hash := sha256(v_hash || atl._chain_leaf(a));
    a.row_hash := v_hash;
    p_audits[i] := a;
  end loop;
  update atl.audit_chain_heads h set seq = v_seq, hash = v_hash, updated_at = now() where h.tenant_id = v_tenant;
  perform set_config(v_key, v_seq || ':' || encode(v_hash, 'hex'), true);
  if v_ne > 0 then
    insert into atl.agent_action_events select * from unnest(p_events);
  end if;
  if v_na > 0 then
    insert into atl.audit_logs select * from unnest(p_audits);
  end if;
end $$;
comment on function atl._trail_append(atl.agent_action_events[], atl.audit_logs[]) is
  'Private: seals events, then audit rows, into the current tenant''s hash chain (chain_v 2) and inserts them with one INSERT a table; returns them sealed.';

-- An audit row of the current tenant, attributed to the acting key (user_id
-- only for human keys; the caller's claim kept as claimed_user_id), not yet
-- sealed or written.
create function atl._audit_row(p_actor atl.api_keys, p_trace_id text, p_agent_id text, p_route text, p_mode text,
  p_status text, p_http_status integer, p_latency_ms integer, p_user_id text, p_error text)
returns atl.audit_logs
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  r atl.audit_logs;
begin
  r.tenant_id := atl._require_tenant();
  r.id := gen_random_uuid();
  r.trace_id := p_trace_id;
  r.agent_id := p_agent_id;
  r.route := p_route;
  r.mode := coalesce(p_mode, 'dry_run');
  r.status := p_status;
  r.http_status := p_http_status;
  r.latency_ms := greatest(coalesce(p_latency_ms, 0), 0);
  r.user_id := case when p_actor.role in ('approver', 'admin') then p_actor.subject end;
  r.error := left(p_error, 2000);
  r.created_at := clock_timestamp();
  r.actor_key_id := p_actor.id;
  r.actor_subject := p_actor.subject;
  r.claimed_user_id := p_user_id;
  return r;
end $$;
comment on function atl._audit_row(atl.api_keys, text, text, text, text, text, integer, integer, text, text) is
  'Private: builds (does not write) an audit row of the current tenant attributed to p_actor: user_id only for approver and admin keys, p_user_id kept as the untrusted claimed_user_id.';

drop function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text);
-- Writes one audit row for the current tenant, attributed to the acting key.
create function atl.audit_log_insert(
  p_trace_id text, p_agent_id text, p_route text, p_mode text, p_status text,
  p_http_status integer, p_latency_ms integer, p_user_id text, p_error text)
returns setof atl.audit_logs
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_audits atl.audit_logs[] := array[atl._audit_row(atl._actor(), p_trace_id, p_agent_id, p_route, p_mode, p_status,
                                                     p_http_status, p_latency_ms, p_user_id, p_error)];
  v_events atl.agent_action_events[];
begin
  select t.p_events, t.p_audits into v_events, v_audits from atl._trail_append(null, v_audits) t;
  return next v_audits[1];
end $$;
comment on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) is
  'Appends one audit row for the current tenant, attributed to the key in app.key_hash (actor_key_id, actor_subject; user_id for human keys); p_user_id is kept only as the untrusted claimed_user_id.';

-- An agent's reported events from parallel arrays, checked (each agent is
-- the key's subject or one of its agents; each domain one the tenant
-- accepts) and built with their defaults, not yet sealed or written.
create function atl._event_rows(
  p_actor atl.api_keys, p_domain text[], p_workflow_name text[], p_agent text[], p_trust_level text[], p_stage text[],
  p_tool_name text[], p_tool_args jsonb[], p_tool_result jsonb[], p_status text[],
  p_approval_request_id uuid[], p_sandbox_id text[], p_trace_id text[], p_mode text[],
  p_latency_ms integer[], p_error text[])
returns atl.agent_action_events[]
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_allowed text[];
  v_bad text;
  v_events atl.agent_action_events[];
begin
  select a into v_bad from unnest(p_agent) a
  where a is distinct from p_actor.subject and not (a = any (coalesce(p_actor.agents, '{}'))) limit 1;
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
  -- Columns in table order: tenant_id, id, domain, workflow_name, agent,
  -- trust_level, stage, tool_name, tool_args, tool_result, status,
  -- approval_request_id, sandbox_id, trace_id, mode, latency_ms, error,
  -- created_at, seq, prev_hash, row_hash, source, actor_key_id, chain_v.
  select array_agg(row(v_tenant, gen_random_uuid(), coalesce(u.domain, 'default'), u.workflow_name, u.agent,
           coalesce(u.trust_level, 'L0'), coalesce(u.stage, 'execute'), u.tool_name, u.tool_args, u.tool_result,
           u.status, u.approval_request_id, u.sandbox_id, u.trace_id, coalesce(u.mode, 'dry_run'), u.latency_ms,
           left(u.error, 2000), clock_timestamp(), null, null, null, 'agent', p_actor.id, null)::atl.agent_action_events
         order by u.n)
  into v_events
  from unnest(p_domain, p_workflow_name, p_agent, p_trust_level, p_stage, p_tool_name, p_tool_args, p_tool_result,
              p_status, p_approval_request_id, p_sandbox_id, p_trace_id, p_mode, p_latency_ms, p_error)
       with ordinality as u(domain, workflow_name, agent, trust_level, stage, tool_name, tool_args, tool_result,
                            status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error, n);
  return v_events;
end $$;
comment on function atl._event_rows(atl.api_keys, text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) is
  'Private: checks an agent key''s reported events (agent_mismatch, domain_not_allowed) and builds them (source agent, defaults applied), not yet sealed or written.';

drop function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]);
-- Appends a batch of events an agent reports: source agent, attributed to the
-- acting key; an agent key reports only as itself or its listed agents.
create function atl.event_insert(
  p_domain text[], p_workflow_name text[], p_agent text[], p_trust_level text[], p_stage text[],
  p_tool_name text[], p_tool_args jsonb[], p_tool_result jsonb[], p_status text[],
  p_approval_request_id uuid[], p_sandbox_id text[], p_trace_id text[], p_mode text[],
  p_latency_ms integer[], p_error text[])
returns setof atl.agent_action_events
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_events atl.agent_action_events[] := atl._event_rows(atl._require_actor(array['agent']), p_domain, p_workflow_name,
    p_agent, p_trust_level, p_stage, p_tool_name, p_tool_args, p_tool_result, p_status, p_approval_request_id,
    p_sandbox_id, p_trace_id, p_mode, p_latency_ms, p_error);
begin
  select t.p_events into v_events from atl._trail_append(v_events, null) t;
  return query select * from unnest(v_events);
end $$;
comment on function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) is
  'Appends a batch of events an agent key reports (source agent, actor_key_id) from parallel arrays, sealed into the chain and written with one INSERT; each agent must be the key''s subject or one of its agents (AT403 agent_mismatch).';

-- Many requests' events and audit rows of the current tenant in one call:
-- each request checked and built in a subtransaction of its own (one the
-- checks refuse fails alone), then every row sealed and written at once (a
-- row that breaks a table constraint then fails the whole call).
create function atl.event_insert_batch(p_requests jsonb) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key text := current_setting('app.key_hash', true);
  r jsonb;
  v_actor atl.api_keys;
  v_mine atl.agent_action_events[];
  v_audit atl.audit_logs;
  v_events atl.agent_action_events[] := '{}';
  v_audits atl.audit_logs[] := '{}';
  v_counts integer[] := '{}';
  v_out jsonb[] := '{}';
  v_answers jsonb := '[]';
  v_at integer := 0;
  v_state text;
  v_message text;
  v_hint text;
  v_detail text;
  a_domain text[]; a_workflow text[]; a_agent text[]; a_level text[]; a_stage text[]; a_tool text[];
  a_args jsonb[]; a_result jsonb[]; a_status text[]; a_request uuid[]; a_sandbox text[]; a_trace text[];
  a_mode text[]; a_latency integer[]; a_error text[];
begin
  perform atl._require_tenant();
  if jsonb_typeof(p_requests) is distinct from 'array' or jsonb_array_length(p_requests) > 1000 then
    raise exception 'p_requests must be a JSON array of at most 1000 requests' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  for r in select x.value from jsonb_array_elements(p_requests) with ordinality as x(value, n) order by x.n loop
    begin
      if jsonb_typeof(r -> 'events') is distinct from 'array' or jsonb_typeof(r -> 'audit') is distinct from 'object' then
        raise exception 'each request needs an events array and an audit object' using errcode = 'AT400', hint = 'validation_failed';
      end if;
      perform set_config('app.key_hash', coalesce(r ->> 'key_hash', v_key, ''), true);
      v_actor := atl._require_actor(array['agent']);
      select array_agg(x.domain order by x.n), array_agg(x.workflow_name order by x.n), array_agg(x.agent order by x.n),
             array_agg(x.trust_level order by x.n), array_agg(x.stage order by x.n), array_agg(x.tool_name order by x.n),
             array_agg(x.tool_args order by x.n), array_agg(x.tool_result order by x.n), array_agg(x.status order by x.n),
             array_agg(x.approval_request_id order by x.n), array_agg(x.sandbox_id order by x.n),
             array_agg(x.trace_id order by x.n), array_agg(x.mode order by x.n), array_agg(x.latency_ms order by x.n),
             array_agg(x.error order by x.n)
      into a_domain, a_workflow, a_agent, a_level, a_stage, a_tool, a_args, a_result, a_status, a_request, a_sandbox,
           a_trace, a_mode, a_latency, a_error
      from rows from (jsonb_to_recordset(r -> 'events') as (domain text, workflow_name text, agent text,
             trust_level text, stage text, tool_name text, tool_args jsonb, tool_result jsonb, status text,
             approval_request_id uuid, sandbox_id text, trace_id text, mode text, latency_ms integer, error text))
           with ordinality as x(domain, workflow_name, agent, trust_level, stage, tool_name, tool_args, tool_result,
             status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error, n);
      v_mine := coalesce(atl._event_rows(v_actor, a_domain, a_workflow, a_agent, a_level, a_stage, a_tool, a_args,
        a_result, a_status, a_request, a_sandbox, a_trace, a_mode, a_latency, a_error), '{}');
      v_audit := atl._audit_row(v_actor, r -> 'audit' ->> 'trace_id', r -> 'audit' ->> 'agent_id',
        r -> 'audit' ->> 'route', r -> 'audit' ->> 'mode', r -> 'audit' ->> 'status',
        (r -> 'audit' ->> 'http_status')::integer, (r -> 'audit' ->> 'latency_ms')::integer,
        r -> 'audit' ->> 'user_id', r -> 'audit' ->> 'error');
      v_events := v_events || v_mine;
      v_audits := v_audits || v_audit;
      v_counts := v_counts || cardinality(v_mine);
      v_out := v_out || null::jsonb;
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_hint = pg_exception_hint,
                              v_detail = pg_exception_detail;
      v_counts := v_counts || null::integer;
      v_out := v_out || jsonb_build_object('error', jsonb_strip_nulls(jsonb_build_object('sqlstate', v_state,
        'message', v_message, 'hint', nullif(v_hint, ''), 'detail', nullif(v_detail, ''))));
    end;
  end loop;
  perform set_config('app.key_hash', coalesce(v_key, ''), true);
  select t.p_events, t.p_audits into v_events, v_audits from atl._trail_append(v_events, v_audits) t;
  -- Each request's answer: its sealed events and its audit row's id and time.
  declare
    v_e integer := 0;
    v_a integer := 0;
  begin
    for i in 1 .. coalesce(cardinality(v_out), 0) loop
      if v_counts[i] is null then
        v_answers := v_answers || jsonb_build_array(v_out[i]);
      else
        v_a := v_a + 1;
        v_answers := v_answers || jsonb_build_array(jsonb_build_object(
          'events', coalesce((select jsonb_agg(to_jsonb(v_events[j]) order by j)
                              from generate_series(v_e + 1, v_e + v_counts[i]) j), '[]'),
          'audit', jsonb_build_object('id', v_audits[v_a].id, 'created_at', v_audits[v_a].created_at)));
        v_e := v_e + v_counts[i];
      end if;
    end loop;
  end;
  return v_answers;
end $$;
comment on function atl.event_insert_batch(jsonb) is
  'Many event reports of the current tenant at once: p_requests is a JSON array (at most 1000) of {"key_hash" (the reporting agent key''s hex SHA-256; default app.key_hash), "events": [objects with atl.event_insert''s fields without p_], "audit": {trace_id, agent_id, route, mode, status, http_status, latency_ms, user_id, error}}. Each request is checked alone (a refusal fails only it: {"error": {...}}); all rows are sealed and written together, so a row that breaks a table constraint fails the whole call. Returns per request {"events": [the rows written], "audit": {"id", "created_at"}}.';

-- ---------------------------------------------------------------- the gate

-- A gate call's event (source gate, acting key) and audit row, built but not
-- written, and its answer {"http_status", "body"}.
create function atl._gate_rows(
  p_tenant text, p_actor atl.api_keys, p_http_status integer, p_answer jsonb, p_audit_status text, p_event_status text,
  p_agent_id text, p_workflow text, p_level text, p_stage text, p_tool text, p_args jsonb,
  p_request_id uuid, p_sandbox_id text, p_trace_id text, p_mode text, p_domain text,
  p_route text, p_user_id text, p_latency_ms integer, p_error text, p_write_audit boolean default true,
  out answer jsonb, out ev atl.agent_action_events, out au atl.audit_logs)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  ev.tenant_id := p_tenant;
  ev.id := gen_random_uuid();
  ev.domain := p_domain;
  ev.workflow_name := p_workflow;
  ev.agent := p_agent_id;
  ev.trust_level := p_level;
  ev.stage := p_stage;
  ev.tool_name := p_tool;
  ev.tool_args := p_args;
  ev.status := p_event_status;
  ev.approval_request_id := p_request_id;
  ev.sandbox_id := p_sandbox_id;
  ev.trace_id := p_trace_id;
  ev.mode := p_mode;
  ev.error := p_error;
  ev.created_at := clock_timestamp();
  ev.source := 'gate';
  ev.actor_key_id := p_actor.id;
  if p_write_audit then
    au := atl._audit_row(p_actor, p_trace_id, p_agent_id, p_route, p_mode, p_audit_status, p_http_status,
                         p_latency_ms, p_user_id, p_error);
  end if;
  answer := jsonb_build_object('http_status', p_http_status,
    'body', jsonb_strip_nulls(p_answer || jsonb_build_object('event_id', ev.id, 'trace_id', p_trace_id,
                                  'trust_level', p_level, 'mode', p_mode, 'approval_request_id', p_request_id,
                                  'sandbox_id', p_sandbox_id)));
end $$;
comment on function atl._gate_rows(text, atl.api_keys, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean) is
  'Private: builds (does not write) a gate call''s event (source gate, acting key) and audit row, and its answer {"http_status", "body"}.';

-- The decision of one gate call, as the acting agent key: everything
-- atl.gate_execute does except writing the event and audit row, which it
-- returns for atl._trail_append.
create function atl._gate_decide(
  p_agent_id text, p_tool text, p_args jsonb default '{}', p_workflow text default null,
  p_stage text default null, p_trace_id text default null, p_mode text default null,
  p_idempotency_key text default null, p_approval_request_id uuid default null,
  p_trust_level text default null, p_domain text default null, p_user_id text default null,
  p_live_enabled boolean default false, p_route text default 'sql atl.gate_execute', p_latency_ms integer default 0,
  out answer jsonb, out ev atl.agent_action_events, out au atl.audit_logs)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['agent']);
  v_args jsonb := coalesce(p_args, '{}'::jsonb);
  v_mode text := coalesce(p_mode, 'dry_run');
  v_stage text := coalesce(p_stage, 'execute');
  v_domain text := coalesce(p_domain, 'default');
  v_trace text := coalesce(p_trace_id, replace(gen_random_uuid()::text, '-', ''));
  v_tenant_row atl.tenants;
  v_policy atl.tool_policies;
  v_level text;
  v_required integer;
  v_hash text;
  v_idem atl.idempotency_keys;
  v_req atl.approval_requests;
  v_sandbox text;
  v_result jsonb;
  v_refusal text;
  v_message text;
  v_ok text := case v_mode when 'live' then 'dispatched' else 'allowed' end;
  v_auto_id uuid;
  v_auto_at timestamptz;
  v_rows record;
begin
  if v_mode not in ('dry_run', 'live') then
    raise exception 'mode must be dry_run or live' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if jsonb_typeof(v_args) <> 'object' then
    raise exception 'args must be a JSON object' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_trust_level is not null and p_trust_level not in ('L0', 'L1', 'L2', 'L3', 'L4') then
    raise exception 'trust_level must be one of L0, L1, L2, L3, L4' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_tool is null or p_tool !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' or char_length(p_tool) > 128 then
    raise exception 'tool must be 1 to 128 characters of letters, digits and _.:-' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_agent_id is null or p_agent_id !~ '^[A-Za-z0-9][A-Za-z0-9@._:+-]*$' or char_length(p_agent_id) > 200 then
    raise exception 'agent_id must be 1 to 200 characters of letters, digits and @._:+-' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_agent_id <> v_actor.subject and not (p_agent_id = any (coalesce(v_actor.agents, '{}'))) then
    raise exception 'this key may not act as agent %', p_agent_id using errcode = 'AT403', hint = 'agent_mismatch';
  end if;

  -- The same key returns the first answer and writes nothing. A concurrent
  -- retry waits on the key's unique index until the first call commits.
  if p_idempotency_key is not null then
    v_hash := md5(jsonb_build_array(p_agent_id, p_tool, v_args, p_workflow, v_stage, v_mode,
                                    p_approval_request_id, p_trust_level, v_domain)::text);
    insert into atl.idempotency_keys (tenant_id, key, request_hash) values (v_tenant, p_idempotency_key, v_hash)
    on conflict (tenant_id, key) do nothing;
    if not found then
      select * into v_idem from atl.idempotency_keys i where i.tenant_id = v_tenant and i.key = p_idempotency_key;
      if v_idem.request_hash <> v_hash then
        raise exception 'this idempotency_key was used for a different call' using errcode = 'AT409', hint = 'idempotency_key_reused';
      end if;
      answer := jsonb_build_object('http_status', v_idem.http_status, 'body', v_idem.response, 'replayed', true);
      return;
    end if;
  end if;

  select * into v_tenant_row from atl.tenants t where t.id = v_tenant;
  if v_domain !~ '^[a-z0-9][a-z0-9_.-]*$' or char_length(v_domain) > 63
     or (v_tenant_row.allowed_domains is not null and v_domain <> all (v_tenant_row.allowed_domains)) then
    raise exception 'domain % is not accepted by this tenant', v_domain using errcode = 'AT400', hint = 'domain_not_allowed';
  end if;
  select * into v_policy from atl.tool_policies p where p.tenant_id = v_tenant and p.tool_name = p_tool;
  -- 'L0' < 'L1' < ... < 'L4' as text.
  v_level := greatest(coalesce(v_policy.trust_level, v_tenant_row.default_trust_level, 'L3'), coalesce(p_trust_level, 'L0'));
  -- An L4 call always needs two distinct people, whatever a policy says.
  v_required := case v_level when 'L4' then greatest(coalesce(v_policy.required_approvals, 2), 2)
                else coalesce(v_policy.required_approvals, 1) end;

  if v_mode = 'live' and not coalesce(p_live_enabled, false) then
    v_refusal := 'live_disabled';
    v_message := 'live mode is switched off (LIVE_ENABLED=false); use dry_run';
    select * into v_rows from atl._gate_rows(v_tenant, v_actor, 403, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
  elsif v_mode = 'live' and v_policy.endpoint_url is null then
    v_refusal := 'no_endpoint';
    v_message := 'live mode needs an endpoint_url in this tool''s policy';
    select * into v_rows from atl._gate_rows(v_tenant, v_actor, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
  elsif v_level in ('L0', 'L1', 'L2') then
    if v_level = 'L2' then
      v_sandbox := 'sbx_' || replace(gen_random_uuid()::text, '-', '');
    end if;
    select * into v_rows from atl._gate_rows(v_tenant, v_actor, 200, jsonb_build_object('status', v_ok), 'ok', v_ok,
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, null, v_sandbox, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
  elsif p_approval_request_id is null then
    -- Hold the exact call for humans.
    insert into atl.approval_requests (tenant_id, domain, agent_id, tool_name, action_type, action_payload,
      trust_level, requested_by, requested_by_key_id, trace_id, expires_at, auto_approve_eligible,
      required_approvals, mode, endpoint_url)
    values (v_tenant, v_domain, p_agent_id, p_tool,
      'COMMIT_' || upper(regexp_replace(p_tool, '[^A-Za-z0-9]+', '_', 'g')),
      jsonb_build_object('tool', p_tool, 'args', v_args), v_level, v_actor.subject, v_actor.id, v_trace,
      now() + make_interval(secs => coalesce(v_policy.approval_ttl_seconds, 3600)),
      v_level = 'L3' and coalesce(v_policy.auto_approve_eligible, false), v_required, v_mode,
      case v_mode when 'live' then v_policy.endpoint_url end)
    returning * into v_req;
    perform atl._change_append('approval', v_req.id::text, 'created',
      atl._approval_state(v_req) || atl._approval_terms(v_req), v_actor.id, v_actor.subject);
    if v_req.auto_approve_eligible then
      insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason, decided_by_role)
      values (v_tenant, v_req.id, 'APPROVE', 'system:auto-approve', 'policy marks this L3 tool auto-approve eligible', 'system')
      returning id, created_at into v_auto_id, v_auto_at;
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id
      returning * into v_req;
      perform atl._change_append('approval', v_req.id::text, 'decided', atl._approval_state(v_req)
        || jsonb_build_object('decision_id', v_auto_id, 'decision', 'APPROVE', 'decided_by', 'system:auto-approve',
                              'decided_by_key_id', null, 'reason', 'policy marks this L3 tool auto-approve eligible',
                              'decided_by_role', 'system', 'created_at', v_auto_at),
        null, 'system:auto-approve');
      perform atl._change_append('approval', v_req.id::text, 'consumed', atl._approval_state(v_req), v_actor.id, v_actor.subject);
      select * into v_rows from atl._gate_rows(v_tenant, v_actor, 200, jsonb_build_object('status', v_ok, 'auto_approved', true),
        'ok', v_ok, p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
    else
      select * into v_rows from atl._gate_rows(v_tenant, v_actor, 202,
        jsonb_build_object('status', 'pending_approval', 'expires_at', v_req.expires_at,
                           'required_approvals', v_req.required_approvals),
        'pending_approval', 'pending_approval',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null);
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
    end if;
  else
    -- Run on an approval. The row lock makes one of two concurrent calls win
    -- and the other see it consumed.
    select * into v_req from atl.approval_requests r
    where r.tenant_id = v_tenant and r.id = p_approval_request_id
    for update;
    if not found then
      raise exception 'approval request not found' using errcode = 'AT404', hint = 'approval_not_found';
    end if;
    if v_req.status <> 'APPROVED' then
      v_refusal := 'approval_not_approved';
      v_message := format('approval request is %s', v_req.status);
    elsif v_req.consumed_at is not null then
      v_refusal := 'approval_consumed';
      v_message := 'this approval has already been used; an approval runs once';
    elsif v_req.expires_at <= clock_timestamp() then
      v_refusal := 'approval_expired';
      v_message := format('this approval expired at %s', v_req.expires_at);
    elsif v_req.agent_id <> p_agent_id then
      v_refusal := 'approval_agent_mismatch';
      v_message := 'the approval was given to another agent';
    -- The same text, not just equal jsonb (100 and 100.0 are equal but forward differently).
    elsif v_req.action_payload::text <> jsonb_build_object('tool', p_tool, 'args', v_args)::text then
      v_refusal := 'approval_payload_mismatch';
      v_message := 'the approval was given for a different tool or args';
    elsif v_req.domain <> v_domain or v_req.mode <> v_mode then
      v_refusal := 'approval_payload_mismatch';
      v_message := format('the approval was given for domain %s in mode %s', v_req.domain, v_req.mode);
    elsif v_req.mode = 'live' and v_req.endpoint_url is distinct from v_policy.endpoint_url then
      v_refusal := 'approval_stale';
      v_message := 'the tool''s endpoint changed since the approval; ask again';
    elsif v_level > v_req.trust_level or v_required > v_req.approvals then
      v_refusal := 'approval_stale';
      v_message := format('the policy now asks for %s with %s approvals; this approval gave %s with %s; ask again',
                          v_level, v_required, v_req.trust_level, v_req.approvals);
    end if;
    if v_refusal is not null then
      select * into v_rows from atl._gate_rows(v_tenant, v_actor, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
    else
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id
      returning * into v_req;
      perform atl._change_append('approval', v_req.id::text, 'consumed', atl._approval_state(v_req), v_actor.id, v_actor.subject);
      select * into v_rows from atl._gate_rows(v_tenant, v_actor, 200, jsonb_build_object('status', v_ok), 'ok', v_ok,
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    v_result := v_rows.answer; ev := v_rows.ev; au := v_rows.au;
    end if;
  end if;

  if v_mode = 'live' and (v_result ->> 'http_status')::int = 200 then
    v_result := v_result || jsonb_build_object('live', jsonb_build_object('endpoint_url', v_policy.endpoint_url,
                                                 'event_id', v_result -> 'body' ->> 'event_id', 'args', v_args));
  end if;
  if p_idempotency_key is not null then
    if (v_result ->> 'http_status')::int < 300 then
      update atl.idempotency_keys i set http_status = (v_result ->> 'http_status')::int, response = v_result -> 'body'
      where i.tenant_id = v_tenant and i.key = p_idempotency_key;
    else
      -- A refusal is not remembered: the same key may succeed once the approval arrives.
      delete from atl.idempotency_keys i where i.tenant_id = v_tenant and i.key = p_idempotency_key;
    end if;
  end if;
  answer := v_result;
end $$;
comment on function atl._gate_decide(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) is
  'Private: decides one gate call as the acting agent key, as atl.gate_execute documents, writing what the decision itself changes (idempotency key, approval request, change log) but returning its event and audit row unwritten.';

drop function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer);
-- The gate for one call: atl._gate_decide, then its rows sealed and written.
create function atl.gate_execute(
  p_agent_id text, p_tool text, p_args jsonb default '{}', p_workflow text default null,
  p_stage text default null, p_trace_id text default null, p_mode text default null,
  p_idempotency_key text default null, p_approval_request_id uuid default null,
  p_trust_level text default null, p_domain text default null, p_user_id text default null,
  p_live_enabled boolean default false, p_route text default 'sql atl.gate_execute', p_latency_ms integer default 0)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  d record;
begin
  select * into d from atl._gate_decide(p_agent_id, p_tool, p_args, p_workflow, p_stage, p_trace_id, p_mode,
    p_idempotency_key, p_approval_request_id, p_trust_level, p_domain, p_user_id, p_live_enabled, p_route, p_latency_ms);
  perform atl._trail_append(case when (d.ev).id is null then '{}' else array[d.ev] end,
                            case when (d.au).id is null then '{}' else array[d.au] end);
  return d.answer;
end $$;
comment on function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) is
  'The gate, as the acting agent key (as itself or one of its agents, else AT403 agent_mismatch): decides one tool call (L0-L2 pass, L3/L4 held, or run once on an approval bound to this agent, tool, args, domain and mode while the policy asks no more: approval_stale), records its event (source gate) and audit row, honours idempotency keys. Returns {"http_status", "body"[, "live"]}; live.args is the canonical text to forward.';

-- Many gate calls of the current tenant in one call: each decided as
-- atl.gate_execute decides it, in a subtransaction of its own, so a call the
-- gate refuses (agent_mismatch, validation, a missing approval) fails alone;
-- then every event and audit row of the batch is sealed and written at once.
-- A row that breaks a table's constraint only then (a trace_id of the wrong
-- form, an over-long workflow: the service checks these before) fails the
-- whole call, as it would fail atl.gate_execute.
create function atl.gate_execute_batch(p_calls jsonb) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key text := current_setting('app.key_hash', true);
  c jsonb;
  d record;
  v_out jsonb[] := '{}';
  v_events atl.agent_action_events[] := '{}';
  v_audits atl.audit_logs[] := '{}';
  v_state text;
  v_message text;
  v_hint text;
  v_detail text;
begin
  perform atl._require_tenant();
  if jsonb_typeof(p_calls) is distinct from 'array' or jsonb_array_length(p_calls) > 1000 then
    raise exception 'p_calls must be a JSON array of at most 1000 calls' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  for c in select x.value from jsonb_array_elements(p_calls) with ordinality as x(value, n) order by x.n loop
    begin
      if jsonb_typeof(c) is distinct from 'object' then
        raise exception 'each call must be a JSON object' using errcode = 'AT400', hint = 'validation_failed';
      end if;
      perform set_config('app.key_hash', coalesce(c ->> 'key_hash', v_key, ''), true);
      select * into d from atl._gate_decide(c ->> 'agent_id', c ->> 'tool', coalesce(c -> 'args', '{}'),
        c ->> 'workflow', c ->> 'stage', c ->> 'trace_id', c ->> 'mode', c ->> 'idempotency_key',
        (c ->> 'approval_request_id')::uuid, c ->> 'trust_level', c ->> 'domain', c ->> 'user_id',
        coalesce((c ->> 'live_enabled')::boolean, false), coalesce(c ->> 'route', 'sql atl.gate_execute_batch'),
        coalesce((c ->> 'latency_ms')::integer, 0));
      if (d.ev).id is not null then
        v_events := v_events || d.ev;
      end if;
      if (d.au).id is not null then
        v_audits := v_audits || d.au;
      end if;
      v_out := v_out || d.answer;
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_hint = pg_exception_hint,
                              v_detail = pg_exception_detail;
      v_out := v_out || jsonb_build_object('error', jsonb_strip_nulls(jsonb_build_object('sqlstate', v_state,
        'message', v_message, 'hint', nullif(v_hint, ''), 'detail', nullif(v_detail, ''))));
    end;
  end loop;
  perform set_config('app.key_hash', coalesce(v_key, ''), true);
  perform atl._trail_append(v_events, v_audits);
  return to_jsonb(v_out);
end $$;
comment on function atl.gate_execute_batch(jsonb) is
  'Many gate calls of the current tenant at once: p_calls is a JSON array (at most 1000) of objects with atl.gate_execute''s parameters without p_ (agent_id, tool, args, workflow, stage, trace_id, mode, idempotency_key, approval_request_id, trust_level, domain, user_id, live_enabled, route, latency_ms) and optionally key_hash (the acting key''s hex SHA-256; default app.key_hash). Each call is decided alone (a refusal fails only that call and is returned as {"error": {"sqlstate", "message", "hint", "detail"}}); all rows are sealed and written together, so a row that breaks a table constraint fails the whole call. Returns the answers in order.';

-- ---------------------------------------------------------------- cheaper CHECKs

-- An event's args and result are SQL NULL, never JSON null (see
-- atl._trail_append): a superuser cannot turn one into the other unseen.
-- NOT VALID: rows written before may hold JSON null and verify as they did.
alter table atl.agent_action_events
  add constraint agent_action_events_json_not_null check (
    (tool_args is null or jsonb_typeof(tool_args) <> 'null') and (tool_result is null or jsonb_typeof(tool_result) <> 'null')) not valid;

alter table atl.audit_logs drop constraint audit_logs_trace_id_format,
  add constraint audit_logs_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]+$' and char_length(trace_id) <= 128) not valid;
alter table atl.audit_logs validate constraint audit_logs_trace_id_format;
alter table atl.agent_action_events drop constraint agent_action_events_trace_id_format,
  add constraint agent_action_events_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]+$' and char_length(trace_id) <= 128) not valid,
  drop constraint agent_action_events_domain_format,
  add constraint agent_action_events_domain_format check (domain ~ '^[a-z0-9][a-z0-9_.-]*$' and char_length(domain) <= 63) not valid,
  drop constraint agent_action_events_status_format,
  add constraint agent_action_events_status_format check (status ~ '^[a-z][a-z_]*$' and char_length(status) <= 32) not valid,
  drop constraint agent_action_events_tool_name_format,
  add constraint agent_action_events_tool_name_format check (tool_name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' and char_length(tool_name) <= 128) not valid;
alter table atl.agent_action_events validate constraint agent_action_events_trace_id_format,
  validate constraint agent_action_events_domain_format, validate constraint agent_action_events_status_format,
  validate constraint agent_action_events_tool_name_format;

-- ---------------------------------------------------------------- foreign keys

-- The trail's rows name their tenant without a foreign key: every row is
-- written by atl_gate's functions for the current tenant and sealed into
-- that tenant's chain, whose head keeps its foreign key to tenants (so no
-- row is written for a tenant that does not exist), and a tenant is never
-- deleted (refused below, even for the owner, as the trail is). The key
-- checked nothing the head's does not, and locked the tenant's row FOR KEY
-- SHARE on every insert, which concurrent writers of one tenant turned into
-- multixacts.
alter table atl.audit_logs drop constraint audit_logs_tenant_fkey;
alter table atl.agent_action_events drop constraint agent_action_events_tenant_fkey;
create trigger _100_no_delete before delete on atl.tenants
  for each row execute function atl._refuse_change();
create trigger _100_no_truncate before truncate on atl.tenants
  for each statement execute function atl._refuse_change();

-- ---------------------------------------------------------------- privileges

revoke all on function atl._chain_leaf(atl.audit_logs), atl._chain_leaf(atl.agent_action_events),
  atl._chain_leaf(atl.change_log), atl._trail_append(atl.agent_action_events[], atl.audit_logs[]),
  atl._audit_row(atl.api_keys, text, text, text, text, text, integer, integer, text, text),
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl._gate_rows(text, atl.api_keys, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean),
  atl._gate_decide(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer),
  atl.gate_execute_batch(jsonb),
  atl._event_rows(atl.api_keys, text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.event_insert_batch(jsonb)
  from public;
grant execute on function atl._chain_leaf(atl.audit_logs), atl._chain_leaf(atl.agent_action_events),
  atl._chain_leaf(atl.change_log)
  to atl_gate, {{ .app_role }};
grant execute on function atl._trail_append(atl.agent_action_events[], atl.audit_logs[]),
  atl._audit_row(atl.api_keys, text, text, text, text, text, integer, integer, text, text),
  atl._gate_rows(text, atl.api_keys, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean),
  atl._gate_decide(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer),
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl._event_rows(atl.api_keys, text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[])
  to atl_gate;
grant execute on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer),
  atl.gate_execute_batch(jsonb), atl.event_insert_batch(jsonb)
  to {{ .app_role }};
grant create on schema atl to atl_gate;
alter function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) owner to atl_gate;
alter function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) owner to atl_gate;
alter function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) owner to atl_gate;
alter function atl.gate_execute_batch(jsonb) owner to atl_gate;
alter function atl.event_insert_batch(jsonb) owner to atl_gate;
revoke create on schema atl from atl_gate;

---- create above / drop below ----

-- Back to 015: the functions come back from the templates of 013 and 010.
-- Rows chained since keep chain_v 2 and would no longer verify; run the down
-- migration only on a database whose trail can be thrown away.

drop function atl.event_insert_batch(jsonb);
drop function atl.gate_execute_batch(jsonb);
drop function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer);
drop function atl._gate_decide(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer);
drop function atl._gate_rows(text, atl.api_keys, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean);
drop function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]);
drop function atl._event_rows(atl.api_keys, text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]);
drop function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text);
drop function atl._audit_row(atl.api_keys, text, text, text, text, text, integer, integer, text, text);
drop function atl._trail_append(atl.agent_action_events[], atl.audit_logs[]);

drop trigger _200_chain on atl.audit_logs;
drop trigger _200_chain on atl.agent_action_events;
drop trigger _200_chain on atl.change_log;
{{ template "func/_chain_append_010.sql" . }}
create trigger _200_chain before insert on atl.audit_logs for each row execute function atl._chain_append();
create trigger _200_chain before insert on atl.agent_action_events for each row execute function atl._chain_append();
create trigger _200_chain before insert on atl.change_log for each row execute function atl._chain_append();

{{ template "func/_chain_row_hash_013.sql" . }}
{{ template "func/_chain_advance_010.sql" . }}
revoke all on function atl._chain_advance() from public;
create trigger _900_chain_head after insert on atl.audit_logs
  referencing new table as new_rows for each statement execute function atl._chain_advance();
create trigger _900_chain_head after insert on atl.agent_action_events
  referencing new table as new_rows for each statement execute function atl._chain_advance();
create trigger _900_chain_head after insert on atl.change_log
  referencing new table as new_rows for each statement execute function atl._chain_advance();
drop function atl._chain_leaf(atl.audit_logs);
drop function atl._chain_leaf(atl.agent_action_events);
drop function atl._chain_leaf(atl.change_log);

{{ template "func/audit_log_insert_013.sql" . }}
{{ template "func/event_insert_013.sql" . }}
{{ template "func/gate_execute_013.sql" . }}

revoke all on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer)
  from public;
grant execute on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) to atl_gate;
grant execute on function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer)
  to {{ .app_role }};
grant create on schema atl to atl_gate;
alter function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) owner to atl_gate;
alter function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) owner to atl_gate;
alter function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) owner to atl_gate;
revoke create on schema atl from atl_gate;

alter table atl.audit_logs drop constraint audit_logs_trace_id_format,
  add constraint audit_logs_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]{1,128}$');
alter table atl.agent_action_events drop constraint agent_action_events_trace_id_format,
  add constraint agent_action_events_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  drop constraint agent_action_events_domain_format,
  add constraint agent_action_events_domain_format check (domain ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
  drop constraint agent_action_events_status_format,
  add constraint agent_action_events_status_format check (status ~ '^[a-z][a-z_]{0,31}$'),
  drop constraint agent_action_events_tool_name_format,
  add constraint agent_action_events_tool_name_format check (tool_name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$');

alter table atl.agent_action_events drop constraint agent_action_events_json_not_null;
drop trigger _100_no_truncate on atl.tenants;
drop trigger _100_no_delete on atl.tenants;
alter table atl.agent_action_events add constraint agent_action_events_tenant_fkey
  foreign key (tenant_id) references atl.tenants (id);
alter table atl.audit_logs add constraint audit_logs_tenant_fkey foreign key (tenant_id) references atl.tenants (id);

alter table atl.change_log drop column chain_v;
alter table atl.agent_action_events drop column chain_v;
alter table atl.audit_logs drop column chain_v;
