-- Tamper-evident trail: every audit_logs and agent_action_events row joins a
-- per-tenant hash chain (gap-free seq, prev_hash, row_hash = SHA-256 of
-- prev_hash and the row's canonical encoding). The chain head row is locked
-- FOR UPDATE by each insert, so concurrent inserts queue instead of forking.

create table atl.audit_chain_heads (
  tenant_id text        not null,
  seq       bigint      not null default 0,
  hash      bytea       not null default '\x0000000000000000000000000000000000000000000000000000000000000000',
  updated_at timestamptz not null default now(),
  constraint audit_chain_heads_pkey primary key (tenant_id),
  constraint audit_chain_heads_tenant_fkey foreign key (tenant_id) references atl.tenants (id)
);
comment on table atl.audit_chain_heads is 'Latest seq and hash of each tenant''s audit chain; pin it outside ATL to prove later that nothing was rewritten.';
alter table atl.audit_chain_heads enable row level security;
alter table atl.audit_chain_heads force row level security;
create policy tenant_isolation on atl.audit_chain_heads
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
grant select, insert on atl.audit_chain_heads to {{ .app_role }};
grant update (seq, hash, updated_at) on atl.audit_chain_heads to {{ .app_role }};

alter table atl.audit_logs add column seq bigint, add column prev_hash bytea, add column row_hash bytea;
alter table atl.agent_action_events add column seq bigint, add column prev_hash bytea, add column row_hash bytea;
comment on column atl.audit_logs.seq is 'Position in the tenant''s audit chain, shared with agent_action_events; gap-free.';
comment on column atl.agent_action_events.seq is 'Position in the tenant''s audit chain, shared with audit_logs; gap-free.';
create unique index audit_logs_tenant_seq_idx on atl.audit_logs (tenant_id, seq);
create unique index agent_action_events_tenant_seq_idx on atl.agent_action_events (tenant_id, seq);

-- The canonical encoding of a chained row: its JSON without the chain's own
-- hashes, the table name, and created_at as epoch microseconds (jsonb's text
-- form of a timestamptz depends on the session's TimeZone).
{{ template "func/_chain_row_hash_007.sql" . }}

create function atl._chain_append() returns trigger
language plpgsql
as $$
declare
  v_head atl.audit_chain_heads;
begin
  insert into atl.audit_chain_heads (tenant_id) values (new.tenant_id) on conflict (tenant_id) do nothing;
  select * into v_head from atl.audit_chain_heads h where h.tenant_id = new.tenant_id for update;
  new.seq := v_head.seq + 1;
  new.prev_hash := v_head.hash;
  new.row_hash := atl._chain_row_hash(tg_table_name, to_jsonb(new), v_head.hash);
  update atl.audit_chain_heads h set seq = new.seq, hash = new.row_hash, updated_at = now()
  where h.tenant_id = new.tenant_id;
  return new;
end $$;
comment on function atl._chain_append() is 'Private trigger: links a new audit or event row into its tenant''s hash chain under the chain head''s row lock.';
revoke all on function atl._chain_row_hash(text, jsonb, bytea), atl._chain_append() from public;
grant execute on function atl._chain_row_hash(text, jsonb, bytea) to {{ .app_role }};

create trigger _200_chain before insert on atl.audit_logs
  for each row execute function atl._chain_append();
create trigger _200_chain before insert on atl.agent_action_events
  for each row execute function atl._chain_append();

-- Recomputes the current tenant's chain: the first seq whose row is missing,
-- altered, inserted out of chain or not linked to its predecessor; NULL when
-- the chain is intact up to the head.
{{ template "func/audit_verify_007.sql" . }}

create function atl.audit_head() returns table (seq bigint, hash text, updated_at timestamptz)
language sql stable
as $$
  select coalesce(h.seq, 0), encode(coalesce(h.hash, '\x0000000000000000000000000000000000000000000000000000000000000000'), 'hex'), h.updated_at
  from (select 1) one left join atl.audit_chain_heads h on h.tenant_id = atl.current_tenant()
$$;
comment on function atl.audit_head() is 'The current tenant''s latest chain seq and hash (hex), for pinning outside ATL.';

revoke all on function atl.audit_verify(), atl.audit_head() from public;
grant execute on function atl.audit_verify(), atl.audit_head() to {{ .app_role }};

---- create above / drop below ----

drop function atl.audit_head();
drop function atl.audit_verify();
drop trigger _200_chain on atl.agent_action_events;
drop trigger _200_chain on atl.audit_logs;
drop function atl._chain_append();
drop function atl._chain_row_hash(text, jsonb, bytea);
drop index atl.agent_action_events_tenant_seq_idx;
drop index atl.audit_logs_tenant_seq_idx;
alter table atl.agent_action_events drop column seq, drop column prev_hash, drop column row_hash;
alter table atl.audit_logs drop column seq, drop column prev_hash, drop column row_hash;
drop table atl.audit_chain_heads;
