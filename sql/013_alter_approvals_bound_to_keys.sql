-- Approvals that cannot be forged.
--
-- * Identity comes from the key. The service puts the SHA-256 of the caller's
--   API key in the transaction-local setting app.key_hash; atl._actor() turns
--   it into the key (of the current tenant, active). Every row written from
--   here on records that key's id and subject. The runtime role cannot read
--   key hashes, so it cannot act as a key whose secret it does not hold.
-- * One active key per subject; rotation is its own call; key issues and
--   revocations go to the chain and to the tenant's webhooks.
-- * Dual control one person cannot fake: a decision counts only from a key
--   older than the request; the requester never decides; admin keys decide
--   L4 requests only where the tenant allows it (off by default).
-- * Bound approvals: an approval runs only for its agent, tool, args, domain
--   and mode, and only while the tool's policy asks for no more than was
--   approved (approval_stale).
-- * State changes only through functions: the runtime role (atl_app) may read
--   the approval, key, policy and trail tables but write none of them; the
--   functions that write are SECURITY DEFINER, owned by the NOLOGIN role
--   atl_gate, with a pinned search_path. The runtime role has no TEMPORARY
--   privilege. Worker-only functions run only for atl_worker, which the
--   runtime role cannot become.
-- * The chain covers approvals, keys and policies: atl.change_log is chained
--   like audit_logs and agent_action_events, and atl.audit_verify compares the
--   live approval, decision and key rows with what the chain recorded.

-- ---------------------------------------------------------------- roles

do $$
begin
  create role atl_gate nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;
do $$
begin
  create role atl_worker nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;
grant atl_gate, atl_worker to current_user;
grant usage on schema atl to atl_gate, atl_worker;
grant execute on function atl.current_tenant(), atl._require_tenant() to atl_gate, atl_worker;

-- Temporary tables, functions and triggers in pg_temp are an attacker's
-- tools; nobody but the owner needs them in this database.
do $$
begin
  execute format('revoke temporary on database %I from public', current_database());
end $$;

-- The backfills below must see every tenant's rows; FORCE is restored at the end.
alter table atl.tenants no force row level security;
alter table atl.api_keys no force row level security;
alter table atl.approval_requests no force row level security;
alter table atl.approval_decisions no force row level security;
alter table atl.audit_chain_heads no force row level security;
alter table atl.tool_policies no force row level security;
alter table atl.webhooks no force row level security;

-- ---------------------------------------------------------------- columns

alter table atl.tenants add column admins_decide_l4 boolean not null default false;
comment on column atl.tenants.admins_decide_l4 is
  'Whether admin keys may decide L4 requests; off by default, so dual control needs two approvers.';

alter table atl.api_keys
  add column agents             text[],
  add column issued_by_key_id   uuid,
  add column issued_by          text,
  add column revoked_by_key_id  uuid,
  add column revoked_by         text,
  add column replaced_by_key_id uuid,
  add constraint api_keys_agents_format check (
    agents is null or (role = 'agent' and cardinality(agents) between 1 and 20
      and array_position(agents, null) is null
      and array_to_string(agents, ',') ~ '^[A-Za-z0-9][A-Za-z0-9@._:+-]*(,[A-Za-z0-9][A-Za-z0-9@._:+-]*)*$'
      and char_length(array_to_string(agents, ',')) <= 4020));
comment on column atl.api_keys.agents is 'Agent keys only: the agent names besides the subject that the key may act as.';
comment on column atl.api_keys.revoked_at is
  'When the key stops working; in the future while a rotation''s overlap lasts.';
comment on column atl.api_keys.issued_by is 'Subject of the admin key that issued this key (system:operator for a tenant''s first key).';

-- A subject had any number of active keys before; keep the newest.
update atl.api_keys k set revoked_at = now(), revoked_by = 'system:migration-013'
where k.revoked_at is null and exists (
  select 1 from atl.api_keys n
  where n.tenant_id = k.tenant_id and n.subject = k.subject and n.revoked_at is null
    and (n.created_at, n.id) > (k.created_at, k.id));
create unique index api_keys_active_subject_idx on atl.api_keys (tenant_id, subject) where revoked_at is null;

alter table atl.tool_policies add column updated_by_key_id uuid, add column updated_by text;

alter table atl.approval_requests
  add column mode text not null default 'dry_run',
  add column requested_by_key_id uuid,
  add column endpoint_url text,
  add constraint approval_requests_mode check (mode in ('dry_run', 'live'));
comment on column atl.approval_requests.mode is 'The mode the call was requested in; the approval runs only in it.';
comment on column atl.approval_requests.endpoint_url is 'For a live call: the endpoint the approvers saw; the approval runs only while the policy still names it.';

alter table atl.approval_decisions add column decided_by_key_id uuid, add column decided_by_role text;

-- Chained tables get nullable columns without defaults, so rows written
-- before them keep their hash (atl._chain_row_hash leaves them out when NULL).
alter table atl.audit_logs
  add column actor_key_id uuid, add column actor_subject text, add column claimed_user_id text,
  add constraint audit_logs_actor_lengths check (
    coalesce(char_length(actor_subject), 0) <= 200 and coalesce(char_length(claimed_user_id), 0) <= 200);
comment on column atl.audit_logs.actor_key_id is 'The authenticated key that made the request.';
comment on column atl.audit_logs.user_id is 'Subject of the acting human key (from the key, never from a header).';
comment on column atl.audit_logs.claimed_user_id is 'What the caller claimed in X-User-ID: untrusted, attributes nothing.';
alter table atl.agent_action_events
  add column source text, add column actor_key_id uuid,
  add constraint agent_action_events_source check (source in ('gate', 'agent', 'mcp'));
comment on column atl.agent_action_events.source is
  'gate: written by the gate; agent: reported by an agent (POST /api/v1/events); NULL for rows older than sources.';

-- ---------------------------------------------------------------- the change log

create table atl.change_log (
  tenant_id     text        not null,
  id            uuid        not null default gen_random_uuid(),
  entity        text        not null,
  entity_id     text        not null,
  action        text        not null,
  actor_key_id  uuid,
  actor_subject text,
  detail        jsonb       not null,
  created_at    timestamptz not null default now(),
  seq           bigint,
  prev_hash     bytea,
  row_hash      bytea,
  constraint change_log_pkey primary key (tenant_id, id),
  constraint change_log_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint change_log_entity check (entity in ('approval', 'key', 'policy', 'settings', 'webhook')),
  constraint change_log_action_format check (action ~ '^[a-z_]+$' and char_length(action) <= 32),
  constraint change_log_detail_object check (jsonb_typeof(detail) = 'object')
);
comment on table atl.change_log is
  'Append-only and chained with the audit trail: every change of an approval request, decision, key, policy or tenant setting, with the acting key and the state after it.';
comment on column atl.change_log.detail is 'The state after the change; atl.audit_verify compares it with the live rows.';
create unique index change_log_tenant_seq_idx on atl.change_log (tenant_id, seq);
create index change_log_tenant_entity_idx on atl.change_log (tenant_id, entity, entity_id, seq);
alter table atl.change_log enable row level security;
alter table atl.change_log no force row level security;
create policy tenant_isolation on atl.change_log
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
create trigger _100_append_only before update or delete on atl.change_log
  for each row execute function atl._refuse_change();
create trigger _100_append_only_truncate before truncate on atl.change_log
  for each statement execute function atl._refuse_change();
create trigger _200_chain before insert on atl.change_log
  for each row execute function atl._chain_append();
create trigger _900_chain_head after insert on atl.change_log
  referencing new table as new_rows for each statement execute function atl._chain_advance();

-- Columns added to chained tables after their first rows: left out of a
-- row's encoding while NULL, so older rows verify as they did.
{{ template "func/_chain_row_hash_013.sql" . }}

-- ---------------------------------------------------------------- identity

-- The key acting in this transaction: app.key_hash (hex SHA-256 of the API
-- key) names it; only an active key of the current tenant counts.
create function atl._actor() returns atl.api_keys
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hash text := nullif(current_setting('app.key_hash', true), '');
  v_key atl.api_keys;
begin
  if v_hash is null or v_hash !~ '^[0-9a-f]{64}$' then
    return v_key;
  end if;
  select * into v_key from atl.api_keys k
  where k.tenant_id = atl.current_tenant() and k.key_hash = decode(v_hash, 'hex')
    and (k.revoked_at is null or k.revoked_at > clock_timestamp());
  return v_key;
end $$;
comment on function atl._actor() is
  'Private: the active key of the current tenant whose SHA-256 (hex) is in app.key_hash, or a row of NULLs.';

-- The acting key, which must have one of the roles.
create function atl._require_actor(p_roles text[]) returns atl.api_keys
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key atl.api_keys := atl._actor();
begin
  if v_key.id is null then
    raise exception 'no active API key of this tenant acts in this transaction'
      using errcode = 'AT401', hint = 'unauthorized',
            detail = 'call set_config(''app.key_hash'', encode(sha256(convert_to(<api key>, ''UTF8'')), ''hex''), true) first';
  end if;
  if not (v_key.role = any (p_roles)) then
    raise exception 'a % key may not do this', v_key.role using errcode = 'AT403', hint = 'forbidden';
  end if;
  return v_key;
end $$;
comment on function atl._require_actor(text[]) is
  'Private: atl._actor(), or AT401 unauthorized when no active key acts, or AT403 forbidden when its role is not one of p_roles.';

