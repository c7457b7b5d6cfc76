#!/usr/bin/env bash
# bench/idle.sh: the service's memory with many idle keep-alive connections.
# Starts the service built from this checkout on a throw-away database,
# creates a tenant, warms it up with IDLE_WARM_SECONDS of closed-loop
# requests, reads VmRSS from /proc/<pid>/status (the baseline), then opens
# IDLE_CONNS connections with bench/idleconns, sends one authenticated
# request on each (GET IDLE_PATH) and holds them open, and reads VmRSS
# again. Prints both in MB, the ratio and the cost per connection. Exits
# non-zero if a connection failed or the server closed one while held.
# Environment: see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
conns=${IDLE_CONNS:-1000}
hold=${IDLE_HOLD_SECONDS:-15}
warm=${IDLE_WARM_SECONDS:-5}
path=${IDLE_PATH:-/api/v1/audit/logs}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'idle.sh: %s\n' "$*" >&2
  exit 1
}
for v in conns hold warm start_timeout; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $path =~ ^/[A-Za-z0-9/_?=\&.-]*$ ]] || die "IDLE_PATH must be a plain path, got '$path'"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"
for tool in psql curl go awk; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

# each connection is a descriptor in the client and one in the service (both started from here)
need=$((conns + 256))
if (($(ulimit -n) < need)); then
  ulimit -n "$need" 2>/dev/null || die "ulimit -n is $(ulimit -n) and cannot be raised to $need (hard limit $(ulimit -Hn))"
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-idle.XXXXXX")
db=atl_idle_$$
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
    drop_db "$base_url" "$db" ||
      printf 'idle.sh: could not drop database %s\n' "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building atl, bench/loadgen and bench/idleconns"
(cd "$root" && go build -o "$tmp/atl" . && go build -o "$tmp/loadgen" ./bench/loadgen &&
  go build -o "$tmp/idleconns" ./bench/idleconns)
if [[ -n $port ]]; then
  port_in_use "$port" && die "port $port is in use (BENCH_PORT)"
else
  port=$(free_port 18481 18580) || die "no free port in 18481-18580; set BENCH_PORT"
fi
api="http://127.0.0.1:$port/api/v1"
say "creating database $db"
db_created=1
psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null
admin_token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
say "starting atl on 127.0.0.1:$port"
env DATABASE_URL="$bench_url" PORT="$port" ATL_ADMIN_TOKEN="$admin_token" ATL_MIGRATE=true LIVE_ENABLED=false \
  "$tmp/atl" >"$tmp/atl.log" 2>&1 &
atl_pid=$!
wait_healthy "$api/health/db" "$atl_pid" "$tmp/atl.log" "$start_timeout" || die "start-up failed"

printf 'Authorization: Bearer %s\n' "$admin_token" >"$tmp/op.hdr"
out=$(curl -sS --max-time 10 -H @"$tmp/op.hdr" -H 'Content-Type: application/json' \
  --data-binary '{"id":"idle1","name":"Idle 1"}' "$api/tenants")
key=$(sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p' <<<"$out")
[[ -n $key ]] || die "POST /api/v1/tenants answered: $out"
export ATL_BENCH_TOKEN=$key

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$atl_pid/status"; }
goroutines() {
  curl -sS --max-time 10 -H @"$tmp/op.hdr" "$api/stats" | sed -n 's/.*"goroutines":\([0-9]*\).*/\1/p'
}

say "warming up: 16 clients on GET $path for ${warm}s"
"$tmp/loadgen" -method GET -url "http://127.0.0.1:$port$path" -c 16 -duration "${warm}s" >"$tmp/warm.out" ||
  die "warm-up failed: $(tail -n 3 "$tmp/warm.out")"
sleep 1
before=$(rss_kb) g_before=$(goroutines)
say "baseline: VmRSS $((before / 1024)) MB, $g_before goroutines"

say "opening $conns keep-alive connections, one GET $path on each, held ${hold}s"
"$tmp/idleconns" -addr "127.0.0.1:$port" -path "$path" -n "$conns" -hold "$((hold + 30))s" >"$tmp/idle.out" 2>&1 &
child=$!
for _ in $(seq 300); do
  grep -q '^open=' "$tmp/idle.out" && break
  kill -0 "$child" 2>/dev/null || break
  sleep 0.1
done
grep -q "^open=$conns answered=$conns" "$tmp/idle.out" || die "not every connection was answered: $(cat "$tmp/idle.out")"
sleep "$hold"
after=$(rss_kb) g_after=$(goroutines)
established=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$(printf ':%04X' "$port")" '$2 ~ p"$" && $4 == "01"' | wc -l)
kill -TERM "$child"
status=0
wait "$child" || status=$?
child=
cat "$tmp/idle.out" >&2
((status == 0)) || die "the connection holder failed (exit $status): the server closed connections while they were idle"

awk -v b="$before" -v a="$after" -v n="$conns" -v gb="$g_before" -v ga="$g_after" -v e="$established" 'BEGIN {
  printf "%-44s %10s %10s %8s\n", "", "baseline", "idle conns", "ratio"
  printf "%-44s %10.1f %10.1f %8.2f\n", "VmRSS MB (" n " keep-alive connections)", b / 1024, a / 1024, a / b
  printf "%-44s %10d %10d\n", "goroutines", gb, ga
  printf "(%.1f KB per connection; %d connections established on the port while held)\n", (a - b) / n, e
}'
