-- Webhooks: per-tenant targets notified when an approval request is created,
-- decided or expired. A trigger on atl.approval_requests writes one outbox row
-- (atl.webhook_deliveries) per live webhook in the same transaction as the
-- change, whichever path made it (the API, a DBA in psql, the pg_cron sweep),
-- so a committed change always has its deliveries and a rolled-back one none.
-- The service's delivery worker claims due rows across tenants through
-- atl.webhook_delivery_claim and records each attempt through
-- atl.webhook_delivery_record; both are SECURITY DEFINER, owned by
-- atl_webhooks. Delivery is at least once: receivers dedupe by delivery id.

-- Owner of the outbox trigger and the worker's functions: may read every
-- tenant's webhooks and move every tenant's deliveries, nothing else.
do $$
begin
  create role atl_webhooks nologin nosuperuser nobypassrls noinherit nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then null;
end $$;
grant atl_webhooks to current_user;
grant usage on schema atl to atl_webhooks;
grant execute on function atl.current_tenant(), atl._require_tenant() to atl_webhooks;

create table atl.webhooks (
  tenant_id  text        not null,
  id         uuid        not null default gen_random_uuid(),
  url        text        not null,
  format     text        not null default 'json',
  secret     text        not null,
  created_by text        not null,
  created_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint webhooks_pkey primary key (tenant_id, id),
  constraint webhooks_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint webhooks_url_format check (url ~ '^https?://[^\s]+$' and char_length(url) <= 2048),
  constraint webhooks_format check (format in ('json', 'slack')),
  constraint webhooks_secret_length check (char_length(secret) >= 43)
);
comment on table atl.webhooks is 'A tenant''s webhook targets. DELETE only sets deleted_at, so past deliveries stay explained.';
comment on column atl.webhooks.secret is 'HMAC-SHA256 key of the signatures; kept in clear because signing needs it, shown once on create.';
comment on column atl.webhooks.format is 'json: the event as ATL builds it; slack: a Slack incoming-webhook message (text and blocks).';

create table atl.webhook_deliveries (
  tenant_id       text        not null,
  id              uuid        not null default gen_random_uuid(),
  webhook_id      uuid        not null,
  event           text        not null,
  payload         jsonb       not null,
  status          text        not null default 'pending',
  attempts        integer     not null default 0,
  next_attempt_at timestamptz default now(),
  last_status     integer,
  last_error      text,
  created_at      timestamptz not null default now(),
  delivered_at    timestamptz,
  constraint webhook_deliveries_pkey primary key (tenant_id, id),
  constraint webhook_deliveries_webhook_fkey foreign key (tenant_id, webhook_id) references atl.webhooks (tenant_id, id),
  constraint webhook_deliveries_event check (
    event in ('approval.created', 'approval.approved', 'approval.rejected', 'approval.expired')),
  constraint webhook_deliveries_status check (status in ('pending', 'delivered', 'failed')),
  constraint webhook_deliveries_pending_due check ((status = 'pending') = (next_attempt_at is not null)),
  constraint webhook_deliveries_delivered_at check ((status = 'delivered') = (delivered_at is not null)),
  constraint webhook_deliveries_attempts_nonnegative check (attempts >= 0),
  constraint webhook_deliveries_last_error_length check (coalesce(char_length(last_error), 0) <= 2000)
);
comment on table atl.webhook_deliveries is 'The outbox: one row per event and webhook, written by the approval trigger in the event''s own transaction.';
comment on column atl.webhook_deliveries.attempts is 'Claims so far; a claim whose outcome was never recorded (a crash) counts too.';
comment on column atl.webhook_deliveries.next_attempt_at is 'When the worker may claim it next; a claim pushes it forward by a lease, so a crash mid-delivery is retried.';
create index webhook_deliveries_tenant_webhook_created_idx
  on atl.webhook_deliveries (tenant_id, webhook_id, created_at desc, id desc);
-- The worker looks across tenants for pending deliveries that are due.
create index webhook_deliveries_pending_due_idx on atl.webhook_deliveries (next_attempt_at) where status = 'pending';