-- Appends one chained change record for the current tenant.
create function atl._change_append(p_entity text, p_entity_id text, p_action text, p_detail jsonb,
                                   p_actor_key_id uuid, p_actor_subject text) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into atl.change_log (tenant_id, entity, entity_id, action, actor_key_id, actor_subject, detail)
  values (atl._require_tenant(), p_entity, p_entity_id, p_action, p_actor_key_id, p_actor_subject, p_detail);
end $$;
comment on function atl._change_append(text, text, text, jsonb, uuid, text) is
  'Private: appends a chained atl.change_log row (entity, id, action, acting key and subject, state after the change).';

-- What the chain keeps of a request's state, and of what was requested.
create function atl._approval_state(r atl.approval_requests) returns jsonb
language sql stable
as $$
  select jsonb_build_object('request_id', r.id, 'status', r.status, 'approvals', r.approvals,
    'decided_at', r.decided_at, 'consumed_at', r.consumed_at)
$$;
comment on function atl._approval_state(atl.approval_requests) is
  'Private: an approval request''s mutable state (status, approvals, decided_at, consumed_at) as the chain records it.';

create function atl._approval_terms(r atl.approval_requests) returns jsonb
language sql stable
as $$
  select jsonb_build_object('agent_id', r.agent_id, 'tool_name', r.tool_name, 'domain', r.domain, 'mode', r.mode,
    'trust_level', r.trust_level, 'required_approvals', r.required_approvals, 'requested_by', r.requested_by,
    'requested_by_key_id', r.requested_by_key_id, 'expires_at', r.expires_at,
    'auto_approve_eligible', r.auto_approve_eligible, 'action_type', r.action_type, 'trace_id', r.trace_id,
    'endpoint_url', r.endpoint_url,
    'payload_sha256', encode(sha256(convert_to(r.action_payload::text, 'UTF8')), 'hex'), 'created_at', r.created_at)
$$;
comment on function atl._approval_terms(atl.approval_requests) is
  'Private: what an approval request asked for (agent, tool, SHA-256 of the canonical payload, domain, mode, level, approvals) as the chain records it.';

create function atl._key_state(k atl.api_keys) returns jsonb
language sql stable
as $$
  select jsonb_build_object('key_id', k.id, 'role', k.role, 'subject', k.subject, 'agents', to_jsonb(k.agents),
    'key_prefix', k.key_prefix, 'created_at', k.created_at, 'revoked_at', k.revoked_at,
    'replaced_by_key_id', k.replaced_by_key_id, 'key_hash_sha256', encode(sha256(k.key_hash), 'hex'))
$$;
comment on function atl._key_state(atl.api_keys) is
  'Private: a key''s role, subject, agents, prefix, creation, revocation and the SHA-256 of its hash as the chain records them (never the hash itself).';

-- What the chain keeps of a policy, the tenant's settings and a webhook:
-- the fields that decide, no timestamps (their text depends on TimeZone).
create function atl._policy_state(p atl.tool_policies) returns jsonb
language sql immutable
as $$
  select jsonb_build_object('tool_name', p.tool_name, 'trust_level', p.trust_level,
    'auto_approve_eligible', p.auto_approve_eligible, 'approval_ttl_seconds', p.approval_ttl_seconds,
    'required_approvals', p.required_approvals, 'endpoint_url', p.endpoint_url)
$$;
comment on function atl._policy_state(atl.tool_policies) is
  'Private: a tool policy''s deciding fields (level, auto-approval, TTL, required approvals, endpoint) as the chain records them.';

create function atl._settings_state(t atl.tenants) returns jsonb
language sql immutable
as $$
  select jsonb_build_object('default_trust_level', t.default_trust_level, 'allowed_domains', to_jsonb(t.allowed_domains),
    'admins_decide_l4', t.admins_decide_l4)
$$;
comment on function atl._settings_state(atl.tenants) is
  'Private: a tenant''s default level, accepted domains and admins_decide_l4 as the chain records them.';

create function atl._webhook_state(w atl.webhooks) returns jsonb
language sql immutable
as $$
  select jsonb_build_object('webhook_id', w.id, 'url', w.url, 'format', w.format, 'deleted', w.deleted_at is not null,
    'secret_sha256', encode(sha256(convert_to(w.secret, 'UTF8')), 'hex'))
$$;
comment on function atl._webhook_state(atl.webhooks) is
  'Private: a webhook''s url, format, whether it is deleted, and the SHA-256 of its secret, as the chain records them.';

-- ---------------------------------------------------------------- backfill

-- Every request, decision and key that exists now is recorded once, so
-- verification covers them from here on.
insert into atl.change_log (tenant_id, entity, entity_id, action, actor_subject, detail, created_at)
select x.tenant_id, x.entity, x.entity_id, x.action, 'system:migration-013', x.detail, now()
from (
  select r.tenant_id, 'approval' as entity, r.id::text as entity_id, 'snapshot' as action,
         atl._approval_state(r) || atl._approval_terms(r) as detail, r.created_at as at, 0 as ord, r.id::text as tie
  from atl.approval_requests r
  union all
  select d.tenant_id, 'approval', d.approval_request_id::text, 'decided',
         jsonb_build_object('request_id', d.approval_request_id, 'decision_id', d.id, 'decision', d.decision,
           'decided_by', d.decided_by, 'decided_by_key_id', d.decided_by_key_id, 'reason', d.reason,
           'decided_by_role', d.decided_by_role, 'created_at', d.created_at),
         d.created_at, 1, d.id::text
  from atl.approval_decisions d
  union all
  select k.tenant_id, 'key', k.id::text, 'snapshot', atl._key_state(k), k.created_at, 0, k.id::text
  from atl.api_keys k
  union all
  select p.tenant_id, 'policy', p.tool_name, 'snapshot', atl._policy_state(p), p.updated_at, 2, p.tool_name
  from atl.tool_policies p
  union all
  select t.id, 'settings', t.id, 'snapshot', atl._settings_state(t), t.created_at, 2, t.id
  from atl.tenants t
  union all
  select w.tenant_id, 'webhook', w.id::text, 'snapshot', atl._webhook_state(w), w.created_at, 2, w.id::text
  from atl.webhooks w
) x
order by x.tenant_id, x.at, x.ord, x.tie;

-- ---------------------------------------------------------------- privileges

-- The runtime role reads; only the functions below write.
revoke insert, update, delete on atl.tenants, atl.api_keys, atl.tool_policies, atl.audit_logs,
  atl.agent_action_events, atl.approval_requests, atl.approval_decisions, atl.audit_chain_heads,
  atl.idempotency_keys from {{ .app_role }};
revoke select on atl.api_keys, atl.idempotency_keys from {{ .app_role }};
grant select (tenant_id, id, role, subject, key_prefix, created_at, revoked_at, agents, issued_by_key_id, issued_by,
  revoked_by_key_id, revoked_by, replaced_by_key_id) on atl.api_keys to {{ .app_role }};
grant select on atl.change_log to {{ .app_role }};
revoke update on atl.approval_requests from atl_sweeper;

grant select, insert on atl.tenants, atl.tool_policies, atl.audit_logs, atl.agent_action_events,
  atl.approval_requests, atl.approval_decisions, atl.change_log, atl.audit_chain_heads to atl_gate;
grant update (name, default_trust_level, allowed_domains, admins_decide_l4) on atl.tenants to atl_gate;
grant update, delete on atl.tool_policies to atl_gate;
grant update (status, approvals, decided_at, consumed_at) on atl.approval_requests to atl_gate;
grant update (seq, hash, updated_at) on atl.audit_chain_heads to atl_gate;
grant select, insert on atl.api_keys to atl_gate;
grant update (revoked_at, revoked_by_key_id, revoked_by, replaced_by_key_id) on atl.api_keys to atl_gate;
grant select, insert, delete on atl.idempotency_keys to atl_gate;
grant update (http_status, response) on atl.idempotency_keys to atl_gate;
grant select, insert on atl.webhooks to atl_gate;
grant select on atl.webhook_deliveries, atl.eval_runs to atl_gate;
grant update (deleted_at) on atl.webhooks to atl_gate;
-- Webhooks change only through their functions, and the runtime role never reads a secret.
revoke insert, update, select on atl.webhooks from {{ .app_role }};
grant select (tenant_id, id, url, format, created_by, created_at, deleted_at) on atl.webhooks to {{ .app_role }};

-- ---------------------------------------------------------------- guard

-- An approval request changes only inside atl_gate's functions, along the
-- rules; nothing depends on how deep in triggers the change happens.
create or replace function atl._approval_request_guard() returns trigger
language plpgsql
as $$
begin
  if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
    return new;
  end if;
  if current_user <> 'atl_gate' then
    raise exception 'an approval request changes only through the gate''s functions'
      using errcode = 'AT403', hint = 'forbidden';
  end if;
  if new.status is distinct from old.status
     and not (old.status = 'PENDING' and new.status in ('APPROVED', 'REJECTED', 'EXPIRED')) then
    raise exception 'an approval request moves only from PENDING' using errcode = 'AT409', hint = 'approval_not_pending';
  end if;
  if new.approvals < old.approvals then
    raise exception 'approvals never go down' using errcode = 'AT403', hint = 'forbidden';
  end if;
  if new.consumed_at is distinct from old.consumed_at
     and (old.consumed_at is not null or new.status <> 'APPROVED') then
    raise exception 'an approval is consumed once, and only when APPROVED' using errcode = 'AT409', hint = 'approval_consumed';
  end if;
  if (new.tenant_id, new.id, new.domain, new.agent_id, new.tool_name, new.action_type, new.action_payload,
      new.trust_level, new.requested_by, new.trace_id, new.expires_at, new.auto_approve_eligible,
      new.required_approvals, new.created_at, new.mode, new.requested_by_key_id, new.endpoint_url)
     is distinct from
     (old.tenant_id, old.id, old.domain, old.agent_id, old.tool_name, old.action_type, old.action_payload,
      old.trust_level, old.requested_by, old.trace_id, old.expires_at, old.auto_approve_eligible,
      old.required_approvals, old.created_at, old.mode, old.requested_by_key_id, old.endpoint_url) then
    raise exception 'what was requested cannot be changed' using errcode = 'AT403', hint = 'forbidden';
  end if;
  return new;
