create function atl.api_key_authenticate(p_api_key text)
returns table (tenant_id text, key_id uuid, role text, subject text)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select k.tenant_id, k.id, k.role, k.subject
  from atl.api_keys k
  where k.key_hash = atl._api_key_hash(p_api_key) and k.revoked_at is null
$$;
comment on function atl.api_key_authenticate(text) is
  'SECURITY DEFINER (atl_keyauth): the tenant, key id, role and subject of an active API key; no row when unknown or revoked.';
