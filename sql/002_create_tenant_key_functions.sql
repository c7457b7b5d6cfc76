-- Tenants and API keys: creation, issue, list, revoke, and authentication.

-- A key: 'atl_' and 64 base64url characters from 48 bytes of three
-- gen_random_uuid() (pg_strong_random), 366 random bits, no extension needed.
create function atl._api_key_new() returns text
language sql volatile
as $$
  select 'atl_' || translate(encode(
    uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
    'base64'), '+/', '-_')
$$;
comment on function atl._api_key_new() is
  'Private: a new random API key (atl_ + 64 base64url characters, 366 random bits from pg_strong_random).';

-- SHA-256 of a key; the only form in which a key is stored.
create function atl._api_key_hash(p_api_key text) returns bytea
language sql immutable strict parallel safe
as $$ select sha256(convert_to(p_api_key, 'UTF8')) $$;
comment on function atl._api_key_hash(text) is 'Private: SHA-256 of an API key, as stored in atl.api_keys.key_hash.';

-- Issues a key for the current tenant; the key is returned once and never again.
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

-- Lists the current tenant's keys, newest first, without secrets.
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

-- Revokes a key of the current tenant. Revoking twice returns the key unchanged;
-- the last active admin key cannot be revoked, or the tenant would be locked out.
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

-- Finds the key's tenant, role and subject. It runs before any tenant is known,
-- so it is the one function that reads keys across tenants (owned by atl_keyauth).
create function atl.api_key_authenticate(p_api_key text)
returns table (tenant_id text, key_id uuid, role text, subject text)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select k.tenant_id, k.id, k.role, k.subject
  from atl.api_keys k
  where k.key_hash = atl._api_key_hash(p_api_key) and k.revoked_at is null
$$;
-- A new owner needs CREATE on the schema at the moment of the change; granted
-- for that moment only, so a migrating role that is no superuser (a managed
-- database's owner) can do it too.
grant create on schema atl to atl_keyauth;
alter function atl.api_key_authenticate(text) owner to atl_keyauth;
revoke create on schema atl from atl_keyauth;
comment on function atl.api_key_authenticate(text) is
  'SECURITY DEFINER (atl_keyauth): the tenant, key id, role and subject of an active API key; no row when unknown or revoked.';

-- Creates a tenant and its first admin key. It sets app.tenant_id to the new
-- tenant for the rest of the transaction, so it refuses a different tenant already set.
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

-- The current tenant's row.
create function atl.tenant_get()
returns setof atl.tenants
language sql stable
as $$ select * from atl.tenants t where t.id = atl.current_tenant() $$;
comment on function atl.tenant_get() is 'The current tenant''s row (id, name, default level, allowed domains).';

revoke all on all functions in schema atl from public;
grant execute on function atl._api_key_new(), atl._api_key_hash(text), atl.api_key_issue(text, text),
  atl.api_key_list(), atl.api_key_revoke(uuid), atl.api_key_authenticate(text),
  atl.tenant_create(text, text, text), atl.tenant_get()
  to {{ .app_role }};
grant execute on function atl._api_key_hash(text), atl.current_tenant() to atl_keyauth;

---- create above / drop below ----

drop function atl.tenant_get();
drop function atl.tenant_create(text, text, text);
drop function atl.api_key_authenticate(text);
drop function atl.api_key_revoke(uuid);
drop function atl.api_key_list();
drop function atl.api_key_issue(text, text);
drop function atl._api_key_hash(text);
drop function atl._api_key_new();