end $$;
comment on function atl._approval_request_guard() is
  'Private trigger: only atl_gate''s functions change a request (superusers excepted; the chain shows them): status only from PENDING, approvals never down, consumed once when APPROVED, the request itself never.';

create function atl._approval_decision_guard() returns trigger
language plpgsql
as $$
begin
  if not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) and current_user <> 'atl_gate' then
    raise exception 'decisions are recorded only through atl.approval_decide' using errcode = 'AT403', hint = 'forbidden';
  end if;
  return new;
end $$;
comment on function atl._approval_decision_guard() is
  'Private trigger: decisions are inserted only by atl_gate''s functions (superusers excepted; the chain shows them).';
create trigger _050_guard before insert on atl.approval_decisions
  for each row execute function atl._approval_decision_guard();

-- ---------------------------------------------------------------- JSON shapes

create or replace function atl._approval_json(r atl.approval_requests) returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', r.id, 'status', r.status, 'trust_level', r.trust_level,
    'required_approvals', r.required_approvals, 'approvals', r.approvals, 'expires_at', r.expires_at,
    'domain', r.domain, 'mode', r.mode, 'endpoint_url', r.endpoint_url, 'agent_id', r.agent_id, 'tool_name', r.tool_name, 'action_type', r.action_type,
    'action_payload', r.action_payload, 'requested_by', r.requested_by, 'requested_by_key_id', r.requested_by_key_id,
    'trace_id', r.trace_id, 'auto_approve_eligible', r.auto_approve_eligible, 'created_at', r.created_at,
    'decided_at', r.decided_at, 'consumed_at', r.consumed_at,
    'decisions', coalesce((select jsonb_agg(jsonb_build_object('id', d.id, 'decision', d.decision,
                             'decided_by', d.decided_by, 'decided_by_key_id', d.decided_by_key_id,
                             'reason', d.reason, 'created_at', d.created_at)
                           order by d.created_at, d.id)
                           from atl.approval_decisions d
                           where d.tenant_id = r.tenant_id and d.approval_request_id = r.id), '[]'::jsonb))
$$;

create or replace function atl._policy_json(p atl.tool_policies) returns jsonb
language sql stable
as $$
  select jsonb_build_object('tool_name', p.tool_name, 'trust_level', p.trust_level,
    'auto_approve_eligible', p.auto_approve_eligible, 'approval_ttl_seconds', p.approval_ttl_seconds,
    'required_approvals', coalesce(p.required_approvals, case p.trust_level when 'L4' then 2 else 1 end),
    'endpoint_url', p.endpoint_url, 'updated_at', p.updated_at, 'updated_by', p.updated_by)
$$;

-- ---------------------------------------------------------------- trail writes

-- Writes one audit row for the current tenant, attributed to the acting key.
{{ template "func/audit_log_insert_013.sql" . }}

-- Appends a batch of events an agent reports: source agent, attributed to the
-- acting key; an agent key reports only as itself or its listed agents.
{{ template "func/event_insert_013.sql" . }}

-- ---------------------------------------------------------------- keys

-- Webhook outbox rows for an event that is not an approval's (key changes).
create function atl._webhook_enqueue_event(p_tenant text, p_event text, p_body jsonb) returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into atl.webhook_deliveries (tenant_id, id, webhook_id, event, payload)
  select p_tenant, d.id, d.webhook_id, p_event,
         jsonb_build_object('event', p_event, 'occurred_at', clock_timestamp(), 'tenant_id', p_tenant)
           || p_body || jsonb_build_object('delivery_id', d.id, 'webhook_id', d.webhook_id)
  from (select gen_random_uuid() as id, w.id as webhook_id from atl.webhooks w
        where w.tenant_id = p_tenant and w.deleted_at is null) d;
  if found then
    perform pg_notify('atl_webhook', '');
  end if;
end $$;
comment on function atl._webhook_enqueue_event(text, text, jsonb) is
  'Private (SECURITY DEFINER, atl_webhooks): writes outbox rows of a non-approval event (key.issued, key.revoked) for every live webhook of the tenant.';
alter table atl.webhook_deliveries drop constraint webhook_deliveries_event;
alter table atl.webhook_deliveries add constraint webhook_deliveries_event check (
  event in ('approval.created', 'approval.approved', 'approval.rejected', 'approval.expired', 'key.issued', 'key.revoked'));

-- A key as the API shows it (never its hash).
create function atl._key_json(k atl.api_keys) returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', k.id, 'tenant_id', k.tenant_id, 'role', k.role, 'subject', k.subject,
    'agents', to_jsonb(k.agents), 'key_prefix', k.key_prefix, 'created_at', k.created_at, 'revoked_at', k.revoked_at,
    'issued_by', k.issued_by, 'issued_by_key_id', k.issued_by_key_id, 'revoked_by', k.revoked_by,
    'revoked_by_key_id', k.revoked_by_key_id, 'replaced_by_key_id', k.replaced_by_key_id)
$$;
comment on function atl._key_json(atl.api_keys) is 'Private: an API key as JSON, without its hash.';

-- Inserts a key, records it in the chain and tells the webhooks.
create function atl._key_insert(p_tenant text, p_role text, p_subject text, p_agents text[],
                                p_by_key_id uuid, p_by text) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key text := atl._api_key_new();
  v_row atl.api_keys;
begin
  if p_agents is not null and p_role <> 'agent' then
    raise exception 'agents may only be listed on an agent key' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  -- An agent name is never a person's: self-approval is refused by name.
  if exists (select 1 from atl.api_keys k where k.tenant_id = p_tenant and k.role <> 'agent'
             and k.subject = any (coalesce(p_agents, '{}')))
     or (p_role <> 'agent' and exists (select 1 from atl.api_keys k where k.tenant_id = p_tenant
             and k.role = 'agent' and p_subject = any (coalesce(k.agents, '{}')))) then
    raise exception 'an agent name and a person''s subject must differ' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  begin
    insert into atl.api_keys (tenant_id, role, subject, key_hash, key_prefix, agents, issued_by_key_id, issued_by)
    values (p_tenant, p_role, p_subject, atl._api_key_hash(v_key), left(v_key, 12),
            nullif(p_agents, '{}'), p_by_key_id, p_by)
    returning * into v_row;
  exception when unique_violation then
    if exists (select 1 from atl.api_keys k where k.tenant_id = p_tenant and k.subject = p_subject and k.revoked_at is null) then
      raise exception 'subject % already has an active key; rotate or revoke it first', p_subject
        using errcode = 'AT409', hint = 'subject_in_use';
    end if;
    raise;
  end;
  perform atl._change_append('key', v_row.id::text, 'issued', atl._key_state(v_row), p_by_key_id, p_by);
  perform atl._webhook_enqueue_event(p_tenant, 'key.issued',
    jsonb_build_object('key', atl._key_json(v_row), 'actor', jsonb_build_object('key_id', p_by_key_id, 'subject', p_by)));
  return atl._key_json(v_row) || jsonb_build_object('api_key', v_key);
end $$;
comment on function atl._key_insert(text, text, text, text[], uuid, text) is
  'Private: inserts a key (one active key per subject: AT409 subject_in_use), chains it and enqueues key.issued; returns it with the secret, once.';

drop function atl.api_key_issue(text, text);
-- Issues a key for the current tenant; the acting key must be an admin's.
create function atl.api_key_issue(p_role text, p_subject text, p_agents text[] default null) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
begin
  return atl._key_insert(atl._require_tenant(), p_role, p_subject, p_agents, v_actor.id, v_actor.subject);
end $$;
comment on function atl.api_key_issue(text, text, text[]) is
  'Issues an API key (role agent|approver|admin, subject, agents it may also act as) for the current tenant as the acting admin key; one active key per subject (AT409 subject_in_use); returns the key once.';

drop function atl.api_key_list();
-- SECURITY DEFINER because a key's JSON is built from its row, whose hash the
-- runtime role may not read; it still shows the current tenant's keys only.
create function atl.api_key_list() returns setof jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select atl._key_json(k) from atl.api_keys k
  where k.tenant_id = atl.current_tenant()
  order by k.created_at desc, k.id desc
$$;
comment on function atl.api_key_list() is 'Lists the current tenant''s API keys (no secrets, with who issued and revoked them), newest first.';

