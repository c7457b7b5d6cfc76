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
{{ template "func/_policy_json_004.sql" . }}

-- Creates or replaces the policy of one tool.
{{ template "func/policy_put_004.sql" . }}

-- One tool's policy, or NULL.
create function atl.policy_get(p_tool_name text) returns jsonb
language sql stable
as $$
  select atl._policy_json(p) from atl.tool_policies p
  where p.tenant_id = atl.current_tenant() and p.tool_name = p_tool_name
$$;
comment on function atl.policy_get(text) is 'The current tenant''s policy for one tool, or NULL when the tool has none (it then gets the tenant default level).';

-- The tenant's defaults and every tool policy.
{{ template "func/policy_list_004.sql" . }}

-- Removes one tool's policy; the tool falls back to the tenant default.
{{ template "func/policy_delete_004.sql" . }}

-- Sets the tenant's default level and accepted domains (NULL domains: any).
{{ template "func/tenant_settings_put_004.sql" . }}

-- ---------------------------------------------------------------- approvals

-- An approval request with its decisions, as the API shows it.
{{ template "func/_approval_json_004.sql" . }}

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
{{ template "func/approval_decide_004.sql" . }}

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
{{ template "func/expire_stale_approvals_004.sql" . }}
-- A new owner needs CREATE on the schema at the moment of the change; granted
-- for that moment only, so a migrating role that is no superuser (a managed
-- database's owner) can do it too.
grant create on schema atl to atl_sweeper;
alter function atl.expire_stale_approvals() owner to atl_sweeper;
revoke create on schema atl from atl_sweeper;

-- ---------------------------------------------------------------- the gate

-- Writes the event and audit row of a gate call and builds its answer.
{{ template "func/_gate_record_004.sql" . }}

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
{{ template "func/gate_execute_004.sql" . }}

-- Records the outcome of a live call the service made after atl.gate_execute
-- answered "dispatched": an event with the result, the call's audit row, and
-- the final answer under its idempotency key.
{{ template "func/gate_record_outcome_004.sql" . }}

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
