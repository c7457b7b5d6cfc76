#!/usr/bin/env bash
# bench/writes.sh: the service's write paths against PostgreSQL doing the same
# work, on one throw-away database, in one run:
#
#   raw      pgbench: one transaction of set_config + a single-row INSERT into
#            atl.agent_action_events under RLS (the floor: no function, no audit row)
#   events   POST /api/v1/events, one event a request   vs pgbench running the
#            service's SQL for it (atl.event_insert + atl.audit_log_insert)
#   execute  POST /api/v1/agents/bot/execute, L0 dry run vs pgbench running
#            atl.gate_execute the same way
#   batch    POST /api/v1/events with BATCH_SIZE events  vs pgbench running
#            atl.event_insert with BATCH_SIZE-element arrays + the audit row
#
# at each client count of BENCH_CLIENT_SET (single calls) and BATCH_CLIENTS
# (batches), spread over BENCH_TENANTS tenants. Progress goes to stderr, the
# table to stdout. Exits non-zero if any HTTP answer was not 2xx or any
# pgbench transaction failed. Environment: see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
seconds=${BENCH_SECONDS:-15}
client_set=${BENCH_CLIENT_SET:-16 64}
tenants=${BENCH_TENANTS:-16}
batch_size=${BATCH_SIZE:-1000}
batch_clients=${BATCH_CLIENTS:-4}
threads=${BENCH_THREADS:-2}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}
cases=${BENCH_CASES:-raw events execute batch}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'writes.sh: %s\n' "$*" >&2
  exit 1
}

for v in seconds tenants batch_size batch_clients threads start_timeout; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for c in $client_set; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENT_SET must hold positive integers, got '$client_set'"
done
for c in $cases; do
  [[ $c =~ ^(raw|events|execute|batch)$ ]] || die "BENCH_CASES: unknown case '$c'"
done
((batch_size <= 1000)) || die "BATCH_SIZE must be at most 1000 (the API's limit)"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"

pgbench=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
[[ -x $pgbench ]] || die "pgbench not found; install postgresql-contrib (Debian: apt-get install postgresql-15 or postgresql-client-15), or set PGBENCH"
for tool in psql curl go awk sort; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-writes.XXXXXX")
db=atl_bench_$$
bench_url=$(db_url "$base_url" "$db")
atl_pid=
child=
db_created=0
failed=0

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
      printf 'writes.sh: could not drop database %s\n' "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run CMD...: in the background, so that a signal interrupts the wait at once.
run() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  return "$status"
}

# ---- service, tenants, keys, policies

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

