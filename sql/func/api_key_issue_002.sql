create function atl.api_key_issue(p_role text, p_subject text)
returns table (id uuid, role text, subject text, key_prefix text, created_at timestamptz, api_key text)
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_key text := atl._api_key_new();
begin
  return query
  insert into atl.api_keys as k (tenant_id, role, subject, key_hash, key_prefix)
  values (v_tenant, p_role, p_subject, atl._api_key_hash(v_key), left(v_key, 12))
  returning k.id, k.role, k.subject, k.key_prefix, k.created_at, v_key;
end $$;
comment on function atl.api_key_issue(text, text) is
  'Issues an API key (role agent|approver|admin, subject = who acts with it) for the current tenant; returns the key once.';
