#!/usr/bin/env bash
# bench/events.sh: throughput and latency of POST /api/v1/events (one event per
# request) against pgbench running the same SQL, on a throw-away database.
#
# Progress and details go to stderr; the result table goes to stdout and its
# last line is "ratio atl/pgbench throughput: X.XX". Exits non-zero when any
# HTTP answer was not 2xx or any pgbench transaction failed.
# Environment: see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CLIENTS:-16}
threads=${BENCH_THREADS:-2}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}
pgbench_auth=${BENCH_PGBENCH_AUTH:-0}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'events.sh: %s\n' "$*" >&2
  exit 1
}

for v in seconds clients threads start_timeout; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"
((threads <= clients)) || die "BENCH_THREADS ($threads) must not exceed BENCH_CLIENTS ($clients)"
[[ $pgbench_auth == 0 || $pgbench_auth == 1 ]] || die "BENCH_PGBENCH_AUTH must be 0 or 1"

pgbench=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
[[ -x $pgbench ]] || die "pgbench not found; install postgresql-contrib (Debian: apt-get install postgresql-15 or postgresql-client-15), or set PGBENCH"
for tool in psql curl go awk sort; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-bench.XXXXXX")
db=atl_bench_$$
bench_url=$(db_url "$base_url" "$db")
atl_pid=
child=
db_created=0

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  [[ -n $atl_pid ]] && stop_pid "$atl_pid"
  if ((db_created)); then
    psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "drop database if exists \"$db\" with (force)" >/dev/null ||
      printf 'events.sh: could not drop database %s\n' "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run CMD...: runs it in the background and waits for it, so that a signal
# interrupts the wait at once and cleanup stops it.
run() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  return "$status"
}

# ---- 1. build, fresh database, service

say "building atl and bench/loadgen"
(cd "$root" && go build -o "$tmp/atl" . && go build -o "$tmp/loadgen" ./bench/loadgen)

if [[ -n $port ]]; then
  port_in_use "$port" && die "port $port is in use (BENCH_PORT)"
else
  port=$(free_port 18181 18280) || die "no free port in 18181-18280; set BENCH_PORT"
fi
api="http://127.0.0.1:$port/api/v1"

say "creating database $db"
db_created=1
psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null

admin_token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
say "starting atl on 127.0.0.1:$port (log: $tmp/atl.log)"
env DATABASE_URL="$bench_url" PORT="$port" ATL_ADMIN_TOKEN="$admin_token" ATL_MIGRATE=true LIVE_ENABLED=false \
  "$tmp/atl" >"$tmp/atl.log" 2>&1 &
atl_pid=$!

wait_healthy "$api/health/db" "$atl_pid" "$tmp/atl.log" "$start_timeout" || die "start-up failed"

# ---- 2. tenant and agent key

