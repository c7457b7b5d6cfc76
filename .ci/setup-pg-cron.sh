#!/usr/bin/env bash
# CI: make pg_cron available on the local PostgreSQL 15 cluster "15 main", so
# that tests/cron_test.go runs instead of skipping. Safe to run again: it installs,
# reconfigures and restarts only what is missing.
#
#   - installs the Debian package postgresql-15-cron (apt-get update only when
#     the package is unknown to apt);
#   - adds pg_cron to shared_preload_libraries (keeping the libraries already
#     there) and sets cron.database_name = 'postgres' and
#     cron.use_background_workers = on, with ALTER SYSTEM;
#   - restarts the cluster only when the running server lacks those settings;
#   - creates (or updates) the extension pg_cron in database postgres.
#
# Jobs run as background workers, not libpq connections to localhost, so they
# do not depend on pg_hba.conf, passwords or the listening address.
set -euo pipefail

PG_VERSION=15
PG_CLUSTER=main
PG_HOST=127.0.0.1
PG_PORT=5432
CRON_DB=postgres
PACKAGE="postgresql-${PG_VERSION}-cron"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

psql_super() {
  psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"
}

wait_ready() {
  for _ in $(seq 1 60); do
    if pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
      return 0
    fi
    sleep 1
  done
  pg_isready -h "$PG_HOST" -p "$PG_PORT"
}

# 1. The package.
if ! dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'install ok installed'; then
  if ! apt-cache policy "$PACKAGE" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${sudo[@]}" apt-get update
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$PACKAGE"
fi
echo "pg_cron package: $(dpkg-query -W -f='${Version}' "$PACKAGE")"

# 2. The server settings. The running server tells what is in effect; a
# setting is written only when the server does not already run with it.
if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
  "${sudo[@]}" pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
fi
wait_ready

# Prints the statements still needed, one setting a line. A library list is
# written as one literal per library: a single 'a,b' literal would be quoted
# into one library named "a,b". PostgreSQL 15 refuses ALTER SYSTEM for a
# parameter it does not know, and it knows cron.* only once pg_cron is loaded,
# so an unknown cron.* parameter is first SET in the session, which defines a
# placeholder that ALTER SYSTEM then accepts.
needed=$(psql_super -d "$CRON_DB" -At <<'SQL'
with cur as (
  select trim(both '"' from trim(x)) as lib, ord
  from unnest(string_to_array(current_setting('shared_preload_libraries'), ',')) with ordinality as u(x, ord)
  where trim(x) <> ''
)
select format('alter system set shared_preload_libraries = %s;',
              (select string_agg(quote_literal(lib), ', ' order by ord)
               from (select lib, ord from cur union all select 'pg_cron', 2147483647) l))
where not exists (select 1 from cur where lib = 'pg_cron')
union all
select case when current_setting(name, true) is null then format('set %s = %L; ', name, value) else '' end
       || format('alter system set %s = %L;', name, value)
from (values ('cron.database_name', 'postgres'), ('cron.use_background_workers', 'on')) as s(name, value)
where current_setting(name, true) is distinct from value;
SQL
)

if [ -n "$needed" ]; then
  echo "configuring pg_cron:"
  sed 's/^/  /' <<<"$needed"
  psql_super -d "$CRON_DB" <<<"$needed"
  echo "restarting PostgreSQL $PG_VERSION/$PG_CLUSTER to load pg_cron"
  "${sudo[@]}" pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" restart
  wait_ready
fi

# 3. The extension, in the database pg_cron runs in.
psql_super -d "$CRON_DB" -c "set client_min_messages = warning" \
  -c "create extension if not exists pg_cron" -c "alter extension pg_cron update"
psql_super -d "$CRON_DB" -At -c "select 'pg_cron ' || extversion || ' in database ' || current_database()
  || ', shared_preload_libraries = ' || current_setting('shared_preload_libraries')
  || ', cron.use_background_workers = ' || current_setting('cron.use_background_workers')
  from pg_extension where extname = 'pg_cron'"