-- Stops a key at p_at (now, or the end of a rotation's overlap).
create function atl._key_revoke(p_id uuid, p_at timestamptz, p_replaced_by uuid, p_actor atl.api_keys) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_key atl.api_keys;
begin
  select * into v_key from atl.api_keys k where k.tenant_id = v_tenant and k.id = p_id for update;
  if not found then
    raise exception 'api key not found' using errcode = 'AT404', hint = 'key_not_found';
  end if;
  if v_key.revoked_at is not null and v_key.revoked_at <= clock_timestamp() then
    return atl._key_json(v_key);
  end if;
  if v_key.role = 'admin' and p_replaced_by is null and not exists (
    select 1 from atl.api_keys k
    where k.tenant_id = v_tenant and k.role = 'admin' and k.revoked_at is null and k.id <> p_id) then
    raise exception 'the last active admin key cannot be revoked; issue another admin key first'
      using errcode = 'AT409', hint = 'last_admin_key';
  end if;
  update atl.api_keys k set revoked_at = least(coalesce(k.revoked_at, p_at), p_at),
    revoked_by_key_id = p_actor.id, revoked_by = p_actor.subject,
    replaced_by_key_id = coalesce(p_replaced_by, k.replaced_by_key_id)
  where k.tenant_id = v_tenant and k.id = p_id
  returning * into v_key;
  perform atl._change_append('key', v_key.id::text, 'revoked', atl._key_state(v_key), p_actor.id, p_actor.subject);
  perform atl._webhook_enqueue_event(v_tenant, 'key.revoked',
    jsonb_build_object('key', atl._key_json(v_key), 'actor', jsonb_build_object('key_id', p_actor.id, 'subject', p_actor.subject)));
  return atl._key_json(v_key);
end $$;
comment on function atl._key_revoke(uuid, timestamptz, uuid, atl.api_keys) is
  'Private: sets a key''s revoked_at (now or later), chains it and enqueues key.revoked; refuses the last active admin key.';

drop function atl.api_key_revoke(uuid);
create function atl.api_key_revoke(p_id uuid) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
begin
  return atl._key_revoke(p_id, clock_timestamp(), null, v_actor);
end $$;
comment on function atl.api_key_revoke(uuid) is
  'Revokes an API key of the current tenant at once, as the acting admin key (idempotent); refuses the last active admin key (AT409 last_admin_key).';

-- Replaces a key: a new key with the same role, subject and agents, and the
-- old one revoked now or after an overlap of at most 24 hours.
create function atl.api_key_rotate(p_id uuid, p_overlap_seconds integer default 0) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_tenant text := atl._require_tenant();
  v_old atl.api_keys;
  v_new jsonb;
begin
  if p_overlap_seconds is null or p_overlap_seconds < 0 or p_overlap_seconds > 86400 then
    raise exception 'overlap_seconds must be between 0 and 86400' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  select * into v_old from atl.api_keys k where k.tenant_id = v_tenant and k.id = p_id for update;
  if not found then
    raise exception 'api key not found' using errcode = 'AT404', hint = 'key_not_found';
  end if;
  if v_old.revoked_at is not null then
    raise exception 'this key is revoked or already rotated' using errcode = 'AT409', hint = 'key_revoked';
  end if;
  -- The old key leaves the one-active-key-per-subject slot before the new one takes it.
  update atl.api_keys k set revoked_at = clock_timestamp() + make_interval(secs => p_overlap_seconds)
  where k.tenant_id = v_tenant and k.id = p_id;
  v_new := atl._key_insert(v_tenant, v_old.role, v_old.subject, v_old.agents, v_actor.id, v_actor.subject);
  return jsonb_build_object('key', v_new, 'replaced',
    atl._key_revoke(p_id, clock_timestamp() + make_interval(secs => p_overlap_seconds), (v_new ->> 'id')::uuid, v_actor));
end $$;
comment on function atl.api_key_rotate(uuid, integer) is
  'Rotates a key of the current tenant as the acting admin key: issues its replacement (returned once, as key) and revokes the old one after p_overlap_seconds (0..86400; returned as replaced).';

drop function atl.api_key_authenticate(text);
create function atl.api_key_authenticate(p_api_key text)
returns table (tenant_id text, key_id uuid, role text, subject text, agents text[])
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select k.tenant_id, k.id, k.role, k.subject, k.agents
  from atl.api_keys k
  where k.key_hash = atl._api_key_hash(p_api_key) and (k.revoked_at is null or k.revoked_at > clock_timestamp())
$$;
grant create on schema atl to atl_keyauth;
alter function atl.api_key_authenticate(text) owner to atl_keyauth;
revoke create on schema atl from atl_keyauth;
comment on function atl.api_key_authenticate(text) is
  'SECURITY DEFINER (atl_keyauth): the tenant, key id, role, subject and agents of an active API key (revoked_at unset or still ahead); no row otherwise.';

-- Creates a tenant and its first admin key (issued by system:operator).
create or replace function atl.tenant_create(p_id text, p_name text, p_admin_subject text default 'admin')
returns table (id text, name text, default_trust_level text, created_at timestamptz,
               api_key_id uuid, api_key text)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant atl.tenants;
  v_key jsonb;
begin
  if atl.current_tenant() is not null and atl.current_tenant() is distinct from p_id then
    raise exception 'this transaction belongs to another tenant' using errcode = 'AT403', hint = 'tenant_mismatch';
  end if;
  perform set_config('app.tenant_id', p_id, true);
  insert into atl.tenants as t (id, name) values (p_id, p_name) returning * into v_tenant;
  perform atl._change_append('settings', p_id, 'created', atl._settings_state(v_tenant), null, 'system:operator');
  v_key := atl._key_insert(p_id, 'admin', p_admin_subject, null, null, 'system:operator');
  return query select v_tenant.id, v_tenant.name, v_tenant.default_trust_level, v_tenant.created_at,
                      (v_key ->> 'id')::uuid, v_key ->> 'api_key';
end $$;

-- ---------------------------------------------------------------- policies

create or replace function atl.policy_put(
  p_tool_name text, p_trust_level text, p_auto_approve_eligible boolean default false,
  p_approval_ttl_seconds integer default 3600, p_required_approvals integer default null,
  p_endpoint_url text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_row atl.tool_policies;
begin
  if p_trust_level = 'L4' and p_auto_approve_eligible then
    raise exception 'an L4 tool can never be auto-approved' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  -- Dual control: an L4 call always needs two distinct people.
  if p_trust_level = 'L4' and p_required_approvals < 2 then
    raise exception 'an L4 tool needs at least two approvals' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  insert into atl.tool_policies as t (tenant_id, tool_name, trust_level, auto_approve_eligible,
    approval_ttl_seconds, required_approvals, endpoint_url, updated_by_key_id, updated_by)
  values (v_tenant, p_tool_name, p_trust_level, coalesce(p_auto_approve_eligible, false),
    coalesce(p_approval_ttl_seconds, 3600), p_required_approvals, p_endpoint_url, v_actor.id, v_actor.subject)
  on conflict (tenant_id, tool_name) do update set
    trust_level = excluded.trust_level, auto_approve_eligible = excluded.auto_approve_eligible,
    approval_ttl_seconds = excluded.approval_ttl_seconds, required_approvals = excluded.required_approvals,
    endpoint_url = excluded.endpoint_url, updated_at = now(),
    updated_by_key_id = excluded.updated_by_key_id, updated_by = excluded.updated_by
  returning * into v_row;
  perform atl._change_append('policy', p_tool_name, 'put', atl._policy_state(v_row), v_actor.id, v_actor.subject);
  return atl._policy_json(v_row);
end $$;

create or replace function atl.policy_delete(p_tool_name text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_row atl.tool_policies;
begin
  delete from atl.tool_policies p where p.tenant_id = atl._require_tenant() and p.tool_name = p_tool_name
  returning * into v_row;
  if not found then
    raise exception 'no policy for this tool' using errcode = 'AT404', hint = 'policy_not_found';
  end if;
  perform atl._change_append('policy', p_tool_name, 'deleted', atl._policy_state(v_row), v_actor.id, v_actor.subject);
  return atl._policy_json(v_row);
end $$;

drop function atl.tenant_settings_put(text, text[]);
create function atl.tenant_settings_put(p_default_trust_level text, p_allowed_domains text[] default null,
                                        p_admins_decide_l4 boolean default false)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_tenant atl.tenants;
  v_out jsonb;
begin
  update atl.tenants t set default_trust_level = p_default_trust_level, allowed_domains = p_allowed_domains,
    admins_decide_l4 = coalesce(p_admins_decide_l4, false)
  where t.id = atl._require_tenant()
  returning * into v_tenant;
  v_out := atl._settings_state(v_tenant);
  perform atl._change_append('settings', v_tenant.id, 'put', v_out, v_actor.id, v_actor.subject);
  return v_out;
end $$;
comment on function atl.tenant_settings_put(text, text[], boolean) is
  'Sets the current tenant''s default trust level, accepted domains (NULL: any) and whether admin keys may decide L4 requests (default false), as the acting admin key.';

create or replace function atl.policy_list() returns jsonb
language sql stable
as $$
  select jsonb_build_object(
    'default_trust_level', (select t.default_trust_level from atl.tenants t where t.id = atl.current_tenant()),
    'allowed_domains', (select to_jsonb(t.allowed_domains) from atl.tenants t where t.id = atl.current_tenant()),
    'admins_decide_l4', (select t.admins_decide_l4 from atl.tenants t where t.id = atl.current_tenant()),
    'items', coalesce((select jsonb_agg(atl._policy_json(p) order by p.tool_name)
                       from atl.tool_policies p where p.tenant_id = atl.current_tenant()), '[]'::jsonb))
$$;

-- ---------------------------------------------------------------- webhooks

-- Webhooks change only as the acting admin key, in the chain: a webhook is
-- how a second person hears of key changes, so removing one must show too.
create or replace function atl.webhook_create(p_url text, p_format text, p_created_by text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_tenant text := atl._require_tenant();
  v_row atl.webhooks;
begin
  if p_format is null or p_format not in ('json', 'slack') then
    raise exception 'format must be json or slack' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_url is null or p_url !~ '^https?://[^\s]+$' or char_length(p_url) > 2048 then
    raise exception 'url must be an http or https URL of at most 2048 characters'
      using errcode = 'AT400', hint = 'validation_failed';
  end if;
  -- A bound per tenant, so one tenant's fan-out cannot crowd the shared delivery worker.
  perform pg_advisory_xact_lock(hashtextextended('atl.webhooks:' || v_tenant, 0));
  if (select count(*) from atl.webhooks w where w.tenant_id = v_tenant and w.deleted_at is null) >= 10 then
    raise exception 'a tenant may have at most 10 webhooks; delete one first'
      using errcode = 'AT409', hint = 'too_many_webhooks';
  end if;
  insert into atl.webhooks (tenant_id, url, format, secret, created_by)
  values (v_tenant, p_url, p_format, atl._webhook_secret_new(), v_actor.subject)
  returning * into v_row;
  perform atl._change_append('webhook', v_row.id::text, 'created', atl._webhook_state(v_row), v_actor.id, v_actor.subject);
  return atl._webhook_json(v_row) || jsonb_build_object('secret', v_row.secret);
end $$;
comment on function atl.webhook_create(text, text, text) is
  'Adds a webhook (url, format json|slack) to the current tenant as the acting admin key (p_created_by is ignored: the key''s subject is recorded), at most 10 live ones (AT409 too_many_webhooks), in the chain; returns it with its signing secret, shown this once.';

create or replace function atl.webhook_list() returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(jsonb_agg(atl._webhook_json(w) order by w.created_at desc, w.id desc), '[]'::jsonb)
  from atl.webhooks w
  where w.tenant_id = atl.current_tenant() and w.deleted_at is null
$$;

create or replace function atl.webhook_delete(p_id uuid) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._require_actor(array['admin']);
  v_row atl.webhooks;
  v_was timestamptz;
begin
  select w.deleted_at into v_was from atl.webhooks w where w.tenant_id = atl._require_tenant() and w.id = p_id for update;
  update atl.webhooks w set deleted_at = coalesce(w.deleted_at, now())
  where w.tenant_id = atl._require_tenant() and w.id = p_id
  returning * into v_row;
  if not found then
    raise exception 'webhook not found' using errcode = 'AT404', hint = 'webhook_not_found';
  end if;
  if v_was is null then
    perform atl._change_append('webhook', v_row.id::text, 'deleted', atl._webhook_state(v_row), v_actor.id, v_actor.subject);
  end if;
  return atl._webhook_json(v_row);
end $$;

-- ---------------------------------------------------------------- approvals

-- Records one decision by the acting key and returns the request as it now
-- stands. The request's row lock serialises decisions, the gate and the sweep.
drop function atl.approval_decide(uuid, text, text, text);
create function atl.approval_decide(p_request_id uuid, p_decision text, p_reason text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['approver', 'admin']);
  v_req atl.approval_requests;
  v_decision_id uuid;
  v_decided_at timestamptz;
begin
  if p_decision is null or p_decision not in ('APPROVE', 'REJECT') then
    raise exception 'decision must be APPROVE or REJECT' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  select * into v_req from atl.approval_requests r where r.tenant_id = v_tenant and r.id = p_request_id for update;
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
  if v_actor.subject = v_req.requested_by or v_actor.id is not distinct from v_req.requested_by_key_id
     or v_actor.subject = v_req.agent_id then
    raise exception 'the requester may not decide its own request' using errcode = 'AT403', hint = 'self_approval';
  end if;
  if v_actor.created_at >= v_req.created_at then
    raise exception 'this key was issued after the request was created; only keys that existed before it decide'
      using errcode = 'AT403', hint = 'decider_key_too_new';
  end if;
  -- A rotation's replacement decides only once the key it replaces has
  -- stopped, so the person whose key was rotated notices before it counts.
  if exists (select 1 from atl.api_keys o where o.tenant_id = v_tenant and o.replaced_by_key_id = v_actor.id
             and o.revoked_at > clock_timestamp()) then
    raise exception 'this key replaced one that still works (a rotation''s overlap); it decides once the old key has stopped'
      using errcode = 'AT403', hint = 'rotation_overlap';
  end if;
  if v_actor.role = 'admin' and v_req.trust_level = 'L4'
     and not (select t.admins_decide_l4 from atl.tenants t where t.id = v_tenant) then
    raise exception 'admin keys do not decide L4 requests in this tenant (admins_decide_l4 is off)'
      using errcode = 'AT403', hint = 'admin_l4_forbidden';
  end if;
  insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason,
    decided_by_key_id, decided_by_role)
  values (v_tenant, p_request_id, p_decision, v_actor.subject, p_reason, v_actor.id, v_actor.role)
  returning id, created_at into v_decision_id, v_decided_at;
  select * into v_req from atl.approval_requests r where r.tenant_id = v_tenant and r.id = p_request_id;
  perform atl._change_append('approval', p_request_id::text, 'decided', atl._approval_state(v_req)
    || jsonb_build_object('decision_id', v_decision_id, 'decision', p_decision, 'decided_by', v_actor.subject,
                          'decided_by_key_id', v_actor.id, 'reason', p_reason, 'decided_by_role', v_actor.role,
                          'created_at', v_decided_at), v_actor.id, v_actor.subject);
  if v_req.status <> 'PENDING' then
    perform atl._change_append('approval', p_request_id::text, lower(v_req.status), atl._approval_state(v_req),
      v_actor.id, v_actor.subject);
  end if;
  return atl._approval_json(v_req);
end $$;
comment on function atl.approval_decide(uuid, text, text) is
  'Records APPROVE or REJECT by the acting approver/admin key on a PENDING, unexpired request of the current tenant: never by its requester (self_approval), only by keys older than the request (decider_key_too_new), admin keys on L4 only where the tenant allows (admin_l4_forbidden); chains the decision and any status change. Returns the request.';

-- Expires the current tenant's PENDING requests past expires_at.
create function atl._approval_expire_tenant() returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor atl.api_keys := atl._actor();
  v_count integer;
begin
  with moved as (
    update atl.approval_requests r set status = 'EXPIRED', decided_at = clock_timestamp()
    where r.tenant_id = atl._require_tenant() and r.status = 'PENDING' and r.expires_at <= clock_timestamp()
    returning r.*),
  logged as (
    insert into atl.change_log (tenant_id, entity, entity_id, action, actor_key_id, actor_subject, detail)
    select m.tenant_id, 'approval', m.id::text, 'expired', v_actor.id, coalesce(v_actor.subject, 'system:expiry'),
           atl._approval_state(m::atl.approval_requests)
    from moved m order by m.created_at, m.id
    returning 1)
  select count(*) into v_count from logged;
  return v_count;
end $$;
comment on function atl._approval_expire_tenant() is
  'Private (SECURITY DEFINER, atl_gate): expires the current tenant''s PENDING requests past expires_at and chains each; returns how many.';

-- Every tenant's sweep, for the worker role only (pg_cron, the service's sweep).
create function atl._approval_expire_all() returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text;
  v_count integer := 0;
begin
  for v_tenant in
    select distinct r.tenant_id from atl.approval_requests r
    where r.status = 'PENDING' and r.expires_at <= clock_timestamp()
  loop
    perform set_config('app.tenant_id', v_tenant, true);
    perform set_config('app.key_hash', '', true);
    v_count := v_count + atl._approval_expire_tenant();
  end loop;
  perform set_config('app.tenant_id', '', true);
  return v_count;
end $$;
comment on function atl._approval_expire_all() is
  'Private (SECURITY DEFINER, atl_sweeper; executable by atl_worker only): expires stale PENDING requests of every tenant, one tenant at a time; returns how many.';

drop function atl.expire_stale_approvals();
create function atl.expire_stale_approvals() returns integer
language plpgsql volatile
as $$
begin
  if atl.current_tenant() is null then
    return atl._approval_expire_all();
  end if;
  return atl._approval_expire_tenant();
end $$;
comment on function atl.expire_stale_approvals() is
  'Expires PENDING approval requests past expires_at: the current tenant''s, or with no tenant set every tenant''s (only for members of atl_worker, such as pg_cron''s job role); returns how many.';

-- ---------------------------------------------------------------- the gate

drop function atl._gate_record(text, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean);
-- Writes the event (source gate) and audit row of a gate call and builds its answer.
create function atl._gate_record(
  p_tenant text, p_actor uuid, p_http_status integer, p_answer jsonb, p_audit_status text, p_event_status text,
  p_agent_id text, p_workflow text, p_level text, p_stage text, p_tool text, p_args jsonb,
  p_request_id uuid, p_sandbox_id text, p_trace_id text, p_mode text, p_domain text,
  p_route text, p_user_id text, p_latency_ms integer, p_error text, p_write_audit boolean default true)
returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event_id uuid;
begin
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, status, approval_request_id, sandbox_id, trace_id, mode, error, source, actor_key_id)
  values (p_tenant, p_domain, p_workflow, p_agent_id, p_level, p_stage, p_tool, p_args, p_event_status,
    p_request_id, p_sandbox_id, p_trace_id, p_mode, p_error, 'gate', p_actor)
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
comment on function atl._gate_record(text, uuid, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean) is
  'Private: appends a gate call''s event (source gate, acting key) and audit row and returns {"http_status", "body"}.';

drop function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, text, boolean, text, integer);
-- The gate, as the acting agent key: the effective level is the higher of the
-- policy's (else the tenant default) and the agent's declared floor. L0-L2
-- pass; L3/L4 are held for approval, or run once on an approved, unexpired,
-- unconsumed request for exactly this agent, tool, canonical args, domain and
-- mode, while the policy asks for no more than was approved. Every call
-- appends an event and an audit row. Returns {"http_status", "body"} and,
-- for live calls the service must make, "live": {"endpoint_url", "event_id",
-- "args"} with args in their canonical jsonb text, the only form forwarded.
{{ template "func/gate_execute_013.sql" . }}

