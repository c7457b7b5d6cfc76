#!/usr/bin/env bash
# bench/reads.sh: the service's list routes at 10 million audit rows against
# pgbench running the same SQL function in the same kind of transaction
# (set_config of role and tenant, then atl.audit_log_query / atl.event_query /
# atl.approval_list with the arguments store.go passes, limit 51), on one
# database, in one run:
#
#   first    GET /api/v1/audit/logs               latest page of the tenant
#   cursor   GET /api/v1/audit/logs?cursor=...    a next page at a random depth
#   agent    ...?agent_id=agent-0|agent-1         the two busiest agents
#   trace    ...?trace_id=...                     a trace of the tenant (4 rows)
#   status   ...?status=ok|pending_approval|denied|error
#   mode     ...?mode=dry_run|live
#   window   ...?since=T&until=T+1h               a random hour of the 30 days
#   events   GET /api/v1/events?agent=agent-0     events list with a filter
#   approvals GET /api/v1/approvals?status=PENDING
#
# Clients are spread over READS_TENANTS (the largest tenant holds about 1.8
# million rows, the smallest 1,000; with fewer clients than tenants, the
# first tenants: one client reads t0000 only), at each client count of
# READS_CLIENT_SET; every request draws its tenant's
# parameters from the same distribution pgbench draws them from. The database
# comes from bench/load10m.sh (or READS_DB, already loaded). Progress goes to
# stderr, the table to stdout; it exits non-zero if any answer was not 2xx or
# a pgbench transaction failed. Environment: see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
seconds=${BENCH_SECONDS:-15}
client_set=${READS_CLIENT_SET:-1 16}
threads=${BENCH_THREADS:-2}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}
cases=${BENCH_CASES:-first cursor agent trace status mode window events approvals}
tenant_list=${READS_TENANTS:-t0000 t0001 t0002 t0004 t0008 t0016 t0032 t0064 t0128 t0256 t0384 t0512 t0640 t0768 t0896 t0999}
reuse_db=${READS_DB:-}
keep=${BENCH_KEEP:-0}
pprof=${READS_PPROF:-}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'reads.sh: %s\n' "$*" >&2
  exit 1
}
for v in seconds threads start_timeout; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for c in $client_set; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "READS_CLIENT_SET must hold positive integers, got '$client_set'"
done
clients=${client_set%% *}
for c in $cases; do
  [[ $c =~ ^(first|cursor|agent|trace|status|mode|window|events|approvals)$ ]] || die "BENCH_CASES: unknown case '$c'"
