# bench/lib.sh: shared by the benchmark scripts (sourced, not run).
# shellcheck shell=bash

# db_url BASE DB: BASE (a postgres:// URL) with its database name replaced by DB.
db_url() {
  local noq=${1%%\?*} query=
  [[ $1 == *\?* ]] && query="?${1#*\?}"
  if [[ ${noq#*://} == */* ]]; then
    printf '%s/%s%s\n' "${noq%/*}" "$2" "$query"
  else
    printf '%s/%s%s\n' "$noq" "$2" "$query"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port FROM TO: the first port of the range nothing listens on.
free_port() {
  local p
  for p in $(seq "$1" "$2"); do
    if ! port_in_use "$p"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# stop_pid PID: SIGTERM, up to 10 s to drain, then SIGKILL.
stop_pid() {
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 50); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# wait_healthy URL PID LOG TIMEOUT: until URL answers 200; fails when PID
# exits or TIMEOUT seconds pass, showing the end of LOG.
wait_healthy() {
  local started=$SECONDS
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == 200 ]]; do
    if ! kill -0 "$2" 2>/dev/null; then
      tail -n 20 "$3" >&2
      echo "atl exited before it became healthy" >&2
      return 1
    fi
    if ((SECONDS - started > $4)); then
      tail -n 20 "$3" >&2
      echo "atl not healthy after $4s" >&2
      return 1
    fi
    sleep 0.2
  done
}

# pct FILE P: the P-th percentile (nearest rank) of FILE's sorted numbers, in
# microseconds, printed in milliseconds.
pct() {
  awk -v p="$2" '{v[NR] = $1}
    END {
      if (NR == 0) { print "0"; exit }
      r = p / 100 * NR; i = int(r); if (i < r) i++; if (i < 1) i = 1
      printf "%.3f", v[i] / 1000
    }' "$1"
}

# drop_db BASE DB: drops DB with (force), retrying for a while, since the
# server may be restarting (another job's setup, say) when a run ends.
drop_db() {
  for _ in $(seq 15); do
    psql "$1" -X -q -c "drop database if exists \"$2\" with (force)" >/dev/null 2>&1 && return 0
    sleep 2
  done
  return 1
}
