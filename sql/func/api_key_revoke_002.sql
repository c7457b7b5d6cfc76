create function atl.api_key_revoke(p_id uuid)
returns table (id uuid, role text, subject text, key_prefix text, created_at timestamptz, revoked_at timestamptz)
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_key atl.api_keys;
begin
  select * into v_key from atl.api_keys k where k.tenant_id = v_tenant and k.id = p_id for update;
  if not found then
    raise exception 'api key not found' using errcode = 'AT404', hint = 'key_not_found';
  end if;
  if v_key.revoked_at is null then
    if v_key.role = 'admin' and not exists (
      select 1 from atl.api_keys k
      where k.tenant_id = v_tenant and k.role = 'admin' and k.revoked_at is null and k.id <> p_id) then
      raise exception 'the last active admin key cannot be revoked; issue another admin key first'
        using errcode = 'AT409', hint = 'last_admin_key';
    end if;
    update atl.api_keys k set revoked_at = now()
    where k.tenant_id = v_tenant and k.id = p_id
    returning * into v_key;
  end if;
  return query select v_key.id, v_key.role, v_key.subject, v_key.key_prefix, v_key.created_at, v_key.revoked_at;
end $$;
comment on function atl.api_key_revoke(uuid) is
  'Revokes an API key of the current tenant (idempotent); refuses (AT409 last_admin_key) to revoke the last active admin key.';
