#!/usr/bin/env bash
# bench/writes.sh: the service's write paths against what a user would have
# without ATL ("plain": durable inserts of the same rows under forced row-level
# security, with the seed's indexes and no hash chain or triggers), on one
# throw-away database, in one run:
#
#   execute  POST /api/v1/agents/bot/execute, L0 dry run  vs one transaction:
#            the gate's event row + its audit row into plain.*
#   events   POST /api/v1/events, one event a request     vs the event row + the
#            audit row
#   batch    POST /api/v1/events with BATCH_SIZE events   vs one transaction of
#            BATCH_SIZE event rows (generate_series) + one audit row
#
# execute and events run at each client count of BENCH_CLIENT_SET for each
# tenant count of BENCH_TENANT_SET; batch at BATCH_CLIENTS over BATCH_TENANTS.
# During every phase a sampler records the database's wait events (every
# 200 ms) and the machine's CPU use: the "bounds" table. Progress goes to
# stderr, the tables to stdout. Exits non-zero if any HTTP answer was not 2xx,
# any pgbench transaction failed or the service logged an error. Environment:
# see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
seconds=${BENCH_SECONDS:-15}
client_set=${BENCH_CLIENT_SET:-1 16 64}
tenant_set=${BENCH_TENANT_SET:-1 16}
batch_size=${BATCH_SIZE:-1000}
batch_clients=${BATCH_CLIENTS:-4}
batch_tenants=${BATCH_TENANTS:-$batch_clients}
threads=${BENCH_THREADS:-2}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}
cases=${BENCH_CASES:-execute events batch}
profile=${BENCH_PROFILE:-0}
profile_out=${BENCH_PROFILE_OUT:-}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'writes.sh: %s\n' "$*" >&2
  exit 1
}

for v in seconds batch_size batch_clients batch_tenants threads start_timeout; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for c in $client_set; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENT_SET must hold positive integers, got '$client_set'"
done
for t in $tenant_set; do
  [[ $t =~ ^[1-9][0-9]*$ ]] || die "BENCH_TENANT_SET must hold positive integers, got '$tenant_set'"
