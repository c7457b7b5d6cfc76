-- The chain head is moved once per statement instead of once per row.
--
-- Migration 007 updated atl.audit_chain_heads for every chained row. Inside
-- one transaction every update of the same row adds a row version that later
-- lookups walk, so a transaction writing n rows of a tenant cost O(n^2): a
-- batch of 1,000 events took about 200 ms, and group commit puts many
-- requests in one transaction. Now the row trigger keeps the tenant's latest
-- seq and hash in a transaction-local setting after locking the head once,
-- and a statement trigger writes the head at the end of each statement,
-- checking that the statement's rows continue the head exactly (so a stale
-- or forged setting cannot fork the chain: the statement fails instead).

{{ template "func/_chain_append_010.sql" . }}

{{ template "func/_chain_advance_010.sql" . }}
revoke all on function atl._chain_advance() from public;

create trigger _900_chain_head after insert on atl.audit_logs
  referencing new table as new_rows for each statement execute function atl._chain_advance();
create trigger _900_chain_head after insert on atl.agent_action_events
  referencing new table as new_rows for each statement execute function atl._chain_advance();

---- create above / drop below ----

drop trigger _900_chain_head on atl.agent_action_events;
drop trigger _900_chain_head on atl.audit_logs;
drop function atl._chain_advance();

create or replace function atl._chain_append() returns trigger
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
