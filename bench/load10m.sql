-- bench/load10m.sql: fills a freshly migrated ATL database with a synthetic
-- trail for read benchmarks. Run by bench/load10m.sh as a superuser, with psql
-- variables rows, events, approvals, tenants, period (rows, events and
-- approvals are multiples of period), days, and step: prepare, then audit
-- (rows lo..hi-1; two sessions share the rows, one per core) and side (events
-- and approvals) at the same time, then finish.
--
-- Triggers are off for the load (session_replication_role = replica): the
-- per-tenant hash chain would serialise 10 million inserts. The chain columns
-- are filled with gap-free seq values and filler hashes, so atl.audit_verify()
-- is NOT meaningful on this data. Foreign keys are off too; the rows satisfy
-- them by construction, and every CHECK constraint still applies.
--
-- Tenants are skewed like real ones (Zipf, s = 1): with 1,000 tenants and 10M
-- rows the largest tenant (t0000) holds about 1.3M rows, the smallest 1,000.
-- A shuffled pattern of `period` slots, each tenant holding its weight's worth,
-- repeats over time, so tenants interleave in the heap as live writes do and
-- each row's seq follows from its position without a sort.

\set ON_ERROR_STOP 1
\timing on
set session_replication_role = replica;
set synchronous_commit = off;
set maintenance_work_mem = '512MB';
set max_parallel_maintenance_workers = 2;
set work_mem = '64MB';

\if :{?step}
\else
  \echo 'set step to prepare, audit, side or finish'
  \quit
\endif
select :'step' = 'prepare' as is_prepare, :'step' = 'audit' as is_audit, :'step' = 'side' as is_side,
  :'step' = 'finish' as is_finish \gset

\if :is_prepare

\echo '--- tenants and their weights'
insert into atl.tenants (id, name, default_trust_level, created_at)
select format('t%s', lpad(t::text, 4, '0')), format('Load tenant %s', t), 'L3', now() - make_interval(days => :days + 1)
from generate_series(0, :tenants - 1) t;

create schema atl_load;
create table atl_load.w as
with h as (select sum(1.0 / k) h from generate_series(1, :tenants) k),
raw as (
  select t, greatest(1, floor(:period / (t + 1.0) / h.h))::int w from generate_series(0, :tenants - 1) t, h
)
select t, format('t%s', lpad(t::text, 4, '0')) tn,
  w + case when t = 0 then :period - (select sum(w) from raw)::int else 0 end w
from raw;
-- agents per tenant: 2 for the smallest, up to 50 for the largest
alter table atl_load.w add column agents int;
update atl_load.w set agents = least(50, 2 + w / 10);

create table atl_load.pat as
select pos, t, tn, w, agents, (row_number() over (partition by t order by pos) - 1)::int occ
from (
  select (row_number() over (order by random()) - 1)::int pos, w.t, w.tn, w.w, w.agents
  from atl_load.w w cross join lateral generate_series(1, w.w)
) s;
create unique index on atl_load.pat (pos);
analyze atl_load.pat;
select count(*) as slots, max(w) as largest_weight, min(w) as smallest_weight from atl_load.pat;

\echo '--- dropping the indexes of the loaded tables'
create table atl_load.saved as
select c.relname tbl, i.indexrelid::regclass::text idx, con.conname,
  case when con.conname is not null
    then format('alter table atl.%I add constraint %I %s', c.relname, con.conname, pg_get_constraintdef(con.oid))
    else pg_get_indexdef(i.indexrelid) end def
from pg_index i
join pg_class c on c.oid = i.indrelid
left join pg_constraint con on con.conindid = i.indexrelid and con.conrelid = c.oid
where c.relnamespace = 'atl'::regnamespace and c.relname in ('audit_logs', 'agent_action_events');
select tbl, count(*) indexes from atl_load.saved group by tbl order by tbl;
do $$
declare r record;
begin
  for r in select * from atl_load.saved loop
    if r.conname is not null then
      execute format('alter table atl.%I drop constraint %I', r.tbl, r.conname);
    else
      execute format('drop index %s', r.idx);
    end if;
  end loop;
end $$;
\endif

\if :is_side
\echo '--- approval requests'
insert into atl.approval_requests (tenant_id, id, domain, agent_id, tool_name, action_type, action_payload, trust_level,
  status, requested_by, trace_id, expires_at, auto_approve_eligible, required_approvals, approvals, decided_at, created_at)
select p.tn, md5('appr:' || p.tn || ':' || k)::uuid, 'default', a.agent, a.tool, 'COMMIT_' || upper(a.tool),
  jsonb_build_object('amount', (r * 1000)::int, 'currency', 'EUR'), a.level, a.status, a.agent,
  substr(md5(p.tn || ':appr:' || k), 1, 32), ts + interval '1 hour', false,
  case when a.level = 'L4' then 2 else 1 end,
  case a.status when 'APPROVED' then (case when a.level = 'L4' then 2 else 1 end) else 0 end,
  case when a.status in ('APPROVED', 'REJECTED') then ts + interval '5 minutes' end, ts
from generate_series(0, :approvals - 1) i
join atl_load.pat p on p.pos = i % :period
cross join lateral (select (i / :period) * p.w + p.occ k, random() r,
  now() - make_interval(days => :days) + make_interval(secs => i::float8 * :days * 86400 / :approvals) ts) x
