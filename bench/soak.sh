#!/usr/bin/env bash
# bench/soak.sh: a steady mixed load against the service for a long time
# (default 10 minutes), one row of figures a minute; fails when any request
# errored, the hash chain does not verify, or memory keeps growing.
#
# The table goes to stdout, progress to stderr. Environment: see bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
duration=${SOAK_DURATION:-10m}
interval=${SOAK_INTERVAL:-1m}
clients=${SOAK_CLIENTS:-8}
store=${SOAK_STORE:-postgres}
port=${BENCH_PORT:-}
start_timeout=${BENCH_START_TIMEOUT:-60}

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'soak.sh: %s\n' "$*" >&2
  exit 2
}

[[ $clients =~ ^[1-9][0-9]*$ ]] || die "SOAK_CLIENTS must be a positive integer, got '$clients'"
[[ $store == postgres || $store == jsonl ]] || die "SOAK_STORE must be postgres or jsonl, got '$store'"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "BENCH_PORT must be a port number, got '$port'"
for tool in go curl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[[ $store == jsonl ]] || command -v psql >/dev/null || die "psql is required"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-soak.XXXXXX")
db=atl_soak_$$
soak_url=$(db_url "$base_url" "$db")
atl_pid=
child=
db_created=0

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  [[ -n $child ]] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
  [[ -n $atl_pid ]] && stop_pid "$atl_pid"
  if ((db_created)); then
    psql "$base_url" -X -q -c "drop database if exists \"$db\" with (force)" >/dev/null ||
      printf 'soak.sh: could not drop database %s\n' "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building atl and bench/soak"
(cd "$root" && go build -o "$tmp/atl" . && go build -o "$tmp/soak" ./bench/soak)

if [[ -z $port ]]; then
  port=$(free_port 18281 18380) || die "no free port in 18281-18380; set BENCH_PORT"
fi

operator=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
storage=(ATL_DATA_DIR="$tmp/data")
approvals=false
if [[ $store == postgres ]]; then
  say "creating database $db"
  db_created=1
  psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null
  storage=(DATABASE_URL="$soak_url")
  approvals=true
fi

say "starting atl ($store) on 127.0.0.1:$port (log: $tmp/atl.log)"
env "${storage[@]}" PORT="$port" ATL_ADMIN_TOKEN="$operator" LIVE_ENABLED=false "$tmp/atl" >"$tmp/atl.log" 2>&1 &
atl_pid=$!
wait_healthy "http://127.0.0.1:$port/api/v1/health" "$atl_pid" "$tmp/atl.log" "$start_timeout" || die "start-up failed"

say "soak: $clients clients for $duration, a row every $interval"
status=0
ATL_SOAK_TOKEN=$operator "$tmp/soak" -url "http://127.0.0.1:$port" -duration "$duration" -interval "$interval" \
  -c "$clients" -approvals="$approvals" &
child=$!
wait "$child" || status=$?
child=
if grep -q '"level":"ERROR"' "$tmp/atl.log"; then
  say "the service logged errors:"
  grep '"level":"ERROR"' "$tmp/atl.log" | head -n 5 >&2
  status=1
fi
exit "$status"
