create function atl.tenant_create(p_id text, p_name text, p_admin_subject text default 'admin')
returns table (id text, name text, default_trust_level text, created_at timestamptz,
               api_key_id uuid, api_key text)
language plpgsql volatile
as $$
declare
  v_tenant atl.tenants;
  v_key record;
begin
  if atl.current_tenant() is not null and atl.current_tenant() is distinct from p_id then
    raise exception 'this transaction belongs to another tenant' using errcode = 'AT403', hint = 'tenant_mismatch';
  end if;
  perform set_config('app.tenant_id', p_id, true);
  insert into atl.tenants as t (id, name) values (p_id, p_name) returning * into v_tenant;
  select * into v_key from atl.api_key_issue('admin', p_admin_subject);
  return query select v_tenant.id, v_tenant.name, v_tenant.default_trust_level, v_tenant.created_at,
                      v_key.id, v_key.api_key;
end $$;
comment on function atl.tenant_create(text, text, text) is
  'Creates a tenant (id ^[a-z0-9][a-z0-9_-]{1,62}$) and its first admin key, returned once; sets app.tenant_id for the transaction.';
