-- Fair delivery across tenants, and a worker that sleeps while nothing is
-- pending. A tenant whose receivers hang holds at most 4 places of a worker
-- (its deliveries in flight), so other tenants' deliveries go out at once;
-- and next_due answers NULL when nothing is pending (012 answered 0, since
-- greatest() ignores a NULL, so an idle worker asked again every 5 ms).

-- Each tenant's pending deliveries in due order: the claim takes a few per tenant.
create index webhook_deliveries_tenant_pending_idx
  on atl.webhook_deliveries (tenant_id, next_attempt_at) where status = 'pending';

-- Claims up to p_limit due deliveries for one worker, fairly: at most 4 of a
-- tenant in flight (claimed, with neither an outcome recorded nor the lease
-- ended: a claimed attempt has no attempt row yet), taken in turns (each
-- tenant's oldest, then each one's second, ...). Each claim counts as an
-- attempt and pushes next_attempt_at forward by p_lease, so a worker that
-- dies mid-delivery leaves it to be retried after the lease. SKIP LOCKED lets
-- several workers claim at once (two claiming the same tenant at the same
-- moment take disjoint rows, which may exceed the 4 for one lease). Deliveries
-- of deleted webhooks, and ones already claimed p_max_attempts times, end as failed.
create or replace function atl.webhook_delivery_claim(p_limit integer, p_lease interval, p_max_attempts integer)
returns table (delivery_id uuid, tenant_id text, webhook_id uuid, url text, format text, secret text,
               event text, payload jsonb, attempt integer)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  c_per_tenant constant integer := 4;
begin
  perform atl._webhook_worker_only();
  return query
  with room as (
    select t.t, c_per_tenant - (
             select count(*)::integer from atl.webhook_deliveries f
             where f.tenant_id = t.t and f.status = 'pending' and f.next_attempt_at > clock_timestamp()
               and f.attempts > 0
               and not exists (select 1 from atl.webhook_attempts a
                               where a.tenant_id = f.tenant_id and a.delivery_id = f.id and a.attempt = f.attempts)) as n
    from (select distinct d.tenant_id as t from atl.webhook_deliveries d
          where d.status = 'pending' and d.next_attempt_at <= clock_timestamp()) t),
  picked as (
    select c.t, c.i
    from room r cross join lateral (
      select d.tenant_id as t, d.id as i, d.next_attempt_at as at,
             row_number() over (order by d.next_attempt_at, d.id) as turn
      from atl.webhook_deliveries d
      where d.tenant_id = r.t and d.status = 'pending' and d.next_attempt_at <= clock_timestamp()
      order by d.next_attempt_at, d.id
      limit greatest(r.n, 0)) c
    order by c.turn, c.at, c.i
    limit p_limit),
  due as (
    select d.tenant_id as t, d.id as i, w.deleted_at is not null as gone, d.attempts >= p_max_attempts as spent
    from picked p
    join atl.webhook_deliveries d on d.tenant_id = p.t and d.id = p.i
    join atl.webhooks w on w.tenant_id = d.tenant_id and w.id = d.webhook_id
    where d.status = 'pending' and d.next_attempt_at <= clock_timestamp()
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
  'SECURITY DEFINER (atl_webhooks), worker only (no tenant set): claims up to n due deliveries (SKIP LOCKED), at most 4 of a tenant in flight, tenants in turn; counts the attempt, leases them and returns what to send.';

-- When the worker should look again, on the database's clock: 0 when a
-- delivery it may claim is due now, else until the earliest pending one
-- (a tenant with 4 in flight gets a place back when one is recorded, which
-- wakes the worker that recorded it, or at the latest when a lease ends);
-- NULL when nothing is pending, so an idle worker sleeps.
create or replace function atl.webhook_delivery_next_due() returns interval
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  c_per_tenant constant integer := 4;
begin
  perform atl._webhook_worker_only();
  return (
    select greatest(n.at - clock_timestamp(), interval '0')
    from (select least(
            (select min(d.next_attempt_at) from atl.webhook_deliveries d
             where d.status = 'pending' and d.next_attempt_at > clock_timestamp()),
            (select min(t.at)
             from (select d.tenant_id as t, min(d.next_attempt_at) as at from atl.webhook_deliveries d
                   where d.status = 'pending' and d.next_attempt_at <= clock_timestamp()
                   group by d.tenant_id) t
             where (select count(*) from atl.webhook_deliveries f
                    where f.tenant_id = t.t and f.status = 'pending' and f.next_attempt_at > clock_timestamp()
                      and f.attempts > 0
                      and not exists (select 1 from atl.webhook_attempts a
                                      where a.tenant_id = f.tenant_id and a.delivery_id = f.id
                                        and a.attempt = f.attempts)) < c_per_tenant)) as at) n
    where n.at is not null);
end $$;
comment on function atl.webhook_delivery_next_due() is
  'SECURITY DEFINER (atl_webhooks), worker only: how long until a delivery the worker may claim is due (0: now; a tenant with 4 in flight waits), or NULL when none is pending.';

---- create above / drop below ----

drop index atl.webhook_deliveries_tenant_pending_idx;

create or replace function atl.webhook_delivery_claim(p_limit integer, p_lease interval, p_max_attempts integer)
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

create or replace function atl.webhook_delivery_next_due() returns interval
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
