-- Schema atl: roles, tenant helper, every table of the product with forced RLS.
-- Function bodies live in later migrations; this one holds data and rules.

-- Runtime role: the service does SET LOCAL ROLE to it in every tenant transaction.
do $$
begin
  create role {{ .app_role }} nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;

-- Owner of atl.api_key_authenticate: may read key hashes of every tenant, nothing else.
do $$
begin
  create role atl_keyauth nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;

-- Owner of atl.expire_stale_approvals: may move PENDING requests to EXPIRED in every tenant.
do $$
begin
  create role atl_sweeper nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;

-- The migrating role must be able to SET ROLE to the runtime role and hand
-- functions to the two definer roles.
grant {{ .app_role }}, atl_keyauth, atl_sweeper to current_user;

create schema atl;
comment on schema atl is 'Agent Trust Layer: audit trail, approvals and evals, isolated per tenant by RLS.';
grant usage on schema atl to {{ .app_role }}, atl_keyauth, atl_sweeper;

-- The tenant of the current transaction, or NULL. A setting that was set by an
-- earlier transaction reads '' afterwards, so '' counts as unset.
create function atl.current_tenant() returns text
language sql stable parallel safe
as $$ select nullif(current_setting('app.tenant_id', true), '') $$;
comment on function atl.current_tenant() is
  'Tenant of the current transaction (app.tenant_id, set with set_config(..., true)), or NULL when unset or empty.';

-- Raises 42501 when no tenant is set; write functions call it first.
create function atl._require_tenant() returns text
language plpgsql stable
as $$
declare
  t text := atl.current_tenant();
begin
  if t is null then
    raise exception 'no tenant is set for this transaction'
      using errcode = '42501', hint = 'no_tenant',
            detail = 'call set_config(''app.tenant_id'', <tenant>, true) first';
  end if;
  return t;
end $$;
comment on function atl._require_tenant() is
  'Private: returns atl.current_tenant() or raises 42501 (hint no_tenant) when it is unset.';

-- Refuses UPDATE, DELETE and TRUNCATE on append-only tables, whoever runs them.
create function atl._refuse_change() returns trigger
language plpgsql
as $$
begin
  raise exception '% is append-only: % is refused', tg_table_name, lower(tg_op)
    using errcode = 'AT409', hint = 'append_only';
end $$;
comment on function atl._refuse_change() is
  'Private trigger function: makes a table append-only by refusing UPDATE, DELETE and TRUNCATE (SQLSTATE AT409).';

create table atl.tenants (
  id                  text        not null,
  name                text        not null,
  default_trust_level text        not null default 'L3',
  allowed_domains     text[],
  created_at          timestamptz not null default now(),
  constraint tenants_pkey primary key (id),
  constraint tenants_id_format check (id ~ '^[a-z0-9][a-z0-9_-]{1,62}$'),
  constraint tenants_name_length check (char_length(name) between 1 and 200),
  constraint tenants_default_trust_level check (default_trust_level in ('L0', 'L1', 'L2', 'L3', 'L4')),
  constraint tenants_allowed_domains_format check (
    allowed_domains is null
    or array_to_string(allowed_domains, ',') ~ '^[a-z0-9][a-z0-9_.-]{0,62}(,[a-z0-9][a-z0-9_.-]{0,62})*$')
);
comment on table atl.tenants is 'One row per customer. RLS shows a transaction only its own tenant.';
comment on column atl.tenants.default_trust_level is 'Level of a tool that has no policy; L3 (human review) unless set.';
comment on column atl.tenants.allowed_domains is 'When set, the only domains this tenant accepts; NULL accepts any valid domain.';