-- Records the outcome of a live call the service made after atl.gate_execute
-- answered "dispatched".
create or replace function atl.gate_record_outcome(
  p_event_id uuid, p_succeeded boolean, p_upstream_status integer, p_result jsonb, p_error text,
  p_latency_ms integer, p_idempotency_key text default null, p_route text default 'sql atl.gate_record_outcome',
  p_user_id text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['agent']);
  v_ev atl.agent_action_events;
  v_answer jsonb;
  v_event_id uuid;
begin
  select * into v_ev from atl.agent_action_events e where e.tenant_id = v_tenant and e.id = p_event_id;
  if not found or v_ev.status <> 'dispatched' or v_ev.source is distinct from 'gate'
     or v_ev.actor_key_id is distinct from v_actor.id then
    raise exception 'no dispatched call with this event id' using errcode = 'AT404', hint = 'event_not_found';
  end if;
  insert into atl.agent_action_events (tenant_id, domain, workflow_name, agent, trust_level, stage, tool_name,
    tool_args, tool_result, status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error,
    source, actor_key_id)
  values (v_tenant, v_ev.domain, v_ev.workflow_name, v_ev.agent, v_ev.trust_level, v_ev.stage, v_ev.tool_name,
    v_ev.tool_args, p_result, case when p_succeeded then 'succeeded' else 'failed' end, v_ev.approval_request_id,
    v_ev.sandbox_id, v_ev.trace_id, 'live', p_latency_ms, left(p_error, 2000), 'gate', v_actor.id)
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