create table atl.webhook_attempts (
  tenant_id   text        not null,
  delivery_id uuid        not null,
  attempt     integer     not null,
  http_status integer,
  error       text,
  latency_ms  integer     not null default 0,
  created_at  timestamptz not null default now(),
  constraint webhook_attempts_pkey primary key (tenant_id, delivery_id, attempt),
  constraint webhook_attempts_delivery_fkey foreign key (tenant_id, delivery_id) references atl.webhook_deliveries (tenant_id, id),
  constraint webhook_attempts_attempt_positive check (attempt >= 1),
  constraint webhook_attempts_http_status_range check (http_status is null or http_status between 100 and 599),
  constraint webhook_attempts_latency_nonnegative check (latency_ms >= 0),
  constraint webhook_attempts_error_length check (coalesce(char_length(error), 0) <= 2000)
);
comment on table atl.webhook_attempts is 'Append-only: every recorded attempt of a delivery, with the receiver''s status or the error.';

create trigger _100_append_only before update or delete on atl.webhook_attempts
  for each row execute function atl._refuse_change();
create trigger _100_append_only_truncate before truncate on atl.webhook_attempts
  for each statement execute function atl._refuse_change();

alter table atl.webhooks enable row level security;
alter table atl.webhooks force row level security;
create policy tenant_isolation on atl.webhooks
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
create policy webhook_worker_read on atl.webhooks for select to atl_webhooks using (true);

alter table atl.webhook_deliveries enable row level security;
alter table atl.webhook_deliveries force row level security;
create policy tenant_isolation on atl.webhook_deliveries
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
create policy webhook_worker on atl.webhook_deliveries to atl_webhooks using (true) with check (true);

alter table atl.webhook_attempts enable row level security;
alter table atl.webhook_attempts force row level security;
create policy tenant_isolation on atl.webhook_attempts
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
create policy webhook_worker on atl.webhook_attempts to atl_webhooks using (true) with check (true);

-- The payload carries the request with its decisions, read in the changing
-- tenant's own transaction; with no tenant set (the sweep) only this policy shows them.
create policy webhook_worker_read on atl.approval_decisions for select to atl_webhooks using (true);

revoke all on atl.webhooks, atl.webhook_deliveries, atl.webhook_attempts from public;
grant select, insert on atl.webhooks to {{ .app_role }};
grant update (deleted_at) on atl.webhooks to {{ .app_role }};
grant select on atl.webhook_deliveries, atl.webhook_attempts to {{ .app_role }};
grant select on atl.webhooks, atl.approval_decisions to atl_webhooks;
grant select, insert, update (status, attempts, next_attempt_at, last_status, last_error, delivered_at)
  on atl.webhook_deliveries to atl_webhooks;
grant select, insert on atl.webhook_attempts to atl_webhooks;
grant execute on function atl._approval_json(atl.approval_requests) to atl_webhooks;

-- A webhook as the API lists it: never its secret.
create function atl._webhook_json(w atl.webhooks) returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', w.id, 'url', w.url, 'format', w.format, 'created_by', w.created_by,
    'created_at', w.created_at, 'deleted_at', w.deleted_at)
$$;
comment on function atl._webhook_json(atl.webhooks) is 'Private: a webhook as JSON, without its secret.';

-- A secret: 'whsec_' and 64 base64url characters, 366 random bits.
create function atl._webhook_secret_new() returns text
language sql volatile
as $$
  select 'whsec_' || translate(encode(
    uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
    'base64'), '+/', '-_')
$$;
comment on function atl._webhook_secret_new() is
  'Private: a new webhook signing secret (whsec_ + 64 base64url characters, 366 random bits from pg_strong_random).';

-- Adds a webhook for the current tenant; its secret is in this answer only.
{{ template "func/webhook_create_012.sql" . }}

-- The current tenant's live webhooks, newest first, without secrets.
{{ template "func/webhook_list_012.sql" . }}

-- Deletes a webhook softly: no new deliveries, pending ones end as failed,
-- past ones stay listed. Deleting twice returns it unchanged.
{{ template "func/webhook_delete_012.sql" . }}

