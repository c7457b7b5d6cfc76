-- Console sessions, kept on the server: the browser's cookie holds only a
-- random session id (32 bytes); the table keeps its SHA-256, the key it was
-- started with and when it ends. Every console page looks the session up
-- through atl.console_session_authenticate, which joins the session's key, so
-- signing out, revoking the key and expiry each end the session at once, on
-- every replica.

create table atl.console_sessions (
  tenant_id    text        not null,
  id           uuid        not null default gen_random_uuid(),
  session_hash bytea       not null,
  key_id       uuid        not null,
  created_at   timestamptz not null default now(),
  expires_at   timestamptz not null,
  ended_at     timestamptz,
  constraint console_sessions_pkey primary key (tenant_id, id),
  constraint console_sessions_tenant_fkey foreign key (tenant_id) references atl.tenants (id),
  constraint console_sessions_key_fkey foreign key (tenant_id, key_id) references atl.api_keys (tenant_id, id),
  constraint console_sessions_hash_key unique (tenant_id, session_hash),
  constraint console_sessions_hash_length check (octet_length(session_hash) = 32),
  constraint console_sessions_expiry_after_start check (expires_at > created_at)
);
comment on table atl.console_sessions is
  'Signed-in console sessions. Only the SHA-256 of a session id is kept; a session is live while unended, unexpired and its key active.';
comment on column atl.console_sessions.key_id is 'The approver or admin key the session was started with; revoking it ends the session.';
comment on column atl.console_sessions.ended_at is 'Set by sign-out; a session never restarts.';
-- The lookup finds a session by hash before the tenant is known.
create index console_sessions_hash_idx on atl.console_sessions (session_hash);

alter table atl.console_sessions enable row level security;
alter table atl.console_sessions force row level security;
create policy tenant_isolation on atl.console_sessions
  using (tenant_id = atl.current_tenant()) with check (tenant_id = atl.current_tenant());
-- atl_keyauth already turns key hashes into principals across tenants; session
-- hashes are the same kind of credential, so it reads them too (and no second
-- role needs to read every tenant's keys).
create policy session_authentication on atl.console_sessions for select to atl_keyauth using (true);

revoke all on atl.console_sessions from public;
-- The runtime role reads; only atl_gate's functions start and end sessions
-- (a session ended is never revived).
grant select on atl.console_sessions to {{ .app_role }};
grant select on atl.console_sessions to atl_keyauth;
grant select, insert, delete on atl.console_sessions to atl_gate;
grant update (ended_at) on atl.console_sessions to atl_gate;

-- SHA-256 of a session id; the only form in which one is stored.
create function atl._console_session_hash(p_session text) returns bytea
language sql immutable strict parallel safe
as $$ select pg_catalog.sha256(pg_catalog.convert_to(p_session, 'UTF8')) $$;
comment on function atl._console_session_hash(text) is
  'Private: SHA-256 of a console session id, as stored in atl.console_sessions.session_hash.';

-- Starts a session for the acting key (app.key_hash), which must be an
-- active approver or admin key of the current tenant: a session is never
-- started for a key whose secret the caller does not hold. Also forgets the
-- tenant's sessions that ended more than 30 days ago.
create function atl.console_session_start(p_session text, p_ttl interval)
returns table (id uuid, expires_at timestamptz)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['approver', 'admin']);
begin
  if p_session is null or char_length(p_session) < 43 then
    raise exception 'a session id has at least 43 characters (32 random bytes)'
      using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_ttl is null or p_ttl <= interval '0' or p_ttl > interval '30 days' then
    raise exception 'a session lasts more than 0 and at most 30 days' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  delete from atl.console_sessions s
  where s.tenant_id = v_tenant and coalesce(s.ended_at, s.expires_at) < now() - interval '30 days';
  return query
  insert into atl.console_sessions as s (tenant_id, session_hash, key_id, expires_at)
  values (v_tenant, atl._console_session_hash(p_session), v_actor.id, now() + p_ttl)
  returning s.id, s.expires_at;
end $$;
comment on function atl.console_session_start(text, interval) is
  'Starts a console session (id: at least 43 random characters, only its SHA-256 is kept) for the acting approver or admin key (app.key_hash) of the current tenant, lasting p_ttl.';

-- Ends a session of the current tenant (sign-out); false when it was not live.
create function atl.console_session_end(p_session text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
begin
  update atl.console_sessions s set ended_at = now()
  where s.tenant_id = v_tenant and s.session_hash = atl._console_session_hash(p_session)
    and s.ended_at is null and s.expires_at > now();
  return found;
end $$;
comment on function atl.console_session_end(text) is
  'Ends a console session of the current tenant (sign-out); returns false when it was already ended, expired or unknown.';

-- Finds a live session's tenant and key. It runs before any tenant is known,
-- so, like atl.api_key_authenticate, it reads across tenants (owned by atl_keyauth).
create function atl.console_session_authenticate(p_session text)
returns table (tenant_id text, key_id uuid, role text, subject text, expires_at timestamptz, key_hash text)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select s.tenant_id, k.id, k.role, k.subject, s.expires_at, encode(k.key_hash, 'hex')
  from atl.console_sessions s
  join atl.api_keys k on k.tenant_id = s.tenant_id and k.id = s.key_id
  where s.session_hash = atl._console_session_hash(p_session)
    and s.ended_at is null and s.expires_at > now()
    and (k.revoked_at is null or k.revoked_at > clock_timestamp()) and k.role in ('approver', 'admin')
$$;
grant create on schema atl to atl_keyauth, atl_gate;
alter function atl.console_session_authenticate(text) owner to atl_keyauth;
alter function atl.console_session_start(text, interval) owner to atl_gate;
alter function atl.console_session_end(text) owner to atl_gate;
revoke create on schema atl from atl_keyauth, atl_gate;
comment on function atl.console_session_authenticate(text) is
  'SECURITY DEFINER (atl_keyauth): the tenant, key id, role, subject, expiry and key hash (for app.key_hash) of a live console session; no row when it is unknown, ended, expired or its key revoked. The session id is as strong a credential as the key.';

revoke all on function atl._console_session_hash(text), atl.console_session_start(text, interval),
  atl.console_session_end(text), atl.console_session_authenticate(text) from public;
grant execute on function atl._console_session_hash(text), atl.console_session_start(text, interval),
  atl.console_session_end(text), atl.console_session_authenticate(text) to {{ .app_role }};
grant execute on function atl._console_session_hash(text) to atl_keyauth, atl_gate;

---- create above / drop below ----

drop function atl.console_session_authenticate(text);
drop function atl.console_session_end(text);
drop function atl.console_session_start(text, interval);
drop function atl._console_session_hash(text);
drop table atl.console_sessions;
