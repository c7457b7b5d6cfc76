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
{{ template "func/api_key_issue_002.sql" . }}

-- Lists the current tenant's keys, newest first, without secrets.
{{ template "func/api_key_list_002.sql" . }}

-- Revokes a key of the current tenant. Revoking twice returns the key unchanged;
-- the last active admin key cannot be revoked, or the tenant would be locked out.
{{ template "func/api_key_revoke_002.sql" . }}

-- Finds the key's tenant, role and subject. It runs before any tenant is known,
-- so it is the one function that reads keys across tenants (owned by atl_keyauth).
{{ template "func/api_key_authenticate_002.sql" . }}
-- A new owner needs CREATE on the schema at the moment of the change; granted
-- for that moment only, so a migrating role that is no superuser (a managed
-- database's owner) can do it too.
grant create on schema atl to atl_keyauth;
alter function atl.api_key_authenticate(text) owner to atl_keyauth;
revoke create on schema atl from atl_keyauth;

-- Creates a tenant and its first admin key. It sets app.tenant_id to the new
-- tenant for the rest of the transaction, so it refuses a different tenant already set.
{{ template "func/tenant_create_002.sql" . }}

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
