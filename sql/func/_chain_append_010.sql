create or replace function atl._chain_append() returns trigger
language plpgsql
as $$
declare
  v_key text := 'atl.chain_' || md5(new.tenant_id);
  v_cached text := current_setting(v_key, true);
  v_seq bigint;
  v_hash bytea;
begin
  if coalesce(v_cached, '') = '' then
    insert into atl.audit_chain_heads (tenant_id) values (new.tenant_id) on conflict (tenant_id) do nothing;
    select h.seq, h.hash into v_seq, v_hash from atl.audit_chain_heads h where h.tenant_id = new.tenant_id for update;
  else
    v_seq := split_part(v_cached, ':', 1)::bigint;
    v_hash := decode(split_part(v_cached, ':', 2), 'hex');
  end if;
  new.seq := v_seq + 1;
  new.prev_hash := v_hash;
  new.row_hash := atl._chain_row_hash(tg_table_name, to_jsonb(new), v_hash);
  perform set_config(v_key, new.seq || ':' || encode(new.row_hash, 'hex'), true);
  return new;
end $$;
comment on function atl._chain_append() is
  'Private trigger: links a new audit or event row into its tenant''s hash chain; the head is locked on the transaction''s first row and carried in a transaction-local setting.';