create table atl.api_keys (
  tenant_id  text        not null,
  id         uuid        not null default gen_random_uuid(),
  role       text        not null,
  subject    text        not null,
  key_hash   bytea       not null,
  key_prefix text        not null,
  created_at timestamptz not null default now(),
  revoked_at timestamptz,
  constraint api_keys_pkey primary key (tenant_id, id),
  constraint api_keys_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint api_keys_hash_key unique (tenant_id, key_hash),
  constraint api_keys_role check (role in ('agent', 'approver', 'admin')),
  constraint api_keys_subject_format check (subject ~ '^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,199}$'),
  constraint api_keys_hash_length check (octet_length(key_hash) = 32)
);
comment on table atl.api_keys is 'Bearer keys. Only the SHA-256 of a key is kept; the key itself is shown once.';
comment on column atl.api_keys.key_prefix is 'First characters of the key, enough to tell keys apart in a list, useless to authenticate.';
-- Authentication looks a key up by hash before the tenant is known.
create index api_keys_hash_idx on atl.api_keys (key_hash);

create table atl.tool_policies (
  tenant_id             text        not null,
  tool_name             text        not null,
  trust_level           text        not null,
  auto_approve_eligible boolean     not null default false,
  approval_ttl_seconds  integer     not null default 3600,
  required_approvals    integer,
  endpoint_url          text,
  updated_at            timestamptz not null default now(),
  constraint tool_policies_pkey primary key (tenant_id, tool_name),
  constraint tool_policies_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint tool_policies_tool_name_format check (tool_name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
  constraint tool_policies_trust_level check (trust_level in ('L0', 'L1', 'L2', 'L3', 'L4')),
  constraint tool_policies_ttl_range check (approval_ttl_seconds between 1 and 2592000),
  constraint tool_policies_required_approvals_range check (required_approvals is null or required_approvals between 1 and 10),
  constraint tool_policies_endpoint_url_format check (endpoint_url is null or endpoint_url ~ '^https?://[^\s]+$')
);
comment on table atl.tool_policies is 'Per-tool trust level and approval rules of a tenant.';
comment on column atl.tool_policies.required_approvals is 'NULL means the level default: 1 for L3, 2 for L4.';

create table atl.audit_logs (
  tenant_id   text        not null,
  id          uuid        not null default gen_random_uuid(),
  trace_id    text        not null,
  agent_id    text,
  route       text        not null,
  mode        text        not null default 'dry_run',
  status      text        not null,
  http_status integer     not null,
  latency_ms  integer     not null default 0,
  user_id     text,
  error       text,
  created_at  timestamptz not null default now(),
  constraint audit_logs_pkey primary key (tenant_id, id),
  constraint audit_logs_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint audit_logs_mode check (mode in ('dry_run', 'live')),
  constraint audit_logs_status check (status in ('ok', 'pending_approval', 'denied', 'error')),
  constraint audit_logs_http_status_range check (http_status between 100 and 599),
  constraint audit_logs_latency_nonnegative check (latency_ms >= 0),
  constraint audit_logs_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  constraint audit_logs_text_lengths check (
    coalesce(char_length(agent_id), 0) <= 200 and coalesce(char_length(user_id), 0) <= 200
    and coalesce(char_length(error), 0) <= 2000 and char_length(route) <= 200)
);
comment on table atl.audit_logs is 'Append-only: one row per request an agent makes, and per refused authenticated request.';
-- id breaks ties inside one microsecond so the keyset cursor is total.
create index audit_logs_tenant_created_idx on atl.audit_logs (tenant_id, created_at desc, id desc);
create index audit_logs_tenant_agent_created_idx on atl.audit_logs (tenant_id, agent_id, created_at desc, id desc);
create index audit_logs_tenant_trace_idx on atl.audit_logs (tenant_id, trace_id);

create table atl.approval_requests (
  tenant_id             text        not null,
  id                    uuid        not null default gen_random_uuid(),
  domain                text        not null default 'default',
  agent_id              text        not null,
  tool_name             text        not null,
  action_type           text        not null,
  action_payload        jsonb       not null,
  trust_level           text        not null,
  status                text        not null default 'PENDING',
  requested_by          text        not null,
  trace_id              text        not null,
  expires_at            timestamptz not null,
  auto_approve_eligible boolean     not null default false,
  required_approvals    integer     not null,
  approvals             integer     not null default 0,
  decided_at            timestamptz,
  consumed_at           timestamptz,
  created_at            timestamptz not null default now(),
  constraint approval_requests_pkey primary key (tenant_id, id),
  constraint approval_requests_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint approval_requests_action_type_format check (action_type ~ '^COMMIT_[A-Z0-9_]+$'),
  constraint approval_requests_payload_object check (jsonb_typeof(action_payload) = 'object'),
  constraint approval_requests_trust_level check (trust_level in ('L3', 'L4')),
  constraint approval_requests_status check (status in ('PENDING', 'APPROVED', 'REJECTED', 'EXPIRED')),
  constraint approval_requests_required_range check (required_approvals between 1 and 10),
  constraint approval_requests_l4_two_humans check (trust_level <> 'L4' or not auto_approve_eligible),
  constraint approval_requests_consumed_only_approved check (consumed_at is null or status = 'APPROVED'),
  constraint approval_requests_domain_format check (domain ~ '^[a-z0-9][a-z0-9_.-]{0,62}$')
);
comment on table atl.approval_requests is 'An L3/L4 tool call held for humans; status is moved only by the decision trigger and the expiry sweep.';
comment on column atl.approval_requests.action_payload is 'The exact tool and args that were approved: {"tool": ..., "args": ...}.';
comment on column atl.approval_requests.consumed_at is 'Set when an approved request is executed; an approval runs once.';
create index approval_requests_tenant_status_created_idx on atl.approval_requests (tenant_id, status, created_at desc, id desc);
create index approval_requests_tenant_created_idx on atl.approval_requests (tenant_id, created_at desc, id desc);
-- The sweep looks across tenants for pending requests past their expiry.
create index approval_requests_pending_expiry_idx on atl.approval_requests (expires_at) where status = 'PENDING';

create table atl.approval_decisions (
  tenant_id           text        not null,
  id                  uuid        not null default gen_random_uuid(),
  approval_request_id uuid        not null,
  decision            text        not null,
  decided_by          text        not null,
  reason              text,
  created_at          timestamptz not null default now(),
  constraint approval_decisions_pkey primary key (tenant_id, id),
  constraint approval_decisions_request_fkey foreign key (tenant_id, approval_request_id)
    references atl.approval_requests (tenant_id, id),
  constraint approval_decisions_once_per_subject unique (tenant_id, approval_request_id, decided_by),
  constraint approval_decisions_decision check (decision in ('APPROVE', 'REJECT')),
  constraint approval_decisions_reason_length check (coalesce(char_length(reason), 0) <= 2000)
);
comment on table atl.approval_decisions is 'Append-only: each human (or system:auto-approve) decision on a request.';

create table atl.agent_action_events (
  tenant_id           text        not null,
  id                  uuid        not null default gen_random_uuid(),
  domain              text        not null default 'default',
  workflow_name       text,
  agent               text        not null,
  trust_level         text        not null,
  stage               text        not null,
  tool_name           text        not null,
  tool_args           jsonb,
  tool_result         jsonb,
  status              text        not null,
  approval_request_id uuid,
  sandbox_id          text,
  trace_id            text        not null,
  mode                text        not null default 'dry_run',
  latency_ms          integer,
  error               text,
  created_at          timestamptz not null default now(),
  constraint agent_action_events_pkey primary key (tenant_id, id),
  constraint agent_action_events_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint agent_action_events_request_fkey foreign key (tenant_id, approval_request_id)
    references atl.approval_requests (tenant_id, id),
  constraint agent_action_events_trust_level check (trust_level in ('L0', 'L1', 'L2', 'L3', 'L4')),
  constraint agent_action_events_stage check (stage in ('plan', 'execute', 'review', 'commit')),
  constraint agent_action_events_mode check (mode in ('dry_run', 'live')),
  constraint agent_action_events_status_format check (status ~ '^[a-z][a-z_]{0,31}$'),
  constraint agent_action_events_domain_format check (domain ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
  constraint agent_action_events_tool_name_format check (tool_name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
  constraint agent_action_events_trace_id_format check (trace_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  constraint agent_action_events_latency_nonnegative check (latency_ms is null or latency_ms >= 0),
  constraint agent_action_events_text_lengths check (
    char_length(agent) between 1 and 200 and coalesce(char_length(workflow_name), 0) <= 200
    and coalesce(char_length(sandbox_id), 0) <= 200 and coalesce(char_length(error), 0) <= 2000)
);
comment on table atl.agent_action_events is 'Append-only: one row per tool-call stage, reported by agents or written by the gate.';
comment on column atl.agent_action_events.sandbox_id is 'Set for L2 and above: where the write was confined.';
create index agent_action_events_tenant_created_idx on atl.agent_action_events (tenant_id, created_at desc, id desc);
create index agent_action_events_tenant_agent_created_idx on atl.agent_action_events (tenant_id, agent, created_at desc, id desc);
create index agent_action_events_tenant_trace_idx on atl.agent_action_events (tenant_id, trace_id);
create index agent_action_events_tenant_request_idx on atl.agent_action_events (tenant_id, approval_request_id)
  where approval_request_id is not null;

create table atl.eval_runs (
  tenant_id       text         not null,
  id              uuid         not null default gen_random_uuid(),
  suite_name      text         not null,
  model_id        text         not null,
  provider        text         not null,
  status          text         not null default 'running',
  baseline_run_id uuid,
  drift_threshold numeric(5,2) not null default 10,
  drift_score     numeric(5,2),
  drift_metadata  jsonb,
  results         jsonb,
  pass_rate       numeric(5,4),
  case_count      integer,
  error           text,
  started_at      timestamptz  not null default now(),
  finished_at     timestamptz,
  constraint eval_runs_pkey primary key (tenant_id, id),
  constraint eval_runs_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint eval_runs_baseline_fkey foreign key (tenant_id, baseline_run_id) references atl.eval_runs (tenant_id, id),
  constraint eval_runs_status check (status in ('running', 'passed', 'failed', 'error')),
  constraint eval_runs_drift_score_range check (drift_score is null or drift_score between 0 and 100),
  constraint eval_runs_drift_threshold_range check (drift_threshold between 0 and 100),
  constraint eval_runs_pass_rate_range check (pass_rate is null or pass_rate between 0 and 1),
  constraint eval_runs_names_format check (
    char_length(suite_name) between 1 and 200 and char_length(model_id) between 1 and 200
    and char_length(provider) between 1 and 200),
  constraint eval_runs_finished_when_done check ((status = 'running') = (finished_at is null))
);
comment on table atl.eval_runs is 'An evaluation run of an agent suite against one model/provider, with its drift from a baseline.';
create index eval_runs_tenant_started_idx on atl.eval_runs (tenant_id, started_at desc, id desc);
create index eval_runs_tenant_suite_started_idx on atl.eval_runs (tenant_id, suite_name, started_at desc, id desc);

create table atl.eval_baselines (
  tenant_id  text        not null,
  suite_name text        not null,
  run_id     uuid        not null,
  pinned_at  timestamptz not null default now(),
  constraint eval_baselines_pkey primary key (tenant_id, suite_name),
  constraint eval_baselines_run_fkey foreign key (tenant_id, run_id) references atl.eval_runs (tenant_id, id)
);
comment on table atl.eval_baselines is 'The pinned baseline run of a suite; without one, drift compares with the latest passed run.';

-- Append-only tables refuse change even to their owner.
create trigger _100_append_only before update or delete on atl.audit_logs
  for each row execute function atl._refuse_change();
create trigger _100_append_only_truncate before truncate on atl.audit_logs
  for each statement execute function atl._refuse_change();
create trigger _100_append_only before update or delete on atl.agent_action_events
  for each row execute function atl._refuse_change();
create trigger _100_append_only_truncate before truncate on atl.agent_action_events
  for each statement execute function atl._refuse_change();
create trigger _100_append_only before update or delete on atl.approval_decisions
  for each row execute function atl._refuse_change();
create trigger _100_append_only_truncate before truncate on atl.approval_decisions
  for each statement execute function atl._refuse_change();

-- Row-level security: every tenant table is enabled and forced, one policy each.
alter table atl.tenants enable row level security;
alter table atl.tenants force row level security;
create policy tenant_isolation on atl.tenants
  using (id = atl.current_tenant()) with check (id = atl.current_tenant());

alter table atl.api_keys enable row level security;
alter table atl.api_keys force row level security;
create policy tenant_isolation on atl.api_keys
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
create policy key_authentication on atl.api_keys for select to atl_keyauth using (true);

alter table atl.tool_policies enable row level security;
alter table atl.tool_policies force row level security;
create policy tenant_isolation on atl.tool_policies
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

alter table atl.audit_logs enable row level security;
alter table atl.audit_logs force row level security;
create policy tenant_isolation on atl.audit_logs
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

alter table atl.approval_requests enable row level security;
alter table atl.approval_requests force row level security;
create policy tenant_isolation on atl.approval_requests
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
-- UPDATE checks SELECT policies on the new row too, so the sweeper also sees what it expired.
create policy expiry_sweep_read on atl.approval_requests for select to atl_sweeper
  using (status in ('PENDING', 'EXPIRED'));
create policy expiry_sweep on atl.approval_requests for update to atl_sweeper
  using (status = 'PENDING') with check (status = 'EXPIRED');

alter table atl.approval_decisions enable row level security;
alter table atl.approval_decisions force row level security;
create policy tenant_isolation on atl.approval_decisions
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

alter table atl.agent_action_events enable row level security;
alter table atl.agent_action_events force row level security;
create policy tenant_isolation on atl.agent_action_events
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

alter table atl.eval_runs enable row level security;
alter table atl.eval_runs force row level security;
create policy tenant_isolation on atl.eval_runs
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

alter table atl.eval_baselines enable row level security;
alter table atl.eval_baselines force row level security;
create policy tenant_isolation on atl.eval_baselines
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());

-- Grants: the runtime role reads and writes through RLS, never truncates,
-- never updates or deletes the append-only tables.
revoke all on all tables in schema atl from public;
revoke all on all functions in schema atl from public;
grant select, insert on atl.tenants to {{ .app_role }};
grant update (name, default_trust_level, allowed_domains) on atl.tenants to {{ .app_role }};
grant select, insert on atl.api_keys to {{ .app_role }};
grant update (revoked_at) on atl.api_keys to {{ .app_role }};
grant select, insert, update, delete on atl.tool_policies to {{ .app_role }};
grant select, insert on atl.audit_logs to {{ .app_role }};
grant select, insert on atl.agent_action_events to {{ .app_role }};
grant select, insert on atl.approval_requests to {{ .app_role }};
grant update (status, approvals, decided_at, consumed_at) on atl.approval_requests to {{ .app_role }};
grant select, insert on atl.approval_decisions to {{ .app_role }};
grant select, insert on atl.eval_runs to {{ .app_role }};
grant update (status, drift_score, drift_metadata, results, pass_rate, case_count, error, finished_at, baseline_run_id)
  on atl.eval_runs to {{ .app_role }};
grant select, insert, update, delete on atl.eval_baselines to {{ .app_role }};
grant select on atl.api_keys to atl_keyauth;
grant select, update (status, decided_at) on atl.approval_requests to atl_sweeper;
grant execute on function atl.current_tenant(), atl._require_tenant() to {{ .app_role }}, atl_keyauth, atl_sweeper;

---- create above / drop below ----

drop schema atl cascade;
revoke {{ .app_role }}, atl_keyauth, atl_sweeper from current_user;
-- Roles are shared by every database of the cluster; keep them while another database uses them.
do $$
declare
  r text;
begin
  foreach r in array array['{{ .app_role }}', 'atl_keyauth', 'atl_sweeper'] loop
    begin
      execute format('drop role %I', r);
    exception when dependent_objects_still_exist or undefined_object then null;
    end;
  end loop;
end $$;
