create function atl.audit_verify()
returns table (ok boolean, checked bigint, head_seq bigint, first_broken_seq bigint, reason text)
language plpgsql stable
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
  return query select true, v_expect - 1, coalesce(v_head.seq, 0), null::bigint, null::text;
end $$;
comment on function atl.audit_verify() is
  'Recomputes the current tenant''s hash chain over audit_logs and agent_action_events; returns ok, rows checked, the head seq, and the first broken seq with why.';