-- ---------------------------------------------------------------- verification

-- Recomputes the current tenant's chain (audit rows, events, change records),
-- then compares the live approval requests, decisions and keys with what the
-- chain recorded of them: a row rewritten with triggers off is named by the
-- seq of the chained record it no longer matches.
-- SECURITY DEFINER (atl_gate) because it compares what the runtime role may
-- not read (key hashes, webhook secrets) with their chained digests; it reads
-- the current tenant only.
create or replace function atl.audit_verify()
returns table (ok boolean, checked bigint, head_seq bigint, first_broken_seq bigint, reason text)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
  v_expect bigint := 1;
  v_head atl.audit_chain_heads;
  r record;
begin
  select * into v_head from atl.audit_chain_heads h where h.tenant_id = v_tenant;
  for r in
    select 'audit_logs' as tbl, a.seq, a.prev_hash, a.row_hash, to_jsonb(a) as j from atl.audit_logs a where a.tenant_id = v_tenant
    union all
    select 'agent_action_events', e.seq, e.prev_hash, e.row_hash, to_jsonb(e) from atl.agent_action_events e where e.tenant_id = v_tenant
    union all
    select 'change_log', c.seq, c.prev_hash, c.row_hash, to_jsonb(c) from atl.change_log c where c.tenant_id = v_tenant
    order by 2 nulls first
  loop
    if r.seq is null or r.seq > v_expect then
      return query select false, v_expect - 1, coalesce(v_head.seq, 0), v_expect,
        case when r.seq is null then 'a row outside the chain' else 'a row is missing' end;
      return;
    elsif r.seq < v_expect then
      return query select false, v_expect - 1, coalesce(v_head.seq, 0), r.seq, 'a seq appears twice';
      return;
    elsif r.prev_hash is distinct from v_prev then
      return query select false, v_expect - 1, coalesce(v_head.seq, 0), r.seq, 'not linked to the previous row';
      return;
    elsif r.row_hash is distinct from atl._chain_row_hash(r.tbl, r.j, v_prev) then
      return query select false, v_expect - 1, coalesce(v_head.seq, 0), r.seq, 'the row was altered';
      return;
    end if;
    v_prev := r.row_hash;
    v_expect := v_expect + 1;
  end loop;
  if coalesce(v_head.seq, 0) <> v_expect - 1 or coalesce(v_head.hash, v_prev) <> v_prev then
    return query select false, v_expect - 1, coalesce(v_head.seq, 0), v_expect, 'rows after the last one are missing';
    return;
  end if;

  -- The chain is intact; now the live rows must match what it recorded.
  select x.seq, x.why into r from (
    -- each decision as its chained record says
    select c.seq, 'an approval decision differs from the chain (decision ' || d.id || ')' as why
    from atl.approval_decisions d
    left join lateral (
      select c.seq, c.detail from atl.change_log c
      where c.tenant_id = v_tenant and c.entity = 'approval' and c.entity_id = d.approval_request_id::text
        and c.action = 'decided' and c.detail ->> 'decision_id' = d.id::text
      order by c.seq limit 1) c on true
    where d.tenant_id = v_tenant
      and (c.seq is null
           or (c.detail ->> 'decision', c.detail ->> 'decided_by', c.detail ->> 'decided_by_key_id', c.detail ->> 'reason',
               c.detail ->> 'decided_by_role')
              is distinct from (d.decision, d.decided_by, d.decided_by_key_id::text, d.reason, d.decided_by_role)
           or (c.detail ? 'created_at' and (c.detail ->> 'created_at')::timestamptz is distinct from d.created_at))
    union all
    -- each chained decision still present
    select c.seq, 'a chained approval decision is missing (decision ' || (c.detail ->> 'decision_id') || ')'
    from atl.change_log c
    where c.tenant_id = v_tenant and c.entity = 'approval' and c.action = 'decided'
      and not exists (select 1 from atl.approval_decisions d
                      where d.tenant_id = v_tenant and d.id::text = c.detail ->> 'decision_id')
    union all
    -- each chained request still present
    select min(c.seq), 'a chained approval request is missing (request ' || c.entity_id || ')'
    from atl.change_log c
    where c.tenant_id = v_tenant and c.entity = 'approval'
      and not exists (select 1 from atl.approval_requests q where q.tenant_id = v_tenant and q.id::text = c.entity_id)
    group by c.entity_id
    union all
    -- each request's state as its latest record, its terms as its first, its
    -- status and count as its decisions allow
    select coalesce(l.seq, f.seq), case
             when l.seq is null or f.seq is null then 'an approval request outside the chain (request ' || q.id || ')'
             when f.detail - array['status', 'approvals', 'decided_at', 'consumed_at', 'expires_at', 'created_at']
                  is distinct from atl._approval_terms(q) - array['request_id', 'expires_at', 'created_at']
                  or (f.detail ->> 'expires_at')::timestamptz is distinct from q.expires_at
                  or (f.detail ->> 'created_at')::timestamptz is distinct from q.created_at
               then 'an approval request''s terms differ from the chain (request ' || q.id || ')'
             when (l.detail ->> 'status', (l.detail ->> 'approvals')::int, (l.detail ->> 'decided_at')::timestamptz,
                   (l.detail ->> 'consumed_at')::timestamptz)
                  is distinct from (q.status, q.approvals, q.decided_at, q.consumed_at)
               then 'an approval request''s status differs from the chain (request ' || q.id || ')'
             else 'an approval request''s status is not what its decisions allow (request ' || q.id || ')' end
    from atl.approval_requests q
    left join lateral (select c.seq, c.detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'approval' and c.entity_id = q.id::text
                         and c.detail ? 'status'
                       order by c.seq desc limit 1) l on true
    left join lateral (select c.seq, c.detail - 'request_id' as detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'approval' and c.entity_id = q.id::text
                         and c.action in ('created', 'snapshot')
                       order by c.seq limit 1) f on true
    cross join lateral (select count(*) filter (where d.decision = 'APPROVE') as approves,
                               count(*) filter (where d.decision = 'REJECT') as rejects,
                               count(*) filter (where d.decided_by = 'system:auto-approve') as autos
                        from atl.approval_decisions d
                        where d.tenant_id = v_tenant and d.approval_request_id = q.id) n
    where q.tenant_id = v_tenant
      and (l.seq is null or f.seq is null
           or (l.detail ->> 'status', (l.detail ->> 'approvals')::int, (l.detail ->> 'decided_at')::timestamptz,
               (l.detail ->> 'consumed_at')::timestamptz)
              is distinct from (q.status, q.approvals, q.decided_at, q.consumed_at)
           or f.detail - array['status', 'approvals', 'decided_at', 'consumed_at', 'expires_at', 'created_at']
              is distinct from atl._approval_terms(q) - array['request_id', 'expires_at', 'created_at']
           or (f.detail ->> 'expires_at')::timestamptz is distinct from q.expires_at
           or (f.detail ->> 'created_at')::timestamptz is distinct from q.created_at
           or q.approvals <> n.approves
           or (q.status = 'APPROVED' and n.approves < q.required_approvals and n.autos = 0)
           or (q.status = 'REJECTED') <> (n.rejects > 0)
           or (q.status = 'PENDING' and n.approves >= q.required_approvals))
    union all
    -- each key as its latest record, and each chained key still present
    select l.seq, case when l.seq is null then 'an API key outside the chain (key ' || k.id || ')'
                       else 'an API key differs from the chain (key ' || k.id || ')' end
    from atl.api_keys k
    left join lateral (select c.seq, c.detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'key' and c.entity_id = k.id::text
                       order by c.seq desc limit 1) l on true
    where k.tenant_id = v_tenant
      and (l.seq is null
           or (l.detail ->> 'role', l.detail ->> 'subject', l.detail -> 'agents', (l.detail ->> 'revoked_at')::timestamptz,
               l.detail ->> 'replaced_by_key_id', (l.detail ->> 'created_at')::timestamptz, l.detail ->> 'key_prefix')
              is distinct from (k.role, k.subject, coalesce(to_jsonb(k.agents), 'null'::jsonb), k.revoked_at,
                                k.replaced_by_key_id::text, k.created_at, k.key_prefix)
           or l.detail ->> 'key_hash_sha256' is distinct from encode(sha256(k.key_hash), 'hex'))
    union all
    select min(c.seq), 'a chained API key is missing (key ' || c.entity_id || ')'
    from atl.change_log c
    where c.tenant_id = v_tenant and c.entity = 'key'
      and not exists (select 1 from atl.api_keys k where k.tenant_id = v_tenant and k.id::text = c.entity_id)
    group by c.entity_id
    union all
    -- each policy as its latest record; a deleted one is gone
    select l.seq, case when l.seq is null then 'a tool policy outside the chain (' || p.tool_name || ')'
                                    else 'a tool policy differs from the chain (' || p.tool_name || ')' end
    from atl.tool_policies p
    left join lateral (select c.seq, c.action, c.detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'policy' and c.entity_id = p.tool_name
                       order by c.seq desc limit 1) l on true
    where p.tenant_id = v_tenant
      and (l.seq is null or l.action = 'deleted' or l.detail is distinct from atl._policy_state(p))
    union all
    select l.seq, 'a chained tool policy is missing (' || l.entity_id || ')'
    from (select distinct on (c.entity_id) c.entity_id, c.seq, c.action from atl.change_log c
          where c.tenant_id = v_tenant and c.entity = 'policy' order by c.entity_id, c.seq desc) l
    where l.action <> 'deleted'
      and not exists (select 1 from atl.tool_policies p where p.tenant_id = v_tenant and p.tool_name = l.entity_id)
    union all
    -- the tenant's settings as their latest record
    select l.seq, 'the tenant''s settings differ from the chain'
    from atl.tenants t
    left join lateral (select c.seq, c.detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'settings'
                       order by c.seq desc limit 1) l on true
    where t.id = v_tenant and (l.seq is null or l.detail is distinct from atl._settings_state(t))
    union all
    -- each webhook as its latest record
    select l.seq, case when l.seq is null then 'a webhook outside the chain (' || w.id || ')'
                       else 'a webhook differs from the chain (' || w.id || ')' end
    from atl.webhooks w
    left join lateral (select c.seq, c.detail from atl.change_log c
                       where c.tenant_id = v_tenant and c.entity = 'webhook' and c.entity_id = w.id::text
                       order by c.seq desc limit 1) l on true
    where w.tenant_id = v_tenant and (l.seq is null or l.detail is distinct from atl._webhook_state(w))
  ) x
  order by x.seq nulls first
  limit 1;
  if found then
    return query select false, v_expect - 1, coalesce(v_head.seq, 0), r.seq, r.why;
    return;
  end if;
  return query select true, v_expect - 1, coalesce(v_head.seq, 0), null::bigint, null::text;
