-- The gate: tool policies, tenant defaults, execute, approvals with their
-- decision trigger, and the expiry sweep. Every rule lives here, so a DBA in
-- psql gets exactly what an HTTP caller gets.

-- 'system:' subjects belong to ATL itself; no key may carry one.
alter table atl.api_keys add constraint api_keys_subject_not_system check (subject !~* '^system:');

create table atl.idempotency_keys (
  tenant_id    text        not null,
  key          text        not null,
  request_hash text        not null,
  http_status  integer,
  response     jsonb,
  created_at   timestamptz not null default now(),
  constraint idempotency_keys_pkey primary key (tenant_id, key),
  constraint idempotency_keys_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint idempotency_keys_key_format check (key ~ '^[A-Za-z0-9._:-]{1,200}$')
);
comment on table atl.idempotency_keys is 'First answer of each execute idempotency key; a retry with the same key gets it back and writes nothing.';
comment on column atl.idempotency_keys.request_hash is 'Hash of the call; the same key with a different call is refused (idempotency_key_reused).';
alter table atl.idempotency_keys enable row level security;
alter table atl.idempotency_keys force row level security;
create policy tenant_isolation on atl.idempotency_keys
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
grant select, insert, delete on atl.idempotency_keys to {{ .app_role }};
grant update (http_status, response) on atl.idempotency_keys to {{ .app_role }};

-- ---------------------------------------------------------------- policies

-- A policy as the API shows it.
create function atl._policy_json(p atl.tool_policies) returns jsonb
language sql stable
as $$
  select jsonb_build_object('tool_name', p.tool_name, 'trust_level', p.trust_level,
    'auto_approve_eligible', p.auto_approve_eligible, 'approval_ttl_seconds', p.approval_ttl_seconds,
    'required_approvals', coalesce(p.required_approvals, case p.trust_level when 'L4' then 2 else 1 end),
    'endpoint_url', p.endpoint_url, 'updated_at', p.updated_at)
$$;
comment on function atl._policy_json(atl.tool_policies) is 'Private: a tool policy as JSON, required_approvals resolved to its level default.';