done
[[ -n ${client_set// /} && -n ${tenant_set// /} ]] || die "BENCH_CLIENT_SET and BENCH_TENANT_SET must not be empty"
for c in $cases; do
  [[ $c =~ ^(execute|events|batch)$ ]] || die "BENCH_CASES: unknown case '$c' (execute, events, batch)"
done
[[ $profile =~ ^[01]$ ]] || die "BENCH_PROFILE must be 0 or 1, got '$profile'"
((batch_size <= 1000)) || die "BATCH_SIZE must be at most 1000 (the API's limit)"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"

pgbench=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
[[ -x $pgbench ]] || die "pgbench not found; install postgresql-contrib (Debian: apt-get install postgresql-15 or postgresql-client-15), or set PGBENCH"
for tool in psql curl go awk sort timeout; do
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
sampler=
prof_pid=
db_created=0
role_created=0
failed=0

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  local p
  for p in "$child" "$sampler" "$prof_pid"; do
    if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  [[ -n $atl_pid ]] && stop_pid "$atl_pid"
  if ((db_created)); then
    psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "drop database if exists \"$db\" with (force)" >/dev/null ||
      printf 'writes.sh: could not drop database %s\n' "$db" >&2
  fi
  # The role is the cluster's: drop it only if this run made it, and leave it
  # if another run's database still holds grants to it.
  if ((role_created)); then
    psql "$base_url" -X -q -c "drop role if exists plain_bench" >/dev/null 2>&1
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

has() { [[ " $cases " == *" $1 "* ]]; }
# tenants to create: the largest count any phase uses
max_tenants=0
has batch && max_tenants=$batch_tenants
for t in $tenant_set; do
  if ((t > max_tenants)); then max_tenants=$t; fi
done

# ---- service, tenants, keys, policies

say "building atl and bench/loadgen"
(cd "$root" && go build -o "$tmp/atl" . && go build -o "$tmp/loadgen" ./bench/loadgen)

if [[ -n $port ]]; then
  port_in_use "$port" && die "port $port is in use (BENCH_PORT)"
else
  port=$(free_port 18181 18280) || die "no free port in 18181-18280; set BENCH_PORT"
fi
api="http://127.0.0.1:$port/api/v1"
pprof_addr=
if ((profile)); then
  pprof_addr=127.0.0.1:$(free_port 16061 16160) || die "no free port in 16061-16160 for pprof"
fi

say "creating database $db"
db_created=1
psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null

admin_token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
say "starting atl on 127.0.0.1:$port (log: $tmp/atl.log)"
env DATABASE_URL="$bench_url" PORT="$port" ATL_ADMIN_TOKEN="$admin_token" ATL_MIGRATE=true LIVE_ENABLED=false \
  ATL_PPROF_ADDR="$pprof_addr" "$tmp/atl" >"$tmp/atl.log" 2>&1 &
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

say "creating $max_tenants tenants, each with an agent key and an L0 policy for tool search"
agent_keys=()
for i in $(seq 1 "$max_tenants"); do
  call POST /tenants "$admin_token" "{\"id\":\"bench$i\",\"name\":\"Bench $i\"}"
  [[ $resp_code == 201 ]] || die "POST /api/v1/tenants answered $resp_code: $resp_body"
  tenant_key=$(json_api_key "$resp_body")
  call PUT /policies/search "$tenant_key" '{"trust_level":"L0"}'
  [[ $resp_code == 200 || $resp_code == 201 ]] || die "PUT /api/v1/policies/search answered $resp_code: $resp_body"
  call POST /keys "$tenant_key" '{"role":"agent","subject":"bot"}'
  [[ $resp_code == 201 ]] || die "POST /api/v1/keys answered $resp_code: $resp_body"
  agent_keys+=("$(json_api_key "$resp_body")")
done
# keys_of N: the agent keys of tenants bench1..benchN, for loadgen's clients in turn.
keys_of() {
  local IFS=,
  printf '%s' "${agent_keys[*]:0:$1}"
}

event='{"tool_name":"search","status":"succeeded","tool_args":{"q":"x"}}'
execute='{"tool":"search","args":{"q":"x"}}'
batch=$(awk -v n="$batch_size" -v e="$event" 'BEGIN {
  printf "{\"events\":["; for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "," : ""), e; printf "]}" }')

# ---- the baseline: plain tables in the migrated database

# Copies of the two tables (columns, defaults, CHECKs; LIKE copies no triggers
# and no foreign keys), the primary key and the indexes sql/001 creates on
# them (not the later migrations' list indexes or the chain's unique seq),
# RLS forced, written as a NOLOGIN NOBYPASSRLS role.
say "creating the plain baseline tables (schema plain, role plain_bench)"
role_created=$(psql "$base_url" -X -q -At -v ON_ERROR_STOP=1 -c \
  "select count(*) = 0 from pg_roles where rolname = 'plain_bench'" | sed 's/^t$/1/; s/^f$/0/')
if ((role_created)); then
  psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create role plain_bench nologin nobypassrls" >/dev/null ||
    die "could not create role plain_bench"
fi
psql "$bench_url" -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || die "could not create the plain tables"
grant plain_bench to current_user;
create schema plain;
create table plain.agent_action_events (like atl.agent_action_events including defaults including constraints);
create table plain.audit_logs (like atl.audit_logs including defaults including constraints);
-- Nothing of ATL may run on the baseline's path: drop CHECKs and defaults that call into schema atl.
do $$
declare
  r record;
begin
  for r in select c.conrelid::regclass as tbl, c.conname from pg_constraint c
           where c.conrelid in ('plain.agent_action_events'::regclass, 'plain.audit_logs'::regclass)
             and c.contype = 'c' and pg_get_constraintdef(c.oid) ~ '\matl\.' loop
    execute format('alter table %s drop constraint %I', r.tbl, r.conname);
  end loop;
  for r in select d.adrelid::regclass as tbl, a.attname from pg_attrdef d
           join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
           where d.adrelid in ('plain.agent_action_events'::regclass, 'plain.audit_logs'::regclass)
             and pg_get_expr(d.adbin, d.adrelid) ~ '\matl\.' loop
    execute format('alter table %s alter column %I drop default', r.tbl, r.attname);
  end loop;
end $$;
alter table plain.audit_logs add primary key (tenant_id, id);
create index on plain.audit_logs (tenant_id, created_at desc, id desc);
create index on plain.audit_logs (tenant_id, agent_id, created_at desc, id desc);
create index on plain.audit_logs (tenant_id, trace_id);
alter table plain.agent_action_events add primary key (tenant_id, id);
create index on plain.agent_action_events (tenant_id, created_at desc, id desc);
create index on plain.agent_action_events (tenant_id, agent, created_at desc, id desc);
create index on plain.agent_action_events (tenant_id, trace_id);
create index on plain.agent_action_events (tenant_id, approval_request_id) where approval_request_id is not null;
alter table plain.audit_logs enable row level security;
alter table plain.audit_logs force row level security;
alter table plain.agent_action_events enable row level security;
alter table plain.agent_action_events force row level security;
create policy tenant on plain.audit_logs
  using (tenant_id = current_setting('app.tenant_id', true))
  with check (tenant_id = current_setting('app.tenant_id', true));
create policy tenant on plain.agent_action_events
  using (tenant_id = current_setting('app.tenant_id', true))
  with check (tenant_id = current_setting('app.tenant_id', true));
grant usage on schema plain to plain_bench;
grant select, insert on plain.audit_logs, plain.agent_action_events to plain_bench;
SQL

# plain_script CASE TENANTS: the pgbench script of one request's writes. The
# tenant is drawn in SQL among bench1..benchTENANTS; one trace id a request,
# as the service does. No text holds a colon before a letter: pgbench reads
# :name as one of its variables.
actor=00000000-0000-4000-8000-000000000001
plain_script() {
  local status=allowed source=gate route="'POST /api/v1/agents/' || chr(58) || 'agent_id/execute'" http=200
  [[ $1 == execute ]] || status=succeeded source=agent route="'POST /api/v1/events'" http=201
  echo "begin;"
  echo "select set_config('role', 'plain_bench', true), set_config('app.tenant_id', 'bench' || (1 + floor(random() * $2))::int, true), set_config('app.trace', md5(random()::text), true);"
  local values="current_setting('app.tenant_id'), 'default', 'bot', 'L0', 'execute', 'search', '{\"q\":\"x\"}'::jsonb, '$status', current_setting('app.trace'), 'dry_run', '$source', '$actor'::uuid"
  echo "insert into plain.agent_action_events (tenant_id, domain, agent, trust_level, stage, tool_name, tool_args, status, trace_id, mode, source, actor_key_id)"
  if [[ $1 == batch ]]; then
    echo "  select $values from generate_series(1, $batch_size);"
  else
    echo "  values ($values);"
  fi
  echo "insert into plain.audit_logs (tenant_id, trace_id, agent_id, route, mode, status, http_status, latency_ms, actor_key_id, actor_subject)"
  echo "  values (current_setting('app.tenant_id'), current_setting('app.trace'), 'bot', $route, 'dry_run', 'ok', $http, 1, '$actor'::uuid, 'bot');"
  echo "commit;"
}

# ---- what bounds a phase: wait events, CPU

# The sampler: one psql session, a sample every 200 ms of the other active
# sessions of the bench database, one line a sample ("-" when none), until
# sampler_stop or at most the phase plus 60 s.
cat >"$tmp/sample.sql" <<'SQL'
select coalesce(string_agg(coalesce(wait_event_type || ':' || wait_event, 'CPU'), ' '), '-') from pg_stat_activity where datname = current_database() and state = 'active' and pid <> pg_backend_pid()
\watch 0.2
SQL
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
# cpu_now: "busy total" jiffies of the machine since boot, from /proc/stat.
cpu_now() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
# svc_now: the service's user+system CPU time in clock ticks.
svc_now() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$atl_pid/stat" 2>/dev/null || echo 0; }

bounds_start() {
  timeout $((seconds + 60)) psql "$bench_url" -X -q -At -f "$tmp/sample.sql" >"$tmp/waits" 2>"$tmp/sampler.err" &
  sampler=$!
  cpu0=$(cpu_now) svc0=$(svc_now)
}

# bounds_stop SIDE: stops the sampler and sets cpu_busy (machine %), svc_cpu
# (the service's share of the machine, %; atl phases only), active (mean
# active sessions a sample), idle_pct (samples with none) and top3.
bounds_stop() {
  local cpu1 svc1
  cpu1=$(cpu_now) svc1=$(svc_now)
  if [[ -n $sampler ]]; then
    kill -TERM "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=
  fi
  read -r cpu_busy svc_cpu < <(awk -v a="$cpu0" -v b="$cpu1" -v s0="$svc0" -v s1="$svc1" -v hz="$clk_tck" -v side="$1" 'BEGIN {
    split(a, x, " "); split(b, y, " "); dt = y[2] - x[2]
    if (dt <= 0) { print "- -"; exit }
    # /proc/stat counts USER_HZ per CPU; the service ticks are CLK_TCK: both 100 on Linux.
    printf "%.0f %s\n", 100 * (y[1] - x[1]) / dt, (side == "atl" ? sprintf("%.0f", 100 * (s1 - s0) * (100 / hz) / dt) : "-") }')
  read -r samples active idle_pct top3 < <(awk '
    { n++; if ($1 == "-") { idle++; next } for (i = 1; i <= NF; i++) { c[$i]++; tot++ } }
    END {
      if (n == 0) { print "0 - - (no samples)"; exit }
      out = ""
      for (k = 1; k <= 3; k++) {
        best = ""; bc = 0
        for (e in c) if (c[e] > bc || (c[e] == bc && e < best)) { best = e; bc = c[e] }
        if (bc == 0) break
        out = out (out == "" ? "" : ", ") sprintf("%s %.0f%%", best, 100 * bc / tot)
        delete c[best]
      }
      printf "%d %.1f %.0f %s\n", n, tot / n, 100 * idle / n, (out == "" ? "(none active)" : out)
    }' "$tmp/waits")
  if ((samples == 0)); then
    say "wait sampler produced nothing: $(head -c 300 "$tmp/sampler.err")"
  fi
  bounds_msg="bounds: cpu ${cpu_busy}% (service ${svc_cpu}%), $samples samples, ${active} active sessions a sample, ${idle_pct}% with none; waits: $top3"
}

# ---- phases

# batches: "requests-sum batches-count" of group commit so far, from /metrics.
batches() {
  printf 'Authorization: Bearer %s\n' "$admin_token" >"$tmp/auth.hdr"
  curl -sS --max-time 10 -H @"$tmp/auth.hdr" "http://127.0.0.1:$port/metrics" |
    awk '/^atl_group_commit_batch_requests_sum/ {s = $2} /^atl_group_commit_batch_requests_count/ {c = $2}
      END {printf "%d %d\n", s, c}'
  rm -f "$tmp/auth.hdr"
}

# profile_start: a CPU profile of the service in the background (BENCH_PROFILE=1).
profile_start() {
  local s=5
  ((seconds < 6)) && s=$((seconds > 1 ? seconds - 1 : 1))
  say "taking a ${s}s CPU profile of the service"
  curl -sS --max-time $((s + 20)) -o "$tmp/cpu.pprof" "http://$pprof_addr/debug/pprof/profile?seconds=$s" &
  prof_pid=$!
}
profile_finish() {
  wait "$prof_pid" || true
  prof_pid=
  if [[ ! -s $tmp/cpu.pprof ]]; then
    say "no CPU profile was written"
    return
  fi
  if [[ -n $profile_out ]]; then
    (cd "$root" && go tool pprof -top -nodecount=25 "$tmp/atl" "$tmp/cpu.pprof" 2>/dev/null) >"$profile_out" ||
      say "go tool pprof failed"
    say "CPU profile (go tool pprof -top) written to $profile_out"
  else
    say "CPU profile of the service (go tool pprof -top)"
    (cd "$root" && go tool pprof -top -nodecount=25 "$tmp/atl" "$tmp/cpu.pprof" 2>/dev/null) >&2 || true
  fi
}

# atl_phase LABEL TENANTS CLIENTS PATH BODY [profile]: sets rps p50 p99 from
# bench/loadgen, per_batch (mean requests per group commit) and the bounds.
atl_phase() {
  psql "$bench_url" -X -q -c checkpoint >/dev/null
  say "atl $1: $3 clients over $2 tenants for ${seconds}s"
  local before after
  before=$(batches)
  local status=0
  bounds_start
  [[ ${6:-} == profile ]] && profile_start
  ATL_BENCH_TOKEN=$(keys_of "$2")
  export ATL_BENCH_TOKEN
  run "$tmp/loadgen" -url "$api$4" -c "$3" -duration "${seconds}s" -body "$5" \
    >"$tmp/loadgen.out" || status=$?
  bounds_stop atl
  [[ ${6:-} == profile ]] && profile_finish
  sed '$d' "$tmp/loadgen.out" >&2
  say "$bounds_msg"
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

# plain_phase LABEL TENANTS CLIENTS SCRIPT: sets rps p50 p99 from pgbench and the bounds.
plain_phase() {
  psql "$bench_url" -X -q -c checkpoint >/dev/null
  say "plain $1: $3 clients over $2 tenants for ${seconds}s"
  rm -f "$tmp"/pgbench_log.*
  local status=0 jobs=$threads
  ((jobs > $3)) && jobs=$3
  bounds_start
  run "$pgbench" -n -M prepared -c "$3" -j "$jobs" -T "$seconds" -f "$4" --log --log-prefix="$tmp/pgbench_log" \
    "$bench_url" >"$tmp/pgbench.out" 2>"$tmp/pgbench.err" || status=$?
  bounds_stop plain
  rps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$tmp/pgbench.out")
  local nfailed
  nfailed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tmp/pgbench.out")
  if [[ -z $rps ]]; then
    cat "$tmp/pgbench.out" "$tmp/pgbench.err" >&2
    die "could not read pgbench's tps (exit $status)"
  fi
  say "pgbench: $rps tx/s"
  say "$bounds_msg"
  if ((status != 0 || ${nfailed:-0} > 0)); then
    printf 'writes.sh: FAILED: pgbench %s exited %s with %s failed transactions\n' "$1" "$status" "${nfailed:-0}" >&2
    tail -n 5 "$tmp/pgbench.err" >&2
    failed=1
  fi
  cat "$tmp"/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n >"$tmp/pgbench.lat"
  p50=$(pct "$tmp/pgbench.lat" 50) p99=$(pct "$tmp/pgbench.lat" 99)
}

rows=()
bound_rows=()
# row CASE SIDE TENANTS CLIENTS UNIT RATE P50 P99 BATCH [PLAIN_RATE PLAIN_P50]:
# a line of each table (the bounds from the last phase).
row() {
  rows+=("$(awk -v k="$1" -v s="$2" -v t="$3" -v c="$4" -v u="$5" -v r="$6" -v a="$7" -v b="$8" -v g="$9" \
    -v br="${10:-}" -v bp="${11:-}" 'BEGIN {
    ratio = (br > 0 ? sprintf("%.2f", r / br) : "")
    dp = (br != "" ? sprintf("%+.2f", a - bp) : "")
    line = sprintf("%-8s %-5s %7s %7s %11.1f %-6s %8.2f %8.2f %6s %6s %8s", k, s, t, c, r, u, a, b, g, ratio, dp)
    sub(/ +$/, "", line); print line }')")
  bound_rows+=("$(printf '%-8s %-5s %7s %7s %5s %5s %7s %5s  %s' "$1" "$2" "$3" "$4" "$cpu_busy" "$svc_cpu" \
    "$active" "$idle_pct" "$top3")")
}
mul() { awk -v r="$1" -v n="$2" 'BEGIN { printf "%.1f", r * n }'; }

for t in $tenant_set; do
  for c in $client_set; do
    for k in execute events; do
      has "$k" || continue
      plain_script "$k" "$t" >"$tmp/plain.sql"
      plain_phase "$k" "$t" "$c" "$tmp/plain.sql"
      base=$rps base_p50=$p50
      row "$k" plain "$t" "$c" "tx/s" "$rps" "$p50" "$p99" ""
      prof=
      [[ $k == execute && $t == 1 && $c == 16 ]] && ((profile)) && prof=profile
      if [[ $k == execute ]]; then
        atl_phase "POST /agents/bot/execute" "$t" "$c" /agents/bot/execute "$execute" ${prof:+"$prof"}
      else
        atl_phase "POST /events (1 event)" "$t" "$c" /events "$event"
      fi
      row "$k" atl "$t" "$c" "req/s" "$rps" "$p50" "$p99" "$per_batch" "$base" "$base_p50"
    done
  done
done
if ((profile)) && has execute && [[ " $tenant_set " != *" 1 "* || " $client_set " != *" 16 "* ]]; then
  say "BENCH_PROFILE=1: no profile taken (it is taken in the execute phase at 1 tenant, 16 clients)"
fi
if has batch; then
  plain_script batch "$batch_tenants" >"$tmp/plain.sql"
  plain_phase "batch of $batch_size" "$batch_tenants" "$batch_clients" "$tmp/plain.sql"
  base=$(mul "$rps" "$batch_size") base_p50=$p50
  row batch plain "$batch_tenants" "$batch_clients" "rows/s" "$base" "$p50" "$p99" ""
  atl_phase "POST /events ($batch_size events)" "$batch_tenants" "$batch_clients" /events "$batch"
  row batch atl "$batch_tenants" "$batch_clients" "rows/s" "$(mul "$rps" "$batch_size")" "$p50" "$p99" \
    "$per_batch" "$base" "$base_p50"
fi

if grep -q '"level":"ERROR"' "$tmp/atl.log"; then
  grep '"level":"ERROR"' "$tmp/atl.log" | head -n 5 >&2
  printf 'writes.sh: FAILED: the service logged errors\n' >&2
  failed=1
fi

printf '%-8s %-5s %7s %7s %11s %-6s %8s %8s %6s %6s %8s\n' case side tenants clients rate "" "p50 ms" "p99 ms" \
  batch ratio "+p50 ms"
prev=
for r in "${rows[@]}"; do
  cell=$(awk '{ print $1, $3, $4 }' <<<"$r")
  [[ -n $prev && $cell != "$prev" ]] && echo
  prev=$cell
  printf '%s\n' "$r"
done
printf '(plain: pgbench, one transaction a request, the same rows into plain.* under forced RLS, no chain;\n'
printf ' batch: mean requests per group-commit transaction; ratio: atl rate / plain rate of the same cell;\n'
printf ' +p50 ms: atl p50 - plain p50)\n'
echo
echo "bounds"
printf '%-8s %-5s %7s %7s %5s %5s %7s %5s  %s\n' case side tenants clients cpu% svc% active idle% \
  "top wait events (share of active-session samples; CPU: no wait event)"
prev=
for r in "${bound_rows[@]}"; do
  cell=$(awk '{ print $1, $3, $4 }' <<<"$r")
  [[ -n $prev && $cell != "$prev" ]] && echo
  prev=$cell
  printf '%s\n' "$r"
done
printf '(cpu%%: machine busy over the phase, /proc/stat; svc%%: the service process, share of the machine;\n'
printf ' active: mean active database sessions a 200 ms sample; idle%%: samples with none active)\n'
exit "$failed"