end $$;
comment on function atl.audit_verify() is
  'Recomputes the current tenant''s hash chain over audit_logs, agent_action_events and change_log, then checks that every approval request, decision, API key, tool policy, webhook and the tenant''s settings match their chained records (and each request''s status and count what its decisions allow); returns ok, rows checked, the head seq, and the first broken seq with why.';

-- ---------------------------------------------------------------- grants and owners

alter table atl.tenants force row level security;
alter table atl.api_keys force row level security;
alter table atl.approval_requests force row level security;
alter table atl.approval_decisions force row level security;
alter table atl.audit_chain_heads force row level security;
alter table atl.change_log force row level security;
alter table atl.tool_policies force row level security;
alter table atl.webhooks force row level security;

revoke all on all functions in schema atl from public;

-- The worker's functions were the runtime role's; now only atl_worker's.
revoke execute on function atl._webhook_worker_only(), atl.webhook_delivery_claim(integer, interval, integer),
  atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval),
  atl.webhook_delivery_next_due(), atl._approval_decision_check(), atl._approval_decision_apply()
  from {{ .app_role }};

-- Functions atl_gate runs inside its own functions.
grant execute on function atl._actor(), atl._require_actor(text[]), atl._change_append(text, text, text, jsonb, uuid, text),
  atl._approval_state(atl.approval_requests), atl._approval_terms(atl.approval_requests), atl._key_state(atl.api_keys),
  atl._key_json(atl.api_keys), atl._key_insert(text, text, text, text[], uuid, text),
  atl._key_revoke(uuid, timestamptz, uuid, atl.api_keys), atl._api_key_new(), atl._api_key_hash(text),
  atl._approval_json(atl.approval_requests), atl._policy_json(atl.tool_policies), atl._gate_refusal(text, text),
  atl._gate_record(text, uuid, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean),
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl._approval_expire_tenant(), atl._chain_row_hash(text, jsonb, bytea), atl._webhook_enqueue_event(text, text, jsonb),
  atl._policy_state(atl.tool_policies), atl._settings_state(atl.tenants), atl._webhook_state(atl.webhooks),
  atl._webhook_json(atl.webhooks), atl._webhook_secret_new()
  to atl_gate;
grant execute on function atl._approval_expire_tenant() to atl_sweeper;
grant execute on function atl._approval_expire_all(), atl.expire_stale_approvals() to atl_worker;
grant execute on function atl._approval_json(atl.approval_requests) to atl_webhooks;

-- The runtime role: the API's functions, nothing private that writes.
grant execute on function atl.api_key_issue(text, text, text[]), atl.api_key_list(), atl.api_key_revoke(uuid),
  atl.api_key_rotate(uuid, integer), atl.api_key_authenticate(text), atl.tenant_create(text, text, text),
  atl.tenant_get(), atl._key_json(atl.api_keys), atl._api_key_hash(text),
  atl.policy_put(text, text, boolean, integer, integer, text), atl.policy_get(text), atl.policy_list(),
  atl.policy_delete(text), atl._policy_json(atl.tool_policies), atl.tenant_settings_put(text, text[], boolean),
  atl._approval_json(atl.approval_requests), atl.approval_decide(uuid, text, text), atl.approval_get(uuid),
  atl.approval_list(text, timestamptz, uuid, integer), atl.expire_stale_approvals(), atl._approval_expire_tenant(),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer),
  atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text),
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.audit_log_query(text, text, text, text, timestamptz, timestamptz, timestamptz, uuid, integer),
  atl._audit_log_query_sql(text, text, text, text, timestamptz, timestamptz, timestamptz),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.event_query(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz, uuid, integer),
  atl._event_query_sql(text, text, text, text, uuid, timestamptz, timestamptz, timestamptz),
  atl._approval_list_sql(text, timestamptz),
  atl.audit_verify(), atl.audit_head(), atl._chain_row_hash(text, jsonb, bytea),
  atl._approval_state(atl.approval_requests), atl._approval_terms(atl.approval_requests),
  atl.current_tenant(), atl._require_tenant(),
  atl.eval_drift(jsonb, jsonb), atl.eval_run_start(text, text, text, uuid, numeric),
  atl.eval_run_complete(uuid, jsonb, text, text), atl.eval_run_get(uuid),
  atl.eval_run_list(text, text, text, text, timestamptz, uuid, integer), atl.eval_baseline_pin(text, uuid),
  atl._webhook_json(atl.webhooks), atl._webhook_secret_new(), atl.webhook_create(text, text, text),
  atl.webhook_list(), atl.webhook_delete(uuid), atl.webhook_delivery_list(uuid, timestamptz, uuid, integer)
  to {{ .app_role }};
grant execute on function atl.current_tenant(), atl._api_key_hash(text) to atl_keyauth;
grant execute on function atl.current_tenant(), atl._require_tenant(), atl._webhook_worker_only(),
  atl.webhook_delivery_claim(integer, interval, integer),
  atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval),
  atl.webhook_delivery_next_due()
  to atl_worker;
grant execute on function atl._webhook_worker_only(), atl._approval_json(atl.approval_requests) to atl_webhooks;

-- SECURITY DEFINER functions belong to atl_gate (the sweep of every tenant to
-- atl_sweeper, the outbox to atl_webhooks); CREATE on the schema only for the change.
grant create on schema atl to atl_gate, atl_sweeper, atl_webhooks;
alter function atl._actor() owner to atl_gate;
alter function atl._require_actor(text[]) owner to atl_gate;
alter function atl._change_append(text, text, text, jsonb, uuid, text) owner to atl_gate;
alter function atl._key_insert(text, text, text, text[], uuid, text) owner to atl_gate;
alter function atl._key_revoke(uuid, timestamptz, uuid, atl.api_keys) owner to atl_gate;
alter function atl._gate_record(text, uuid, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean) owner to atl_gate;
alter function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text) owner to atl_gate;
alter function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]) owner to atl_gate;
alter function atl.api_key_issue(text, text, text[]) owner to atl_gate;
alter function atl.api_key_revoke(uuid) owner to atl_gate;
alter function atl.api_key_rotate(uuid, integer) owner to atl_gate;
alter function atl.api_key_list() owner to atl_gate;
alter function atl.webhook_create(text, text, text) owner to atl_gate;
alter function atl.webhook_list() owner to atl_gate;
alter function atl.webhook_delete(uuid) owner to atl_gate;
alter function atl.audit_verify() owner to atl_gate;
alter function atl.tenant_create(text, text, text) owner to atl_gate;
alter function atl.policy_put(text, text, boolean, integer, integer, text) owner to atl_gate;
alter function atl.policy_delete(text) owner to atl_gate;
alter function atl.tenant_settings_put(text, text[], boolean) owner to atl_gate;
alter function atl.approval_decide(uuid, text, text) owner to atl_gate;
alter function atl._approval_expire_tenant() owner to atl_gate;
alter function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) owner to atl_gate;
alter function atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text) owner to atl_gate;
alter function atl._approval_expire_all() owner to atl_sweeper;
alter function atl._webhook_enqueue_event(text, text, jsonb) owner to atl_webhooks;
revoke create on schema atl from atl_gate, atl_sweeper, atl_webhooks;
grant insert on atl.webhook_deliveries to atl_webhooks;