done
read -r -a tenants <<<"$tenant_list"
((${#tenants[@]} > 0)) || die "READS_TENANTS is empty"
for t in "${tenants[@]}"; do
  [[ $t =~ ^[a-z0-9][a-z0-9_-]{1,62}$ ]] || die "READS_TENANTS: '$t' is not a tenant id"
done
[[ -z $reuse_db || $reuse_db =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "READS_DB must be a plain database name"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"
[[ -z $pprof || $pprof =~ ^[a-z]+$ ]] || die "READS_PPROF must be a case name"

pgbench=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
[[ -x $pgbench ]] || die "pgbench not found (Debian: apt-get install postgresql-client-15), or set PGBENCH"
for tool in psql curl go awk sort; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-reads.XXXXXX")
db=${reuse_db:-atl_reads_$$}
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
  if ((db_created)) && [[ $keep != 1 ]]; then
    drop_db "$base_url" "$db" ||
      printf 'reads.sh: could not drop database %s\n' "$db" >&2
  elif ((db_created)); then
    printf 'reads.sh: kept database %s (READS_DB=%s reuses it)\n' "$db" "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  return "$status"
}

# ---- database, service, keys

if [[ -z $reuse_db ]]; then
  db_created=1
  say "loading $db with bench/load10m.sh"
  run env LOAD_DB="$db" BENCH_KEEP=1 bash "$root/bench/load10m.sh" >&2 || die "the load failed"
fi
q() { psql "$bench_url" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
total=$(q -c "select sum(seq) from atl.audit_chain_heads")
say "database $db: $total audit rows"

say "building atl and bench/loadgen"
(cd "$root" && go build -o "$tmp/atl" . && go build -o "$tmp/loadgen" ./bench/loadgen)
if [[ -n $port ]]; then
  port_in_use "$port" && die "port $port is in use (BENCH_PORT)"
else
  port=$(free_port 18381 18480) || die "no free port in 18381-18480; set BENCH_PORT"
fi
api="http://127.0.0.1:$port/api/v1"
admin_token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
pprof_addr=
if [[ -n $pprof ]]; then
  pprof_addr=127.0.0.1:$(free_port 16061 16160) || die "no free port for pprof"
fi
say "starting atl on 127.0.0.1:$port (log: $tmp/atl.log)"
env DATABASE_URL="$bench_url" PORT="$port" ATL_ADMIN_TOKEN="$admin_token" ATL_MIGRATE=true LIVE_ENABLED=false \
  ATL_PPROF_ADDR="$pprof_addr" "$tmp/atl" >"$tmp/atl.log" 2>&1 &
atl_pid=$!
wait_healthy "$api/health/db" "$atl_pid" "$tmp/atl.log" "$start_timeout" || die "start-up failed"

# Per tenant: its audit rows (the chain head's seq), events, and an admin key.
tenant_array=$(printf "'%s'," "${tenants[@]}")
tenant_array="array[${tenant_array%,}]"
q -F ' ' -c "select t, coalesce(h.seq, 0),
    (select count(*) from atl.agent_action_events e where e.tenant_id = t)
  from unnest($tenant_array) with ordinality u(t, n) left join atl.audit_chain_heads h on h.tenant_id = t order by n" \
  >"$tmp/tenants.txt"
while read -r t n _; do
  ((n > 0)) || die "tenant $t has no audit rows in $db (READS_TENANTS must name loaded tenants)"
done <"$tmp/tenants.txt"
say "issuing an admin key for each of ${#tenants[@]} tenants"
for t in "${tenants[@]}"; do
  printf "select set_config('app.tenant_id', '%s', false) \\\\g /dev/null\n" "$t"
  # As the superuser: no admin key acts yet to issue one through atl.api_key_issue.
  printf "select atl._key_insert('%s', 'admin', 'bench-reads', null, null, 'bench/reads.sh') ->> 'api_key';\n" "$t"
done >"$tmp/keys.sql"
keys=$(q -f "$tmp/keys.sql" | paste -sd, -)
export ATL_BENCH_TOKEN=$keys
audit_counts=$(awk '{printf "%s%s", (NR > 1 ? "," : ""), $2}' "$tmp/tenants.txt")
event_counts=$(awk '{printf "%s%s", (NR > 1 ? "," : ""), ($3 > 0 ? $3 : 1)}' "$tmp/tenants.txt")
read -r lo hi < <(q -F ' ' -c "select floor(extract(epoch from min(created_at))), floor(extract(epoch from max(created_at)))
  from atl.audit_logs where tenant_id = '${tenants[0]}'")
span=$((hi - lo))
((span > 3600)) || die "the trail spans less than an hour"

# ---- the cases: one SQL expression per filter, used both for the URLs and by pgbench

# Each case: audit, events or approvals, then, separated by ';', the arguments as SQL expressions of
# {tn} (tenant id), {na} (its audit rows), {ne} (its events) and {r1} (random
# in [0,1)), in the order of atl.audit_log_query (agent, trace, status, mode,
# since, until, before), atl.event_query (agent, trace, status, tool, request,
# since, until, before) or atl.approval_list (status, before).
args_for() {
  local ts="to_timestamp($lo + {r1} * $((span - 3600)))"
  case $1 in
    first) echo "audit;null;null;null;null;null;null;null" ;;
    cursor) echo "audit;null;null;null;null;null;null;to_timestamp($lo + {r1} * $span)" ;;
    agent) echo "audit;'agent-' || floor({r1} * 2)::int;null;null;null;null;null;null" ;;
    trace) echo "audit;null;substr(md5({tn} || ':' || floor({r1} * {na} / 4)::bigint), 1, 32);null;null;null;null;null" ;;
    status) echo "audit;null;null;(array['ok', 'pending_approval', 'denied', 'error'])[1 + floor({r1} * 4)::int];null;null;null;null" ;;
    mode) echo "audit;null;null;null;(array['dry_run', 'live'])[1 + floor({r1} * 2)::int];null;null;null" ;;
    window) echo "audit;null;null;null;null;$ts;$ts + interval '1 hour';null" ;;
    events) echo "events;'agent-0'::text;null;null;null;null;null;null;null" ;;
    approvals) echo "approvals;'PENDING'::text;null" ;;
  esac
}