-- One webhook's deliveries with their attempts, newest first, keyset-paged.
create function atl.webhook_delivery_list(
  p_webhook_id uuid, p_before_created_at timestamptz default null, p_before_id uuid default null,
  p_limit integer default 50)
returns setof jsonb
language plpgsql stable
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000' using errcode = 'AT400', hint = 'invalid_limit';
  end if;
  if not exists (select 1 from atl.webhooks w where w.tenant_id = atl.current_tenant() and w.id = p_webhook_id) then
    raise exception 'webhook not found' using errcode = 'AT404', hint = 'webhook_not_found';
  end if;
  return query
  select jsonb_build_object('id', d.id, 'webhook_id', d.webhook_id, 'event', d.event, 'status', d.status,
    'attempts', d.attempts, 'next_attempt_at', d.next_attempt_at, 'last_status', d.last_status,
    'last_error', d.last_error, 'created_at', d.created_at, 'delivered_at', d.delivered_at, 'payload', d.payload,
    'attempt_log', coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'http_status', a.http_status,
                               'error', a.error, 'latency_ms', a.latency_ms, 'created_at', a.created_at)
                             order by a.attempt)
                             from atl.webhook_attempts a
                             where a.tenant_id = d.tenant_id and a.delivery_id = d.id), '[]'::jsonb))
  from atl.webhook_deliveries d
  where d.tenant_id = atl.current_tenant() and d.webhook_id = p_webhook_id
    and (p_before_created_at is null
         or (d.created_at, d.id) < (p_before_created_at, coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)))
  order by d.created_at desc, d.id desc
  limit p_limit;
end $$;
comment on function atl.webhook_delivery_list(uuid, timestamptz, uuid, integer) is
  'A webhook''s deliveries (status, attempts, last error, payload, attempt_log), newest first; keyset cursor (created_at, id); AT404 webhook_not_found.';

-- The outbox trigger: one delivery per live webhook of the request's tenant,
-- in the transaction that created or moved the request. SECURITY DEFINER so
-- it works whoever changes the row (atl_app, atl_sweeper, a DBA).
create function atl._webhook_enqueue() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event text;
  v_body jsonb;
begin
  if tg_op = 'INSERT' then
    v_event := 'approval.created';
  elsif new.status in ('APPROVED', 'REJECTED', 'EXPIRED') then
    v_event := 'approval.' || lower(new.status);
  else
    return null;
  end if;
  v_body := jsonb_build_object('event', v_event, 'occurred_at', clock_timestamp(), 'tenant_id', new.tenant_id,
                               'approval', atl._approval_json(new));
  insert into atl.webhook_deliveries (tenant_id, id, webhook_id, event, payload)
  select new.tenant_id, d.id, d.webhook_id, v_event,
         v_body || jsonb_build_object('delivery_id', d.id, 'webhook_id', d.webhook_id)
  from (select gen_random_uuid() as id, w.id as webhook_id from atl.webhooks w
        where w.tenant_id = new.tenant_id and w.deleted_at is null) d;
  if found then
    perform pg_notify('atl_webhook', '');
  end if;
  return null;
end $$;
comment on function atl._webhook_enqueue() is
  'Private trigger (SECURITY DEFINER, atl_webhooks): writes the outbox rows of an approval request''s creation or status change and wakes the worker on channel atl_webhook at commit.';

create trigger _800_webhook_created after insert on atl.approval_requests
  for each row execute function atl._webhook_enqueue();
create trigger _800_webhook_status after update of status on atl.approval_requests
  for each row when (old.status is distinct from new.status) execute function atl._webhook_enqueue();

-- Refuses the worker's functions inside a tenant transaction, so no tenant's
-- request can read other tenants' secrets through them.
create function atl._webhook_worker_only() returns void
language plpgsql stable
as $$
begin
  if atl.current_tenant() is not null then
    raise exception 'the webhook worker''s functions run with no tenant set'
      using errcode = '42501', hint = 'forbidden';
  end if;
end $$;
comment on function atl._webhook_worker_only() is 'Private: raises 42501 when a tenant is set; the worker''s functions span tenants.';