# call METHOD PATH TOKEN JSON: sets resp_code and resp_body; the token goes
# through a header file so it does not show in the process list.
call() {
  printf 'Authorization: Bearer %s\n' "$3" >"$tmp/auth.hdr"
  local out
  out=$(curl -sS --max-time 10 -w '\n%{http_code}' -X "$1" -H @"$tmp/auth.hdr" -H 'Content-Type: application/json' \
    --data-binary "$4" "$api$2")
  rm -f "$tmp/auth.hdr"
  resp_code=${out##*$'\n'}
  resp_body=${out%$'\n'*}
}
json_api_key() { sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p' <<<"$1"; }

say "creating $tenants tenants, each with an agent key and an L0 policy for tool search"
agent_keys=
for i in $(seq 1 "$tenants"); do
  call POST /tenants "$admin_token" "{\"id\":\"bench$i\",\"name\":\"Bench $i\"}"
  [[ $resp_code == 201 ]] || die "POST /api/v1/tenants answered $resp_code: $resp_body"
  tenant_key=$(json_api_key "$resp_body")
  call PUT /policies/search "$tenant_key" '{"trust_level":"L0"}'
  [[ $resp_code == 200 || $resp_code == 201 ]] || die "PUT /api/v1/policies/search answered $resp_code: $resp_body"
  call POST /keys "$tenant_key" '{"role":"agent","subject":"bot"}'
  [[ $resp_code == 201 ]] || die "POST /api/v1/keys answered $resp_code: $resp_body"
  agent_keys+=${agent_keys:+,}$(json_api_key "$resp_body")
done
export ATL_BENCH_TOKEN=$agent_keys

event='{"tool_name":"search","status":"succeeded","tool_args":{"q":"x"}}'
execute='{"tool":"search","args":{"q":"x"}}'
batch=$(awk -v n="$batch_size" -v e="$event" 'BEGIN {
  printf "{\"events\":["; for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "," : ""), e; printf "]}" }')

# ---- pgbench scripts: what the service runs per request

# The tenant is drawn in SQL, and no text holds a colon before a letter: pgbench
# reads :name as one of its variables.
tenant_sql="select set_config('role', 'atl_app', true), set_config('app.tenant_id', 'bench' || (1 + floor(random() * $tenants))::int, true);"
{
  echo "begin;"
  echo "$tenant_sql"
  cat <<'SQL'
insert into atl.agent_action_events (tenant_id, domain, agent, trust_level, stage, tool_name, tool_args, status, trace_id, mode)
  values (current_setting('app.tenant_id'), 'default', 'bot', 'L0', 'execute', 'search', '{"q":"x"}', 'succeeded', md5(random()::text), 'dry_run');
commit;
SQL
} >"$tmp/raw.sql"
{
  echo "begin;"
  echo "$tenant_sql"
  cat <<'SQL'
select count(*) from atl.event_insert(array[null]::text[], array[null]::text[], array['bot'],
  array[null]::text[], array[null]::text[], array['search'], array['{"q":"x"}'::jsonb], array[null::jsonb],
  array['succeeded'], array[null::uuid], array[null]::text[], array[md5(random()::text)], array[null]::text[],
  array[null::integer], array[null]::text[]);
select count(*) from atl.audit_log_insert(md5(random()::text), 'bot', 'POST /api/v1/events',
  'dry_run', 'ok', 201, 1, null, null);
commit;
SQL
} >"$tmp/events.sql"
{
  echo "begin;"
  echo "$tenant_sql"
  cat <<'SQL'
select atl.gate_execute(p_agent_id => 'bot', p_tool => 'search', p_args => '{"q":"x"}', p_requested_by => 'bot',
  p_route => 'POST /api/v1/agents/' || chr(58) || 'agent_id/execute', p_latency_ms => 1);
commit;
SQL
} >"$tmp/execute.sql"
{
  echo "begin;"
  echo "$tenant_sql"
  cat <<SQL
select count(*) from atl.event_insert(array_fill(null::text, array[$batch_size]), array_fill(null::text, array[$batch_size]),
  array_fill('bot'::text, array[$batch_size]), array_fill(null::text, array[$batch_size]), array_fill(null::text, array[$batch_size]),
  array_fill('search'::text, array[$batch_size]), array_fill('{"q":"x"}'::jsonb, array[$batch_size]),
  array_fill(null::jsonb, array[$batch_size]), array_fill('succeeded'::text, array[$batch_size]),
  array_fill(null::uuid, array[$batch_size]), array_fill(null::text, array[$batch_size]),
  array_fill(md5(random()::text), array[$batch_size]), array_fill(null::text, array[$batch_size]),
  array_fill(null::integer, array[$batch_size]), array_fill(null::text, array[$batch_size]));
select count(*) from atl.audit_log_insert(md5(random()::text), 'bot', 'POST /api/v1/events',
  'dry_run', 'ok', 201, 1, null, null);
commit;
SQL
} >"$tmp/batch.sql"

# ---- phases

# batches: "requests-sum batches-count" of group commit so far, from /metrics.
batches() {
  printf 'Authorization: Bearer %s\n' "$admin_token" >"$tmp/auth.hdr"
  curl -sS --max-time 10 -H @"$tmp/auth.hdr" "http://127.0.0.1:$port/metrics" |
    awk '/^atl_group_commit_batch_requests_sum/ {s = $2} /^atl_group_commit_batch_requests_count/ {c = $2}
      END {printf "%d %d\n", s, c}'
  rm -f "$tmp/auth.hdr"
}

# atl_phase NAME CLIENTS PATH BODY: sets rps p50 p99 from bench/loadgen, and
# per_batch, the mean requests per group commit.
atl_phase() {
  psql "$bench_url" -X -q -c checkpoint >/dev/null
  say "atl $1: $2 clients for ${seconds}s"
  local before after
  before=$(batches)
  local status=0
  run "$tmp/loadgen" -url "$api$3" -c "$2" -duration "${seconds}s" -body "$4" >"$tmp/loadgen.out" || status=$?
  sed '$d' "$tmp/loadgen.out" >&2
  local line
  line=$(tail -n 1 "$tmp/loadgen.out")
  kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$line"; }
  rps=$(kv rps) p50=$(kv p50_ms) p99=$(kv p99_ms)
  local non2xx errors
  non2xx=$(kv non2xx) errors=$(kv errors)
  [[ -n $rps && -n $non2xx ]] || die "could not read the loadgen's result (exit $status): $line"
  after=$(batches)
  per_batch=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
    n = y[2] - x[2]; if (n > 0) printf "%.1f", (y[1] - x[1]) / n; else print "-" }')
  say "group commit: $per_batch requests per transaction"
  if ((non2xx > 0 || errors > 0 || status != 0)); then
    printf 'writes.sh: FAILED: atl %s: %s non-2xx answers, %s transport errors\n' "$1" "$non2xx" "$errors" >&2
    failed=1
  fi
}

