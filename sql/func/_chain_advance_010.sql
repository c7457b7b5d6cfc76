create or replace function atl._chain_advance() returns trigger
language plpgsql
as $$
declare
  r record;
begin
  for r in
    select distinct on (n.tenant_id) n.tenant_id, n.seq as first_seq, n.prev_hash as first_prev,
           last_value(n.seq) over w as last_seq, last_value(n.row_hash) over w as last_hash
    from new_rows n
    window w as (partition by n.tenant_id order by n.seq rows between unbounded preceding and unbounded following)
    order by n.tenant_id, n.seq
  loop
    update atl.audit_chain_heads h set seq = r.last_seq, hash = r.last_hash, updated_at = now()
    where h.tenant_id = r.tenant_id and h.seq = r.first_seq - 1 and h.hash = r.first_prev;
    if not found then
      raise exception 'the audit chain of tenant % moved under this statement', r.tenant_id
        using errcode = '40001', hint = 'chain_conflict';
    end if;
  end loop;
  return null;
end $$;
comment on function atl._chain_advance() is
  'Private statement trigger: moves each tenant''s chain head to the statement''s last row, after checking its first row continues the head.';