# post PATH TOKEN JSON: sets resp_code and resp_body. The token goes through a
# header file so it does not show in the process list.
post() {
  printf 'Authorization: Bearer %s\n' "$2" >"$tmp/auth.hdr"
  local out
  out=$(curl -sS --max-time 10 -w '\n%{http_code}' -H @"$tmp/auth.hdr" -H 'Content-Type: application/json' \
    --data-binary "$3" "$api$1")
  rm -f "$tmp/auth.hdr"
  resp_code=${out##*$'\n'}
  resp_body=${out%$'\n'*}
}
json_api_key() { sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p' <<<"$1"; }

say "creating tenant bench and an agent key"
post /tenants "$admin_token" '{"id":"bench","name":"Bench"}'
[[ $resp_code == 201 ]] || die "POST /api/v1/tenants answered $resp_code: $resp_body"
tenant_key=$(json_api_key "$resp_body")
[[ -n $tenant_key ]] || die "POST /api/v1/tenants: no api_key in $resp_body"

post /keys "$tenant_key" '{"role":"agent","subject":"bench-agent"}'
[[ $resp_code == 201 ]] || die "POST /api/v1/keys answered $resp_code: $resp_body"
agent_key=$(json_api_key "$resp_body")
[[ -n $agent_key ]] || die "POST /api/v1/keys: no api_key in $resp_body"

event='{"tool_name":"search","status":"succeeded","tool_args":{"q":"x"}}'
post /events "$agent_key" "$event"
[[ $resp_code == 201 ]] || die "probe POST /api/v1/events answered $resp_code: $resp_body"

# ---- 3. HTTP load

psql "$bench_url" -X -q -c checkpoint >/dev/null
say "POST /api/v1/events: $clients clients for ${seconds}s"
lg_status=0
export ATL_BENCH_TOKEN=$agent_key
run "$tmp/loadgen" -url "$api/events" -c "$clients" -duration "${seconds}s" \
  -body "$event" >"$tmp/loadgen.out" || lg_status=$?
sed '$d' "$tmp/loadgen.out" >&2
lg_line=$(tail -n 1 "$tmp/loadgen.out")
kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$lg_line"; }
atl_rps=$(kv rps)
atl_p50=$(kv p50_ms)
atl_p99=$(kv p99_ms)
atl_non2xx=$(kv non2xx)
atl_errors=$(kv errors)
[[ -n $atl_rps && -n $atl_non2xx ]] || die "could not read the loadgen's result (exit $lg_status): $lg_line"

# ---- 4. pgbench, the same SQL per event

# What PGStore.InsertEvents does for one event: one transaction that switches
# to the runtime role and tenant, calls atl.event_insert and atl.audit_log_insert.
{
  if ((pgbench_auth)); then
    # What authed() does first, outside the transaction.
    echo "select count(*) from atl.api_key_authenticate(:agent_key);"
  fi
  cat <<'SQL'
begin;
select set_config('role', 'atl_app', true), set_config('app.tenant_id', 'bench', true);
select count(*) from atl.event_insert(array[null]::text[], array[null]::text[], array['bench-agent'],
  array[null]::text[], array[null]::text[], array['search'], array['{"q":"x"}'::jsonb], array[null::jsonb],
  array['succeeded'], array[null::uuid], array[null]::text[], array[md5(random()::text)], array[null]::text[],
  array[null::integer], array[null]::text[]);
select count(*) from atl.audit_log_insert(md5(random()::text), 'bench-agent', 'POST /api/v1/events',
  'dry_run', 'ok', 201, 1, null, null);
commit;
SQL
} >"$tmp/events.sql"

psql "$bench_url" -X -q -c checkpoint >/dev/null
say "pgbench: $clients clients, $threads threads for ${seconds}s"
pg_status=0
pgbench_args=(-n -M prepared -c "$clients" -j "$threads" -T "$seconds" -f "$tmp/events.sql"
  --log --log-prefix="$tmp/pgbench_log")
((pgbench_auth)) && pgbench_args+=(-D "agent_key=$agent_key")
run "$pgbench" "${pgbench_args[@]}" "$bench_url" >"$tmp/pgbench.out" 2>"$tmp/pgbench.err" || pg_status=$?
grep -E '^(number of (transactions actually processed|failed transactions)|latency average|tps)' \
  "$tmp/pgbench.out" | sed 's/^/  /' >&2 || true
pg_tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$tmp/pgbench.out")
pg_failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tmp/pgbench.out")
pg_failed=${pg_failed:-0}
if [[ -z $pg_tps ]]; then
  cat "$tmp/pgbench.out" "$tmp/pgbench.err" >&2
  die "could not read pgbench's tps (exit $pg_status)"
fi
# Per-transaction log: the third column is the latency in microseconds.
cat "$tmp"/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n >"$tmp/pgbench.lat"
pct() {
  awk -v p="$2" '{v[NR] = $1}
    END {
      if (NR == 0) { print "0"; exit }
      r = p / 100 * NR; i = int(r); if (i < r) i++; if (i < 1) i = 1
      printf "%.3f", v[i] / 1000
    }' "$1"
}
pg_p50=$(pct "$tmp/pgbench.lat" 50)
pg_p99=$(pct "$tmp/pgbench.lat" 99)

# ---- 5. report

failed=0
if ((atl_non2xx > 0 || atl_errors > 0 || lg_status != 0)); then
  printf 'events.sh: FAILED: %s non-2xx answers and %s transport errors from POST /api/v1/events (see above)\n' \
    "$atl_non2xx" "$atl_errors" >&2
  failed=1
fi
if ((pg_status != 0 || pg_failed > 0)); then
  printf 'events.sh: FAILED: pgbench exited %s with %s failed transactions:\n' "$pg_status" "$pg_failed" >&2
  tail -n 5 "$tmp/pgbench.err" >&2
  failed=1
fi

pg_label="pgbench same SQL ($clients clients)"
((pgbench_auth)) && pg_label="pgbench same SQL + auth ($clients clients)"
{
  printf '%-44s %14s %10s %10s\n' "" "throughput/s" "p50 ms" "p99 ms"
  printf '%-44s %14.1f %10.2f %10.2f\n' "atl POST /api/v1/events ($clients clients)" "$atl_rps" "$atl_p50" "$atl_p99"
  printf '%-44s %14.1f %10.2f %10.2f\n' "$pg_label" "$pg_tps" "$pg_p50" "$pg_p99"
  awk -v a="$atl_rps" -v b="$pg_tps" 'BEGIN {
    if (b > 0) printf "ratio atl/pgbench throughput: %.2f\n", a / b
    else print "ratio atl/pgbench throughput: n/a"
  }'
}
if ((failed)); then
  exit 1
fi
awk -v b="$pg_tps" 'BEGIN { exit !(b > 0) }' || exit 1