# pg_phase NAME CLIENTS SCRIPT: sets rps p50 p99 from pgbench.
pg_phase() {
  psql "$bench_url" -X -q -c checkpoint >/dev/null
  say "pgbench $1: $2 clients for ${seconds}s"
  rm -f "$tmp"/pgbench_log.*
  local status=0 jobs=$threads
  ((jobs > $2)) && jobs=$2
  run "$pgbench" -n -M prepared -c "$2" -j "$jobs" -T "$seconds" -f "$3" --log --log-prefix="$tmp/pgbench_log" \
    "$bench_url" >"$tmp/pgbench.out" 2>"$tmp/pgbench.err" || status=$?
  rps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$tmp/pgbench.out")
  local nfailed
  nfailed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tmp/pgbench.out")
  if [[ -z $rps ]]; then
    cat "$tmp/pgbench.out" "$tmp/pgbench.err" >&2
    die "could not read pgbench's tps (exit $status)"
  fi
  if ((status != 0 || ${nfailed:-0} > 0)); then
    printf 'writes.sh: FAILED: pgbench %s exited %s with %s failed transactions\n' "$1" "$status" "${nfailed:-0}" >&2
    tail -n 5 "$tmp/pgbench.err" >&2
    failed=1
  fi
  cat "$tmp"/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n >"$tmp/pgbench.lat"
  p50=$(pct "$tmp/pgbench.lat" 50) p99=$(pct "$tmp/pgbench.lat" 99)
}

has() { [[ " $cases " == *" $1 "* ]]; }

rows=()
# row LABEL CLIENTS UNIT RATE P50 P99 PER_BATCH BASELINE_RATE: one line of the table.
row() {
  rows+=("$(awk -v l="$1" -v c="$2" -v u="$3" -v r="$4" -v a="$5" -v b="$6" -v g="$7" -v base="$8" 'BEGIN {
    ratio = (base > 0 ? sprintf("%.2f", r / base) : "")
    printf "%-38s %7s %12.1f %-6s %8.2f %8.2f %6s %8s", l, c, r, u, a, b, g, ratio }')")
}

for c in $client_set; do
  raw_rps=0
  if has raw; then
    pg_phase raw "$c" "$tmp/raw.sql"
    raw_rps=$rps
    row "pgbench raw single-row insert" "$c" "tx/s" "$rps" "$p50" "$p99" "" ""
  fi
  if has events; then
    pg_phase events "$c" "$tmp/events.sql"
    base=$rps
    row "pgbench events SQL" "$c" "tx/s" "$rps" "$p50" "$p99" "" ""
    atl_phase "POST /events" "$c" /events "$event"
    row "atl POST /events (1 event)" "$c" "req/s" "$rps" "$p50" "$p99" "$per_batch" "$base"
    rows[-1]+=$(awk -v r="$rps" -v b="$raw_rps" 'BEGIN { if (b > 0) printf " %8.2f", r / b }')
  fi
  if has execute; then
    pg_phase execute "$c" "$tmp/execute.sql"
    base=$rps
    row "pgbench gate_execute SQL" "$c" "tx/s" "$rps" "$p50" "$p99" "" ""
    atl_phase "POST /agents/bot/execute" "$c" /agents/bot/execute "$execute"
    row "atl execute (L0, dry run)" "$c" "req/s" "$rps" "$p50" "$p99" "$per_batch" "$base"
    rows[-1]+=$(awk -v r="$rps" -v b="$raw_rps" 'BEGIN { if (b > 0) printf " %8.2f", r / b }')
  fi
done
if has batch; then
  pg_phase "batch of $batch_size" "$batch_clients" "$tmp/batch.sql"
  base=$(awk -v r="$rps" -v n="$batch_size" 'BEGIN { printf "%.1f", r * n }')
  row "pgbench event_insert x$batch_size" "$batch_clients" "rows/s" "$base" "$p50" "$p99" "" ""
  atl_phase "POST /events ($batch_size events)" "$batch_clients" /events "$batch"
  row "atl POST /events ($batch_size events)" "$batch_clients" "rows/s" \
    "$(awk -v r="$rps" -v n="$batch_size" 'BEGIN { printf "%.1f", r * n }')" "$p50" "$p99" "$per_batch" "$base"
fi

if grep -q '"level":"ERROR"' "$tmp/atl.log"; then
  grep '"level":"ERROR"' "$tmp/atl.log" | head -n 5 >&2
  printf 'writes.sh: FAILED: the service logged errors\n' >&2
  failed=1
fi

printf '%-38s %7s %12s %-6s %8s %8s %6s %8s %8s\n' "" clients rate "" "p50 ms" "p99 ms" batch "/same" "/raw"
printf '%s\n' "${rows[@]}"
printf '(%s tenants; batch: mean requests per group-commit transaction; /same: atl over pgbench running\n the same SQL; /raw: over the raw single-row insert)\n' "$tenants"
exit "$failed"
