create function atl.api_key_list()
returns table (id uuid, role text, subject text, key_prefix text, created_at timestamptz, revoked_at timestamptz)
language sql stable
as $$
  select k.id, k.role, k.subject, k.key_prefix, k.created_at, k.revoked_at
  from atl.api_keys k
  where k.tenant_id = atl.current_tenant()
  order by k.created_at desc, k.id desc
$$;
comment on function atl.api_key_list() is 'Lists the current tenant''s API keys (no secrets), newest first.';