# urls CASE FILE: enough request URLs that none repeats within a phase (up to
# 4,000 requests a second), as pgbench draws afresh each time; line j is sent
# by client j mod clients, whose key is that of tenant (j mod clients) mod tenants.
urls() {
  local spec kind names
  spec=$(args_for "$1")
  kind=${spec%%;*}
  case $kind in
    audit) path=/audit/logs names="'agent_id', 'trace_id', 'status', 'mode', 'since', 'until', 'cursor'" ;;
    events) path=/events names="'agent', 'trace_id', 'status', 'tool_name', 'approval_request_id', 'since', 'until', 'cursor'" ;;
    approvals) path=/approvals names="'status', 'cursor'" ;;
  esac
  local exprs=${spec#*;} vals="" x
  exprs=${exprs//\{tn\}/tn}
  exprs=${exprs//\{na\}/na}
  exprs=${exprs//\{ne\}/ne}
  exprs=${exprs//\{r1\}/r1}
  IFS=';' read -r -a a <<<"$exprs"
  # to_json gives times in RFC 3339 (TimeZone UTC), text as it is
  for x in "${a[@]}"; do
    if [[ $x == null ]]; then vals+="null::text,"; else vals+="to_json($x) #>> '{}',"; fi
  done
  q -c "set timezone = 'UTC'" -c "with p as (
      select j, t.tn, t.na, t.ne, random() r1
      from generate_series(0, $clients * 200 + 4000 * $seconds - 1) j
      join (select (n - 1)::int k, tn, na, ne
            from unnest($tenant_array, array[$audit_counts]::bigint[], array[$event_counts]::bigint[])
            with ordinality u(tn, na, ne, n)) t on t.k = (j % $clients) % ${#tenants[@]}
    ), v as (
      select j, array[$names] names, array[${vals%,}] vals from p
    )
    -- a cursor is what the service hands out: base64url of \"time|id\" without padding
    select '$api$path' || coalesce('?' || (
      select string_agg(n || '=' || case when n = 'cursor'
        then rtrim(translate(encode(convert_to(val || '|ffffffff-ffff-ffff-ffff-ffffffffffff', 'UTF8'), 'base64'), E'+/\\n', '-_'), '=')
        else replace(replace(val, '+', '%2B'), ':', '%3A') end, '&')
      from unnest(names, vals) x(n, val) where val is not null), '')
    from v order by j" >"$2"
}

# pgscript CASE FILE: the transaction the service runs for CASE, with the
# tenant and the random value drawn by pgbench.
pgscript() {
  local spec kind
  spec=$(args_for "$1")
  kind=${spec%%;*}
  local exprs=${spec#*;}
  exprs=${exprs//\{r1\}/(:r1 \/ 1000000.0)}
  exprs=${exprs//\{tn\}/($tenant_array)[:k]}
  exprs=${exprs//\{na\}/(array[$audit_counts])[:k]}
  exprs=${exprs//\{ne\}/(array[$event_counts])[:k]}
  IFS=';' read -r -a a <<<"$exprs"
  {
    # with fewer clients than tenants, client i has tenant i's key: pgbench draws from those
    echo "\\set k random(1, $((clients < ${#tenants[@]} ? clients : ${#tenants[@]})))"
    echo "\\set r1 random(0, 999999)"
    echo "begin;"
    echo "select set_config('role', 'atl_app', true), set_config('app.tenant_id', ($tenant_array)[:k], true);"
    case $kind in
      audit)
        echo "select tenant_id, id::text, trace_id, agent_id, route, mode, status, http_status, latency_ms, user_id, error, created_at"
        echo "from atl.audit_log_query(${a[0]}, ${a[1]}, ${a[2]}, ${a[3]}, ${a[4]}, ${a[5]}, ${a[6]}, null, 51);"
        ;;
      events)
        echo "select tenant_id, id::text, domain, workflow_name, agent, trust_level, stage, tool_name, tool_args, tool_result,"
        echo "  status, approval_request_id::text, sandbox_id, trace_id, mode, latency_ms, error, created_at"
        echo "from atl.event_query(${a[0]}, ${a[1]}, ${a[2]}, ${a[3]}, ${a[4]}::uuid, ${a[5]}, ${a[6]}, ${a[7]}, null, 51);"
        ;;
      approvals)
        echo "select atl.approval_list(${a[0]}, ${a[1]}, null, 51);"
        ;;
    esac
    echo "commit;"
  } >"$2"
  # pgbench takes ":name" as a variable: no text of the script may hold a colon before a letter
  sed -i "s/':'/chr(58)/g" "$2"
}

# ---- phases

atl_phase() {
  say "atl $1: $clients clients for ${seconds}s"
  local status=0 prof_pid=
  if [[ $pprof == "$1" && $clients == "${client_set##* }" ]]; then
    curl -sS --max-time $((seconds + 10)) -o "$tmp/cpu.pprof" \
      "http://$pprof_addr/debug/pprof/profile?seconds=$((seconds > 2 ? seconds - 2 : 1))" &
    prof_pid=$!
  fi
  run "$tmp/loadgen" -method GET -urls-file "$tmp/$1.urls" -c "$clients" -duration "${seconds}s" \
    >"$tmp/loadgen.out" || status=$?
  sed '$d' "$tmp/loadgen.out" >&2
  local line
  line=$(tail -n 1 "$tmp/loadgen.out")
  kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$line"; }
  rps=$(kv rps) p50=$(kv p50_ms) p99=$(kv p99_ms)
  local non2xx errors
  non2xx=$(kv non2xx) errors=$(kv errors)
  [[ -n $rps && -n $non2xx ]] || die "could not read the loadgen's result (exit $status): $line"
  if ((non2xx > 0 || errors > 0 || status != 0)); then
    printf 'reads.sh: FAILED: atl %s: %s non-2xx answers, %s transport errors\n' "$1" "$non2xx" "$errors" >&2
    failed=1
  fi
  if [[ -n $prof_pid ]]; then
    wait "$prof_pid" || true
    if [[ -s $tmp/cpu.pprof ]]; then
      say "CPU profile of the service during '$1' (go tool pprof -top)"
      (cd "$root" && go tool pprof -top -nodecount=25 "$tmp/atl" "$tmp/cpu.pprof" 2>/dev/null) >&2 || true
    fi
  fi
}

pg_phase() {
  say "pgbench $1: $clients clients for ${seconds}s"
  rm -f "$tmp"/pgbench_log.*
  local status=0 jobs=$threads
  ((jobs > clients)) && jobs=$clients
  run "$pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$seconds" -f "$tmp/$1.sql" --log \
    --log-prefix="$tmp/pgbench_log" "$bench_url" >"$tmp/pgbench.out" 2>"$tmp/pgbench.err" || status=$?
  rps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$tmp/pgbench.out")
  local nfailed
  nfailed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tmp/pgbench.out")
  if [[ -z $rps ]]; then
    cat "$tmp/pgbench.out" "$tmp/pgbench.err" >&2
    die "could not read pgbench's tps (exit $status)"
  fi
  if ((status != 0 || ${nfailed:-0} > 0)); then
    printf 'reads.sh: FAILED: pgbench %s exited %s with %s failed transactions\n' "$1" "$status" "${nfailed:-0}" >&2
    tail -n 5 "$tmp/pgbench.err" >&2
    failed=1
  fi
  cat "$tmp"/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n >"$tmp/pgbench.lat"
  p50=$(pct "$tmp/pgbench.lat" 50) p99=$(pct "$tmp/pgbench.lat" 99)
}

label() {
  case $1 in
    first) echo "audit/logs first page" ;;
    cursor) echo "audit/logs ?cursor (random depth)" ;;
    agent) echo "audit/logs ?agent_id" ;;
    trace) echo "audit/logs ?trace_id" ;;
    status) echo "audit/logs ?status" ;;
    mode) echo "audit/logs ?mode" ;;
    window) echo "audit/logs ?since&until (1 h)" ;;
    events) echo "events ?agent" ;;
    approvals) echo "approvals ?status=PENDING" ;;
  esac
}