-- Claims up to p_limit due deliveries of every tenant for one worker: each
-- claim counts as an attempt and pushes next_attempt_at forward by p_lease,
-- so a worker that dies mid-delivery leaves it to be retried after the lease.
-- SKIP LOCKED lets several workers claim at once. Deliveries of deleted
-- webhooks, and ones already claimed p_max_attempts times, end as failed.
create function atl.webhook_delivery_claim(p_limit integer, p_lease interval, p_max_attempts integer)
returns table (delivery_id uuid, tenant_id text, webhook_id uuid, url text, format text, secret text,
               event text, payload jsonb, attempt integer)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform atl._webhook_worker_only();
  return query
  with due as (
    select d.tenant_id as t, d.id as i, w.deleted_at is not null as gone, d.attempts >= p_max_attempts as spent
    from atl.webhook_deliveries d
    join atl.webhooks w on w.tenant_id = d.tenant_id and w.id = d.webhook_id
    where d.status = 'pending' and d.next_attempt_at <= clock_timestamp()
    order by d.next_attempt_at, d.id
    limit p_limit
    for update of d skip locked),
  moved as (
    update atl.webhook_deliveries d
    set attempts = d.attempts + case when due.gone or due.spent then 0 else 1 end,
        status = case when due.gone or due.spent then 'failed' else 'pending' end,
        next_attempt_at = case when due.gone or due.spent then null else clock_timestamp() + p_lease end,
        last_error = case when due.gone then 'the webhook was deleted'
                          when due.spent then coalesce(d.last_error, 'no outcome was recorded for the last attempt')
                          else d.last_error end
    from due
    where d.tenant_id = due.t and d.id = due.i
    returning d.tenant_id as t, d.id as i, d.webhook_id as wid, d.event as ev, d.payload as body,
              d.attempts as n, due.gone or due.spent as ended)
  select m.i, m.t, m.wid, w.url, w.format, w.secret, m.ev, m.body, m.n
  from moved m join atl.webhooks w on w.tenant_id = m.t and w.id = m.wid
  where not m.ended
  order by m.i;
end $$;
comment on function atl.webhook_delivery_claim(integer, interval, integer) is
  'SECURITY DEFINER (atl_webhooks), worker only (no tenant set): claims up to n due deliveries of every tenant (SKIP LOCKED), counting the attempt and leasing them; returns what to send.';

-- Records one attempt's outcome: a 2xx marks the delivery delivered;
-- anything else schedules the next attempt after
-- min(p_backoff * 2^(attempt-1), p_max_backoff), jittered to 50-100%, or
-- fails it after p_max_attempts. A record from a claim that a later claim
-- overtook (an expired lease) is kept as an attempt but moves nothing.
create function atl.webhook_delivery_record(
  p_tenant_id text, p_delivery_id uuid, p_attempt integer, p_http_status integer, p_error text,
  p_latency_ms integer, p_max_attempts integer, p_backoff interval, p_max_backoff interval default '1 hour')
returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ok boolean := coalesce(p_http_status between 200 and 299, false);
  v_error text := case when v_ok then null else left(coalesce(p_error, 'the receiver answered ' || p_http_status), 2000) end;
  v_delay interval := least(p_backoff * power(2, least(greatest(p_attempt, 1) - 1, 30)), p_max_backoff);
  v_status text;
begin
  perform atl._webhook_worker_only();
  insert into atl.webhook_attempts (tenant_id, delivery_id, attempt, http_status, error, latency_ms)
  values (p_tenant_id, p_delivery_id, p_attempt, p_http_status, v_error, greatest(coalesce(p_latency_ms, 0), 0))
  on conflict do nothing;
  if v_ok then
    update atl.webhook_deliveries d
    set status = 'delivered', delivered_at = clock_timestamp(), next_attempt_at = null,
        last_status = p_http_status, last_error = null
    where d.tenant_id = p_tenant_id and d.id = p_delivery_id and d.status = 'pending';
  else
    update atl.webhook_deliveries d
    set last_status = p_http_status, last_error = v_error,
        status = case when d.attempts >= p_max_attempts then 'failed' else 'pending' end,
        next_attempt_at = case when d.attempts >= p_max_attempts then null
                               else clock_timestamp() + v_delay * (0.5 + random() * 0.5) end
    where d.tenant_id = p_tenant_id and d.id = p_delivery_id and d.status = 'pending' and d.attempts = p_attempt;
  end if;
  select d.status into v_status from atl.webhook_deliveries d where d.tenant_id = p_tenant_id and d.id = p_delivery_id;
  return v_status;