---- create above / drop below ----

-- Back to 012: the functions this migration replaced come back from the
-- templates their migrations use; rows written since keep their data, but
-- the columns and the change log added here are dropped.

drop trigger _050_guard on atl.approval_decisions;
drop function atl._approval_decision_guard();
drop trigger _100_guard on atl.approval_requests;
drop function atl._approval_request_guard();

drop function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer);
drop function atl._gate_record(text, uuid, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean);
drop function atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text);
drop function atl.expire_stale_approvals();
drop function atl._approval_expire_all();
drop function atl._approval_expire_tenant();
drop function atl.approval_decide(uuid, text, text);
drop function atl.tenant_settings_put(text, text[], boolean);
drop function atl.policy_list();
drop function atl.policy_delete(text);
drop function atl.policy_put(text, text, boolean, integer, integer, text);
drop function atl.tenant_create(text, text, text);
drop function atl.api_key_authenticate(text);
drop function atl.api_key_rotate(uuid, integer);
drop function atl.api_key_revoke(uuid);
drop function atl._key_revoke(uuid, timestamptz, uuid, atl.api_keys);
drop function atl.api_key_list();
drop function atl.api_key_issue(text, text, text[]);
drop function atl._key_insert(text, text, text, text[], uuid, text);
drop function atl._key_json(atl.api_keys);
drop function atl._webhook_enqueue_event(text, text, jsonb);
drop function atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]);
drop function atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text);
drop function atl.audit_verify();
drop function atl._key_state(atl.api_keys);
drop function atl._approval_terms(atl.approval_requests);
drop function atl._approval_state(atl.approval_requests);
drop function atl._change_append(text, text, text, jsonb, uuid, text);
drop function atl._require_actor(text[]);
drop function atl._actor();
drop function atl._chain_row_hash(text, jsonb, bytea);
drop function atl.webhook_create(text, text, text);
drop function atl.webhook_list();
drop function atl.webhook_delete(uuid);
drop function atl._webhook_state(atl.webhooks);
drop function atl._settings_state(atl.tenants);
drop function atl._policy_state(atl.tool_policies);
drop function atl._approval_json(atl.approval_requests);
drop function atl._policy_json(atl.tool_policies);

drop table atl.change_log;
delete from atl.webhook_deliveries where event like 'key.%';
alter table atl.webhook_deliveries drop constraint webhook_deliveries_event;
alter table atl.webhook_deliveries add constraint webhook_deliveries_event check (
  event in ('approval.created', 'approval.approved', 'approval.rejected', 'approval.expired'));
revoke insert on atl.webhook_deliveries from atl_webhooks;
grant insert on atl.webhook_deliveries to atl_webhooks;

alter table atl.agent_action_events drop column source, drop column actor_key_id;
alter table atl.audit_logs drop column actor_key_id, drop column actor_subject, drop column claimed_user_id;
alter table atl.approval_decisions drop column decided_by_key_id, drop column decided_by_role;
alter table atl.approval_requests drop column mode, drop column requested_by_key_id, drop column endpoint_url;
alter table atl.tool_policies drop column updated_by_key_id, drop column updated_by;
drop index atl.api_keys_active_subject_idx;
alter table atl.api_keys drop column agents, drop column issued_by_key_id, drop column issued_by,
  drop column revoked_by_key_id, drop column revoked_by, drop column replaced_by_key_id;
alter table atl.tenants drop column admins_decide_l4;

{{ template "func/_chain_row_hash_007.sql" . }}
{{ template "func/_approval_json_004.sql" . }}
{{ template "func/_policy_json_004.sql" . }}
{{ template "func/api_key_issue_002.sql" . }}
{{ template "func/api_key_list_002.sql" . }}
{{ template "func/api_key_revoke_002.sql" . }}
{{ template "func/api_key_authenticate_002.sql" . }}
{{ template "func/tenant_create_002.sql" . }}
{{ template "func/audit_log_insert_003.sql" . }}
{{ template "func/event_insert_003.sql" . }}
{{ template "func/policy_put_004.sql" . }}
{{ template "func/policy_list_004.sql" . }}
{{ template "func/policy_delete_004.sql" . }}
{{ template "func/tenant_settings_put_004.sql" . }}
{{ template "func/approval_decide_004.sql" . }}
{{ template "func/expire_stale_approvals_004.sql" . }}
{{ template "func/_gate_record_004.sql" . }}
{{ template "func/gate_execute_004.sql" . }}
{{ template "func/gate_record_outcome_004.sql" . }}
{{ template "func/_approval_request_guard_006.sql" . }}
{{ template "func/audit_verify_007.sql" . }}
{{ template "func/webhook_create_012.sql" . }}
{{ template "func/webhook_list_012.sql" . }}
{{ template "func/webhook_delete_012.sql" . }}
create trigger _100_guard before update on atl.approval_requests
  for each row execute function atl._approval_request_guard();

grant create on schema atl to atl_keyauth, atl_sweeper;
alter function atl.api_key_authenticate(text) owner to atl_keyauth;
alter function atl.expire_stale_approvals() owner to atl_sweeper;
revoke create on schema atl from atl_keyauth, atl_sweeper;
grant update (status, decided_at) on atl.approval_requests to atl_sweeper;

revoke all on all functions in schema atl from public;
grant execute on function atl._chain_row_hash(text, jsonb, bytea), atl._approval_json(atl.approval_requests),
  atl._policy_json(atl.tool_policies), atl.api_key_issue(text, text), atl.api_key_list(), atl.api_key_revoke(uuid),
  atl.api_key_authenticate(text), atl.tenant_create(text, text, text),
  atl.audit_log_insert(text, text, text, text, text, integer, integer, text, text),
  atl.event_insert(text[], text[], text[], text[], text[], text[], jsonb[], jsonb[], text[], uuid[], text[], text[], text[], integer[], text[]),
  atl.policy_put(text, text, boolean, integer, integer, text), atl.policy_list(), atl.policy_delete(text),
  atl.tenant_settings_put(text, text[]), atl.approval_decide(uuid, text, text, text), atl.expire_stale_approvals(),
  atl._gate_record(text, integer, jsonb, text, text, text, text, text, text, text, jsonb, uuid, text, text, text, text, text, text, integer, text, boolean),
  atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, text, boolean, text, integer),
  atl.gate_record_outcome(uuid, boolean, integer, jsonb, text, integer, text, text, text), atl.audit_verify(),
  atl._approval_decision_check(), atl._approval_decision_apply(),
  atl.webhook_create(text, text, text), atl.webhook_list(), atl.webhook_delete(uuid),
  atl._webhook_worker_only(), atl.webhook_delivery_claim(integer, interval, integer),
  atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval),
  atl.webhook_delivery_next_due()
  to {{ .app_role }};
grant execute on function atl._approval_json(atl.approval_requests) to atl_webhooks;
revoke execute on function atl.current_tenant(), atl._require_tenant() from atl_gate, atl_worker;

revoke select on atl.api_keys from {{ .app_role }};
grant select, insert on atl.tenants, atl.api_keys, atl.audit_logs, atl.agent_action_events, atl.approval_requests,
  atl.approval_decisions, atl.audit_chain_heads to {{ .app_role }};
grant select, insert, update, delete on atl.tool_policies to {{ .app_role }};
grant update (name, default_trust_level, allowed_domains) on atl.tenants to {{ .app_role }};
grant update (revoked_at) on atl.api_keys to {{ .app_role }};
grant update (status, approvals, decided_at, consumed_at) on atl.approval_requests to {{ .app_role }};
grant update (seq, hash, updated_at) on atl.audit_chain_heads to {{ .app_role }};
grant select, insert, delete on atl.idempotency_keys to {{ .app_role }};
grant update (http_status, response) on atl.idempotency_keys to {{ .app_role }};
revoke all on atl.tenants, atl.api_keys, atl.tool_policies, atl.audit_logs, atl.agent_action_events,
  atl.approval_requests, atl.approval_decisions, atl.audit_chain_heads, atl.idempotency_keys, atl.webhooks
  from atl_gate;
revoke select on atl.webhooks from {{ .app_role }};
grant select, insert on atl.webhooks to {{ .app_role }};
grant update (deleted_at) on atl.webhooks to {{ .app_role }};

do $$
begin
  execute format('grant temporary on database %I to public', current_database());
end $$;
revoke usage on schema atl from atl_gate, atl_worker;
revoke atl_gate, atl_worker from current_user;
-- Roles are shared by every database of the cluster; keep them while another database uses them.
do $$
declare
  r text;
begin
  foreach r in array array['atl_gate', 'atl_worker'] loop
    begin
      execute format('drop role %I', r);
    exception when dependent_objects_still_exist or undefined_object then null;
    end;
  end loop;
end $$;
