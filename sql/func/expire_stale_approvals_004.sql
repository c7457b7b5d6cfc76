create function atl.expire_stale_approvals() returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl.current_tenant();
  v_count integer;
begin
  update atl.approval_requests r set status = 'EXPIRED', decided_at = clock_timestamp()
  where r.status = 'PENDING' and r.expires_at <= clock_timestamp()
    and (v_tenant is null or r.tenant_id = v_tenant);
  get diagnostics v_count = row_count;
  return v_count;
end $$;
comment on function atl.expire_stale_approvals() is
  'SECURITY DEFINER (atl_sweeper): expires PENDING approval requests past expires_at, for the current tenant or, with no tenant set, for all; returns how many.';