end $$;
comment on function atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval) is
  'SECURITY DEFINER (atl_webhooks), worker only: records an attempt; 2xx delivers, else retries after min(backoff*2^(attempt-1), max) jittered, failing after max attempts. Returns the delivery''s status.';

-- When the worker should look again: how long until the earliest pending
-- delivery of any tenant is due, measured on the database's clock (the one
-- next_attempt_at is set by), so a skewed service clock cannot make it spin.
create function atl.webhook_delivery_next_due() returns interval
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform atl._webhook_worker_only();
  return (select greatest(min(d.next_attempt_at) - clock_timestamp(), interval '0')
          from atl.webhook_deliveries d where d.status = 'pending');
end $$;
comment on function atl.webhook_delivery_next_due() is
  'SECURITY DEFINER (atl_webhooks), worker only: how long until the earliest pending delivery of any tenant is due (0 when one is due now), or NULL when none is pending.';

-- New owners need CREATE on the schema at the moment of the change only (see 004).
grant create on schema atl to atl_webhooks;
alter function atl._webhook_enqueue() owner to atl_webhooks;
alter function atl.webhook_delivery_claim(integer, interval, integer) owner to atl_webhooks;
alter function atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval) owner to atl_webhooks;
alter function atl.webhook_delivery_next_due() owner to atl_webhooks;
revoke create on schema atl from atl_webhooks;

revoke all on function atl._webhook_json(atl.webhooks), atl._webhook_secret_new(), atl.webhook_create(text, text, text),
  atl.webhook_list(), atl.webhook_delete(uuid), atl.webhook_delivery_list(uuid, timestamptz, uuid, integer),
  atl._webhook_enqueue(), atl._webhook_worker_only(), atl.webhook_delivery_claim(integer, interval, integer),
  atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval),
  atl.webhook_delivery_next_due() from public;
grant execute on function atl._webhook_json(atl.webhooks), atl._webhook_secret_new(), atl.webhook_create(text, text, text),
  atl.webhook_list(), atl.webhook_delete(uuid), atl.webhook_delivery_list(uuid, timestamptz, uuid, integer),
  atl._webhook_worker_only(), atl.webhook_delivery_claim(integer, interval, integer),
  atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval),
  atl.webhook_delivery_next_due()
  to {{ .app_role }};
grant execute on function atl._webhook_worker_only() to atl_webhooks;

---- create above / drop below ----

drop trigger _800_webhook_status on atl.approval_requests;
drop trigger _800_webhook_created on atl.approval_requests;
drop function atl.webhook_delivery_next_due();
drop function atl.webhook_delivery_record(text, uuid, integer, integer, text, integer, integer, interval, interval);
drop function atl.webhook_delivery_claim(integer, interval, integer);
drop function atl._webhook_worker_only();
drop function atl._webhook_enqueue();
drop function atl.webhook_delivery_list(uuid, timestamptz, uuid, integer);
drop function atl.webhook_delete(uuid);
drop function atl.webhook_list();
drop function atl.webhook_create(text, text, text);
drop function atl._webhook_secret_new();
drop function atl._webhook_json(atl.webhooks);
drop policy webhook_worker_read on atl.approval_decisions;
drop table atl.webhook_attempts;
drop table atl.webhook_deliveries;
drop table atl.webhooks;
revoke execute on function atl._approval_json(atl.approval_requests) from atl_webhooks;
revoke select on atl.approval_decisions from atl_webhooks;
revoke execute on function atl.current_tenant(), atl._require_tenant() from atl_webhooks;
revoke usage on schema atl from atl_webhooks;
revoke atl_webhooks from current_user;
-- The role is shared by every database of the cluster; keep it while another database uses it.
do $$
begin
  drop role atl_webhooks;
exception when dependent_objects_still_exist or undefined_object then null;
end $$;