rows=()
for clients in $client_set; do
  for c in $cases; do
    urls "$c" "$tmp/$c.urls"
    pgscript "$c" "$tmp/$c.sql"
    # one request first, so that a broken URL shows as such and not as a failed phase
    printf 'Authorization: Bearer %s\n' "${keys%%,*}" >"$tmp/auth.hdr"
    code=$(curl -sS -o "$tmp/probe.json" -w '%{http_code}' --max-time 10 -H @"$tmp/auth.hdr" "$(head -n 1 "$tmp/$c.urls")")
    rm -f "$tmp/auth.hdr"
    [[ $code == 200 ]] || die "case $c: $(head -n 1 "$tmp/$c.urls") answered $code: $(head -c 300 "$tmp/probe.json")"
    pg_phase "$c"
    base_rps=$rps base_p50=$p50 base_p99=$p99
    atl_phase "$c"
    rows+=("$(awk -v l="$(label "$c")" -v c="$clients" -v br="$base_rps" -v b5="$base_p50" -v b9="$base_p99" -v r="$rps" -v a5="$p50" -v a9="$p99" 'BEGIN {
      printf "%-36s %7s %9.1f %7.2f %7.2f   %9.1f %7.2f %7.2f   %6.2f %6.2f", l, c, br, b5, b9, r, a5, a9, (br > 0 ? r / br : 0), (b9 > 0 ? a9 / b9 : 0) }')")
  done
done

if grep -q '"level":"ERROR"' "$tmp/atl.log"; then
  grep '"level":"ERROR"' "$tmp/atl.log" | head -n 5 >&2
  printf 'reads.sh: FAILED: the service logged errors\n' >&2
  failed=1
fi

printf '%-36s %7s %25s   %25s   %13s\n' "" "" "pgbench (same SQL)" "atl (HTTP)" "atl/pgbench"
printf '%-36s %7s %9s %7s %7s   %9s %7s %7s   %6s %6s\n' "" clients "tx/s" "p50 ms" "p99 ms" "req/s" "p50 ms" "p99 ms" rate p99
printf '%s\n' "${rows[@]}"
printf '(%s audit rows; clients spread over %s tenants: %s; limit 50, 51 rows fetched)\n' "$total" "${#tenants[@]}" "$tenant_list"
exit "$failed"