-- Creates or replaces the policy of one tool.
create function atl.policy_put(
  p_tool_name text, p_trust_level text, p_auto_approve_eligible boolean default false,
  p_approval_ttl_seconds integer default 3600, p_required_approvals integer default null,
  p_endpoint_url text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_row atl.tool_policies;
begin
  if p_trust_level = 'L4' and p_auto_approve_eligible then
    raise exception 'an L4 tool can never be auto-approved' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  insert into atl.tool_policies as t (tenant_id, tool_name, trust_level, auto_approve_eligible,
    approval_ttl_seconds, required_approvals, endpoint_url)
  values (v_tenant, p_tool_name, p_trust_level, coalesce(p_auto_approve_eligible, false),
    coalesce(p_approval_ttl_seconds, 3600), p_required_approvals, p_endpoint_url)
  on conflict (tenant_id, tool_name) do update set
    trust_level = excluded.trust_level, auto_approve_eligible = excluded.auto_approve_eligible,
    approval_ttl_seconds = excluded.approval_ttl_seconds, required_approvals = excluded.required_approvals,
    endpoint_url = excluded.endpoint_url, updated_at = now()
  returning * into v_row;
  return atl._policy_json(v_row);
end $$;
comment on function atl.policy_put(text, text, boolean, integer, integer, text) is
  'Creates or replaces a tool''s policy: trust level L0-L4, auto-approval (never for L4), approval TTL, required approvals, live endpoint.';

-- One tool's policy, or NULL.
create function atl.policy_get(p_tool_name text) returns jsonb
language sql stable
as $$
  select atl._policy_json(p) from atl.tool_policies p
  where p.tenant_id = atl.current_tenant() and p.tool_name = p_tool_name
$$;
comment on function atl.policy_get(text) is 'The current tenant''s policy for one tool, or NULL when the tool has none (it then gets the tenant default level).';

-- The tenant's defaults and every tool policy.
create function atl.policy_list() returns jsonb
language sql stable
as $$
  select jsonb_build_object(
    'default_trust_level', (select t.default_trust_level from atl.tenants t where t.id = atl.current_tenant()),
    'allowed_domains', (select to_jsonb(t.allowed_domains) from atl.tenants t where t.id = atl.current_tenant()),
    'items', coalesce((select jsonb_agg(atl._policy_json(p) order by p.tool_name)
                       from atl.tool_policies p where p.tenant_id = atl.current_tenant()), '[]'::jsonb))
$$;
comment on function atl.policy_list() is 'The current tenant''s default trust level, allowed domains and every tool policy.';

-- Removes one tool's policy; the tool falls back to the tenant default.
create function atl.policy_delete(p_tool_name text) returns jsonb
language plpgsql volatile
as $$
declare
  v_row atl.tool_policies;
begin
  delete from atl.tool_policies p where p.tenant_id = atl._require_tenant() and p.tool_name = p_tool_name
  returning * into v_row;
  if not found then
    raise exception 'no policy for this tool' using errcode = 'AT404', hint = 'policy_not_found';
  end if;
  return atl._policy_json(v_row);
end $$;
comment on function atl.policy_delete(text) is 'Deletes a tool''s policy (AT404 policy_not_found when there is none).';

-- Sets the tenant's default level and accepted domains (NULL domains: any).
create function atl.tenant_settings_put(p_default_trust_level text, p_allowed_domains text[] default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant atl.tenants;
begin
  update atl.tenants t set default_trust_level = p_default_trust_level, allowed_domains = p_allowed_domains
  where t.id = atl._require_tenant()
  returning * into v_tenant;
  return jsonb_build_object('default_trust_level', v_tenant.default_trust_level,
                            'allowed_domains', to_jsonb(v_tenant.allowed_domains));
end $$;
comment on function atl.tenant_settings_put(text, text[]) is
  'Sets the current tenant''s default trust level (for tools without a policy) and the domains it accepts (NULL: any valid domain).';

-- ---------------------------------------------------------------- approvals

-- An approval request with its decisions, as the API shows it.
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

-- Checks a decision before it is stored, holding the request's row lock so
-- concurrent decisions and the expiry sweep are serialised.
create function atl._approval_decision_check() returns trigger
language plpgsql
as $$
declare
  v_req atl.approval_requests;
begin
  select * into v_req from atl.approval_requests r
  where r.tenant_id = new.tenant_id and r.id = new.approval_request_id
  for update;
  if not found then
    raise exception 'approval request not found' using errcode = 'AT404', hint = 'approval_not_found';
  end if;
  if v_req.status <> 'PENDING' then
    raise exception 'approval request is % and can no longer be decided', v_req.status
      using errcode = 'AT409', hint = 'approval_not_pending';
  end if;
  if v_req.expires_at <= clock_timestamp() then
    raise exception 'approval request expired at %', v_req.expires_at using errcode = 'AT409', hint = 'approval_expired';
  end if;
  if new.decided_by = 'system:auto-approve' then
    if v_req.trust_level = 'L4' then
      raise exception 'an L4 request can never be auto-approved' using errcode = 'AT403', hint = 'auto_approve_forbidden';
    end if;
    if not v_req.auto_approve_eligible or new.decision <> 'APPROVE' then
      raise exception 'this request is not eligible for auto-approval' using errcode = 'AT403', hint = 'auto_approve_forbidden';
    end if;
  elsif new.decided_by ~* '^system:' then
    raise exception 'only humans and system:auto-approve decide' using errcode = 'AT403', hint = 'forbidden';
  end if;
  if new.decided_by = v_req.requested_by then
    raise exception 'the requester may not decide its own request' using errcode = 'AT403', hint = 'self_approval';
  end if;
  if exists (select 1 from atl.approval_decisions d where d.tenant_id = new.tenant_id
             and d.approval_request_id = new.approval_request_id and d.decided_by = new.decided_by) then
    raise exception '% has already decided this request', new.decided_by using errcode = 'AT409', hint = 'already_decided';
  end if;
  return new;
end $$;
comment on function atl._approval_decision_check() is
  'Private trigger: refuses a decision on a request that is missing, not PENDING or expired, by its requester, twice by one subject, or by system:auto-approve on L4 or ineligible requests.';

-- Moves the request: REJECT at once; APPROVE once distinct approvers reach required_approvals.
create function atl._approval_decision_apply() returns trigger
language plpgsql
as $$
begin
  if new.decision = 'REJECT' then
    update atl.approval_requests r set status = 'REJECTED', decided_at = new.created_at
    where r.tenant_id = new.tenant_id and r.id = new.approval_request_id;
  else
    update atl.approval_requests r
    set approvals = r.approvals + 1,
        status = case when r.approvals + 1 >= r.required_approvals or new.decided_by = 'system:auto-approve'
                      then 'APPROVED' else 'PENDING' end,
        decided_at = case when r.approvals + 1 >= r.required_approvals or new.decided_by = 'system:auto-approve'
                          then new.created_at end
    where r.tenant_id = new.tenant_id and r.id = new.approval_request_id;
  end if;
  return null;
end $$;
comment on function atl._approval_decision_apply() is
  'Private trigger: REJECT rejects at once; APPROVE approves once distinct approvers reach required_approvals (system:auto-approve approves eligible L3 at once).';

create trigger _100_check before insert on atl.approval_decisions
  for each row execute function atl._approval_decision_check();
create trigger _500_apply after insert on atl.approval_decisions
  for each row execute function atl._approval_decision_apply();

-- Records one decision and returns the request as it now stands.
create function atl.approval_decide(p_request_id uuid, p_decision text, p_decided_by text, p_reason text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_req atl.approval_requests;
begin
  if p_decision is null or p_decision not in ('APPROVE', 'REJECT') then
    raise exception 'decision must be APPROVE or REJECT' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason)
  values (v_tenant, p_request_id, p_decision, p_decided_by, p_reason);
  select * into v_req from atl.approval_requests r where r.tenant_id = v_tenant and r.id = p_request_id;
  return atl._approval_json(v_req);
end $$;
comment on function atl.approval_decide(uuid, text, text, text) is
  'Records APPROVE or REJECT by a subject on a request of the current tenant; the decision trigger enforces every rule. Returns the request with its decisions.';

-- One request with its decisions; AT404 when it is not the current tenant's.
create function atl.approval_get(p_request_id uuid) returns jsonb
language plpgsql stable
as $$
declare
  v_req atl.approval_requests;
begin
  select * into v_req from atl.approval_requests r where r.tenant_id = atl.current_tenant() and r.id = p_request_id;
  if not found then
    raise exception 'approval request not found' using errcode = 'AT404', hint = 'approval_not_found';
  end if;
  return atl._approval_json(v_req);
end $$;
comment on function atl.approval_get(uuid) is 'An approval request of the current tenant with its decisions (AT404 approval_not_found otherwise).';

-- The current tenant's requests, newest first, optionally of one status, keyset-paged.
create function atl.approval_list(
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
comment on function atl.approval_list(text, timestamptz, uuid, integer) is
  'The current tenant''s approval requests with decisions, newest first, optionally of one status; keyset cursor (created_at, id).';

-- Expires PENDING requests past expires_at: the current tenant's when one is
-- set, every tenant's when none is (pg_cron, a DBA). Owned by atl_sweeper,
-- whose policies allow exactly PENDING -> EXPIRED.
create function atl.expire_stale_approvals() returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl.current_tenant();
  v_count integer;
begin
  update atl.approval_requests r set status = 'EXPIRED', decided_at = clock_timestamp()
  where r.status = 'PENDING' and r.expires_at <= clock_timestamp()
    and (v_tenant is null or r.tenant_id = v_tenant);
  get diagnostics v_count = row_count;
  return v_count;
end $$;
-- A new owner needs CREATE on the schema at the moment of the change; granted
-- for that moment only, so a migrating role that is no superuser (a managed
-- database's owner) can do it too.
grant create on schema atl to atl_sweeper;
alter function atl.expire_stale_approvals() owner to atl_sweeper;
revoke create on schema atl from atl_sweeper;
comment on function atl.expire_stale_approvals() is
  'SECURITY DEFINER (atl_sweeper): expires PENDING approval requests past expires_at, for the current tenant or, with no tenant set, for all; returns how many.';

-- ---------------------------------------------------------------- the gate

-- Writes the event and audit row of a gate call and builds its answer.
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

-- The refusal answer of a gate call: recorded like any call, then returned.
create function atl._gate_refusal(p_code text, p_message text) returns jsonb
language sql immutable
as $$ select jsonb_build_object('status', 'refused', 'error', jsonb_build_object('code', p_code, 'message', p_message)) $$;
comment on function atl._gate_refusal(text, text) is 'Private: the body of a refused gate call, in the API''s error shape.';

-- Decides one tool call in one transaction: the effective level is the higher
-- of the policy's (else the tenant default) and the agent's declared floor.
-- L0-L2 pass; L3/L4 are held for approval, or run once on an approved,
-- unexpired, unconsumed request for exactly this tool and args. Every call
-- appends an event and an audit row. Returns {"http_status", "body"} and, for
-- live calls the service must make, "live": {"endpoint_url", "event_id"}.
create function atl.gate_execute(
  p_agent_id text, p_tool text, p_args jsonb default '{}', p_workflow text default null,
  p_stage text default null, p_trace_id text default null, p_mode text default null,
  p_idempotency_key text default null, p_approval_request_id uuid default null,
  p_trust_level text default null, p_domain text default null, p_requested_by text default null,
  p_user_id text default null, p_live_enabled boolean default false,
  p_route text default 'sql atl.gate_execute', p_latency_ms integer default 0)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_args jsonb := coalesce(p_args, '{}'::jsonb);
  v_mode text := coalesce(p_mode, 'dry_run');
  v_stage text := coalesce(p_stage, 'execute');
  v_domain text := coalesce(p_domain, 'default');
  v_trace text := coalesce(p_trace_id, replace(gen_random_uuid()::text, '-', ''));
  v_requested_by text := coalesce(p_requested_by, p_agent_id);
  v_tenant_row atl.tenants;
  v_policy atl.tool_policies;
  v_level text;
  v_hash text;
  v_idem atl.idempotency_keys;
  v_req atl.approval_requests;
  v_sandbox text;
  v_result jsonb;
  v_refusal text;
  v_message text;
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
  if p_tool is null or p_tool !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' then
    raise exception 'tool must be 1 to 128 characters of letters, digits and _.:-' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_agent_id is null or p_agent_id !~ '^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,199}$' then
    raise exception 'agent_id must be 1 to 200 characters of letters, digits and @._:+-' using errcode = 'AT400', hint = 'validation_failed';
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
      return jsonb_build_object('http_status', v_idem.http_status, 'body', v_idem.response, 'replayed', true);
    end if;
  end if;

  select * into v_tenant_row from atl.tenants t where t.id = v_tenant;
  if v_domain !~ '^[a-z0-9][a-z0-9_.-]{0,62}$'
     or (v_tenant_row.allowed_domains is not null and v_domain <> all (v_tenant_row.allowed_domains)) then
    raise exception 'domain % is not accepted by this tenant', v_domain using errcode = 'AT400', hint = 'domain_not_allowed';
  end if;
  select * into v_policy from atl.tool_policies p where p.tenant_id = v_tenant and p.tool_name = p_tool;
  -- 'L0' < 'L1' < ... < 'L4' as text.
  v_level := greatest(coalesce(v_policy.trust_level, v_tenant_row.default_trust_level, 'L3'), coalesce(p_trust_level, 'L0'));

  if v_mode = 'live' and not coalesce(p_live_enabled, false) then
    v_refusal := 'live_disabled';
    v_message := 'live mode is switched off (LIVE_ENABLED=false); use dry_run';
    v_result := atl._gate_record(v_tenant, 403, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
  elsif v_mode = 'live' and v_policy.endpoint_url is null then
    v_refusal := 'no_endpoint';
    v_message := 'live mode needs an endpoint_url in this tool''s policy';
    v_result := atl._gate_record(v_tenant, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
  elsif v_level in ('L0', 'L1', 'L2') then
    if v_level = 'L2' then
      v_sandbox := 'sbx_' || replace(gen_random_uuid()::text, '-', '');
    end if;
    v_result := atl._gate_record(v_tenant, 200,
      jsonb_build_object('status', case v_mode when 'live' then 'dispatched' else 'allowed' end),
      'ok', case v_mode when 'live' then 'dispatched' else 'allowed' end,
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, null, v_sandbox, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
  elsif p_approval_request_id is null then
    -- Hold the exact call for humans.
    insert into atl.approval_requests (tenant_id, domain, agent_id, tool_name, action_type, action_payload,
      trust_level, requested_by, trace_id, expires_at, auto_approve_eligible, required_approvals)
    values (v_tenant, v_domain, p_agent_id, p_tool,
      'COMMIT_' || upper(regexp_replace(p_tool, '[^A-Za-z0-9]+', '_', 'g')),
      jsonb_build_object('tool', p_tool, 'args', v_args), v_level, v_requested_by, v_trace,
      now() + make_interval(secs => coalesce(v_policy.approval_ttl_seconds, 3600)),
      v_level = 'L3' and coalesce(v_policy.auto_approve_eligible, false),
      coalesce(v_policy.required_approvals, case v_level when 'L4' then 2 else 1 end))
    returning * into v_req;
    if v_req.auto_approve_eligible then
      insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason)
      values (v_tenant, v_req.id, 'APPROVE', 'system:auto-approve', 'policy marks this L3 tool auto-approve eligible');
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id;
      v_result := atl._gate_record(v_tenant, 200,
        jsonb_build_object('status', case v_mode when 'live' then 'dispatched' else 'allowed' end, 'auto_approved', true),
        'ok', case v_mode when 'live' then 'dispatched' else 'allowed' end,
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    else
      v_result := atl._gate_record(v_tenant, 202,
        jsonb_build_object('status', 'pending_approval', 'expires_at', v_req.expires_at,
                           'required_approvals', v_req.required_approvals),
        'pending_approval', 'pending_approval',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null);
    end if;
  else
    -- Run on an approval: it must be this tenant's, APPROVED, unexpired,
    -- unconsumed and for exactly this call. The row lock makes one of two
    -- concurrent calls win and the other see it consumed.
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
    elsif v_req.action_payload <> jsonb_build_object('tool', p_tool, 'args', v_args) then
      v_refusal := 'approval_payload_mismatch';
      v_message := 'the approval was given for a different tool or args';
    end if;
    if v_refusal is not null then
      v_result := atl._gate_record(v_tenant, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
    else
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id;
      v_result := atl._gate_record(v_tenant, 200,
        jsonb_build_object('status', case v_mode when 'live' then 'dispatched' else 'allowed' end),
        'ok', case v_mode when 'live' then 'dispatched' else 'allowed' end,
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    end if;
  end if;

  if v_mode = 'live' and (v_result ->> 'http_status')::int = 200 then
    v_result := v_result || jsonb_build_object('live', jsonb_build_object('endpoint_url', v_policy.endpoint_url,
                                                 'event_id', v_result -> 'body' ->> 'event_id'));
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
  return v_result;
end $$;
comment on function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, text, boolean, text, integer) is
  'The gate: decides one tool call (L0-L2 pass, L3/L4 held or run once on a matching approval), records its event and audit row, honours idempotency keys. Returns {"http_status", "body"[, "live"]}.';

-- Records the outcome of a live call the service made after atl.gate_execute
-- answered "dispatched": an event with the result, the call's audit row, and
-- the final answer under its idempotency key.
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

revoke all on all functions in schema atl from public;
grant execute on function
  atl._policy_json(atl.tool_policies), atl.policy_put(text, text, boolean, integer, integer, text),
  atl.policy_get(text), atl.policy_list(), atl.policy_delete(text), atl.tenant_settings_put(text, text[]),
  atl._approval_json(atl.approval_requests), atl.approval_decide(uuid, text, text, text),
  atl.approval_get(uuid), atl.approval_list(text, timestamptz, uuid, integer),
  atl.expire_stale_approvals(),
  atl._gate_record(text, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean),
  atl._gate_refusal(text, text),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, text, boolean, text, integer),
  atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text)
  to {{ .app_role }};
grant execute on function atl._approval_decision_check(), atl._approval_decision_apply() to {{ .app_role }};

---- create above / drop below ----

drop function atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text);
drop function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, text, boolean, text, integer);
drop function atl._gate_refusal(text, text);
drop function atl._gate_record(text, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean);
drop function atl.expire_stale_approvals();
drop function atl.approval_list(text, timestamptz, uuid, integer);
drop function atl.approval_get(uuid);
drop function atl.approval_decide(uuid, text, text, text);
drop trigger _500_apply on atl.approval_decisions;
drop trigger _100_check on atl.approval_decisions;
drop function atl._approval_decision_apply();
drop function atl._approval_decision_check();
drop function atl._approval_json(atl.approval_requests);
drop function atl.tenant_settings_put(text, text[]);
drop function atl.policy_delete(text);
drop function atl.policy_list();
drop function atl.policy_get(text);
drop function atl.policy_put(text, text, boolean, integer, integer, text);
drop function atl._policy_json(atl.tool_policies);
drop table atl.idempotency_keys;
alter table atl.api_keys drop constraint api_keys_subject_not_system;