cross join lateral (select 'agent-' || floor(p.agents * random() ^ 2)::int agent,
  (array['payments', 'crm_update', 'deploy', 'email_send'])[1 + floor(random() * 4)::int] tool,
  case when random() < 0.8 then 'L3' else 'L4' end level,
  case when r < 0.10 then 'PENDING' when r < 0.70 then 'APPROVED' when r < 0.85 then 'REJECTED' else 'EXPIRED' end status) a;

\endif

\if :is_audit
\echo '--- audit logs' :lo .. :hi
insert into atl.audit_logs (tenant_id, id, trace_id, agent_id, route, mode, status, http_status, latency_ms, user_id,
  error, created_at, seq, prev_hash, row_hash)
select p.tn, gen_random_uuid(), substr(md5(p.tn || ':' || (x.sq / 4)), 1, 32), 'agent-' || floor(p.agents * x.ra ^ 2)::int,
  case when x.rs < 0.27 then 'POST /api/v1/events' else 'POST /api/v1/agents/:agent_id/execute' end,
  case when x.rm < 0.1 then 'live' else 'dry_run' end, s.status,
  case s.status when 'ok' then (case when x.rs < 0.27 then 201 else 200 end) when 'pending_approval' then 202
    when 'denied' then 403 else 502 end,
  floor(-ln(1 - x.rm) * 8)::int, case when x.ra < 0.05 then 'user-' || floor(x.rm * 100)::int end,
  case when s.status = 'error' then 'upstream tool answered 502' end, x.ts, x.sq,
  sha256(int8send(x.sq - 1)), sha256(int8send(x.sq))
from generate_series(:lo, :hi - 1) i
join atl_load.pat p on p.pos = i % :period
cross join lateral (select (i / :period)::bigint * p.w + p.occ + 1 sq, random() ra, random() rs, random() rm,
  now() - make_interval(days => :days) + make_interval(secs => i::float8 * :days * 86400 / :rows) ts) x
cross join lateral (select case when x.rs < 0.90 then 'ok' when x.rs < 0.94 then 'pending_approval'
  when x.rs < 0.98 then 'denied' else 'error' end status) s;

\endif

\if :is_side
\echo '--- agent action events'
insert into atl.agent_action_events (tenant_id, id, domain, workflow_name, agent, trust_level, stage, tool_name, tool_args,
  tool_result, status, approval_request_id, sandbox_id, trace_id, mode, latency_ms, error, created_at, seq, prev_hash, row_hash)
select p.tn, gen_random_uuid(), 'default', case when x.r < 0.5 then 'checkout' end, 'agent-' || floor(p.agents * x.ra ^ 2)::int,
  l.level, (array['plan', 'execute', 'review', 'commit'])[1 + floor(x.rs * 4)::int],
  (array['search', 'crm_read', 'payments', 'crm_update', 'deploy', 'email_send'])[1 + floor(x.r * 6)::int],
  '{"q":"x"}'::jsonb, case when x.rs < 0.9 then '{"ok":true}'::jsonb end,
  case when x.rs < 0.85 then 'succeeded' when x.rs < 0.95 then 'failed' else 'pending' end,
  case when l.level in ('L3', 'L4') then md5('appr:' || p.tn || ':' || (x.sq % ((:approvals / :period) * p.w)))::uuid end,
  case when l.level in ('L2', 'L3', 'L4') then 'sbx-' || p.tn end,
  substr(md5(p.tn || ':ev:' || (x.sq / 4)), 1, 32), 'dry_run', floor(-ln(1 - x.r) * 8)::int,
  case when x.rs >= 0.85 and x.rs < 0.95 then 'tool failed' end, x.ts,
  -- events share the tenant's seq space with audit rows; an offset keeps the filler values apart
  1000000000 + x.sq, sha256(int8send(x.sq - 1)), sha256(int8send(x.sq))
from generate_series(0, :events - 1) i
join atl_load.pat p on p.pos = i % :period
cross join lateral (select (i / :period)::bigint * p.w + p.occ sq, random() r, random() ra, random() rs,
  now() - make_interval(days => :days) + make_interval(secs => i::float8 * :days * 86400 / :events) ts) x
cross join lateral (select case when x.ra < 0.5 then 'L0' when x.ra < 0.7 then 'L1' when x.ra < 0.85 then 'L2'
  when x.ra < 0.97 then 'L3' else 'L4' end level) l;

\endif

\if :is_finish
\echo '--- chain heads at each tenant''s last seq'
insert into atl.audit_chain_heads (tenant_id, seq, hash, updated_at)
select tn, (:rows / :period)::bigint * w, sha256(int8send((:rows / :period)::bigint * w)), now() from atl_load.w;

\echo '--- rebuilding the indexes'
select format('%s;', def) from atl_load.saved order by tbl, idx \gexec
drop schema atl_load cascade;

-- sets hint bits and the visibility map, as autovacuum would
\echo '--- vacuum analyze'
vacuum (analyze) atl.tenants, atl.audit_logs, atl.agent_action_events, atl.approval_requests, atl.audit_chain_heads;

select relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) total_size
from pg_stat_user_tables where schemaname = 'atl' and relname in ('audit_logs', 'agent_action_events', 'approval_requests')
order by relname;
\endif
