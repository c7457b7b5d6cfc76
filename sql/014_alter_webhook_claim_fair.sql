-- The delivery worker sleeps while nothing is pending: next_due answers NULL
-- then (012 answered 0, since greatest() ignores a NULL, so an idle worker
-- asked again every 5 ms).

-- When the worker should look again: how long until the earliest pending
-- delivery of any tenant is due, on the database's clock; NULL when none is pending.
create or replace function atl.webhook_delivery_next_due() returns interval
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform atl._webhook_worker_only();
  return (select greatest(n.at - clock_timestamp(), interval '0')
          from (select min(d.next_attempt_at) as at from atl.webhook_deliveries d where d.status = 'pending') n
          where n.at is not null);
end $$;
comment on function atl.webhook_delivery_next_due() is
  'SECURITY DEFINER (atl_webhooks), worker only: how long until the earliest pending delivery of any tenant is due (0 when one is due now), or NULL when none is pending.';

---- create above / drop below ----

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
