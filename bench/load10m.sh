#!/usr/bin/env bash
# bench/load10m.sh: a throw-away ATL database with a 10-million-row audit
# trail over 1,000 tenants (plus events and approval requests), for read
# benchmarks. It creates the database, applies the migrations with the atl
# binary built from this checkout, runs bench/load10m.sql as a superuser
# (triggers off: see that file; atl.audit_verify() is not meaningful on the
# result), then VACUUM ANALYZE, and prints how long each step took. The
# database is dropped on exit unless BENCH_KEEP=1. Environment: see
# bench/README.md.
set -euo pipefail
umask 077

base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
rows=${LOAD_ROWS:-10000000}
events=${LOAD_EVENTS:-1000000}
approvals=${LOAD_APPROVALS:-200000}
tenants=${LOAD_TENANTS:-1000}
days=${LOAD_DAYS:-30}
db=${LOAD_DB:-atl_load_$$}
keep=${BENCH_KEEP:-0}
period=10000 # slots of the tenant pattern (see load10m.sql)

die() {
  printf 'load10m.sh: %s\n' "$*" >&2
  exit 1
}
for v in rows events approvals tenants days; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for v in rows events approvals; do
  ((${!v} % period == 0)) || die "LOAD_${v^^} must be a multiple of $period, got ${!v}"
done
((tenants <= 9999)) || die "LOAD_TENANTS must be at most 9999"
[[ $db =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "LOAD_DB must be a plain lower-case database name, got '$db'"
for tool in psql go; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atl-load.XXXXXX")
url=$(db_url "$base_url" "$db")
db_created=0

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if ((db_created)) && [[ $keep != 1 || $status != 0 ]]; then
    drop_db "$base_url" "$db" ||
      printf 'load10m.sh: could not drop database %s\n' "$db" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(psql "$base_url" -X -At -c "select rolsuper from pg_roles where rolname = current_user") == t ]] ||
  die "the role of ATL_BENCH_DATABASE_URL must be a superuser (the load sets session_replication_role)"
# the trail needs about 500 bytes a row with its indexes, and WAL on top
need_kb=$(((rows + events * 2) / 1000 * 600))
data_dir=$(psql "$base_url" -X -At -c "show data_directory" 2>/dev/null || true)
if [[ -n $data_dir && -d $data_dir ]]; then
  avail_kb=$(df -Pk "$data_dir" | awk 'NR == 2 {print $4}')
  ((avail_kb > need_kb * 2)) || die "about $((need_kb / 1024)) MB needed (twice that free), $((avail_kb / 1024)) MB free at $data_dir"
fi

t0=$SECONDS
printf '==> building atl\n' >&2
(cd "$root" && go build -o "$tmp/atl" .)
printf '==> creating database %s and applying the migrations\n' "$db" >&2
db_created=1
psql "$base_url" -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null
DATABASE_URL=$url "$tmp/atl" migrate up >"$tmp/migrate.out" || {
  cat "$tmp/migrate.out" >&2
  die "migrations failed"
}
t1=$SECONDS
printf '==> loading %s audit rows, %s events, %s approval requests over %s tenants (%s days)\n' \
  "$rows" "$events" "$approvals" "$tenants" "$days" >&2
vars=(-v rows="$rows" -v events="$events" -v approvals="$approvals" -v tenants="$tenants" -v period="$period" -v days="$days")
# step NAME LOG [VAR=VALUE...]: one step of bench/load10m.sql in its own session.
step() {
  local name=$1 log=$2
  shift 2
  local extra=() kv
  for kv in "$@"; do extra+=(-v "$kv"); done
  psql "$url" -X -q -v ON_ERROR_STOP=1 "${vars[@]}" -v step="$name" "${extra[@]}" -f "$root/bench/load10m.sql" >"$log" 2>&1
}
# took LOG: each "--- step" line of LOG with the time its statements took.
took() {
  awk '/^--- / { if (name != "") printf "    %-60s %7.1f s\n", name, ms / 1000; name = $0; ms = 0 }
    /^Time: / { ms += $2 }
    END { if (name != "") printf "    %-60s %7.1f s\n", name, ms / 1000 }' "$1" >&2
}
step prepare "$tmp/prepare.out" || {
  cat "$tmp/prepare.out" >&2
  die "the load's preparation failed"
}
took "$tmp/prepare.out"
t2=$SECONDS
half=$(((rows / period + 1) / 2 * period))
pids=()
step audit "$tmp/audit1.out" lo=0 hi="$half" &
pids+=($!)
step audit "$tmp/audit2.out" lo="$half" hi="$rows" &
pids+=($!)
step side "$tmp/side.out" &
pids+=($!)
failed_load=0
for p in "${pids[@]}"; do wait "$p" || failed_load=1; done
if ((failed_load)); then
  cat "$tmp/audit1.out" "$tmp/audit2.out" "$tmp/side.out" >&2
  die "the load failed"
fi
for f in audit1 audit2 side; do took "$tmp/$f.out"; done
t3=$SECONDS
printf '    rows inserted in %s s (the two audit sessions and the side session run at once)\n' $((t3 - t2)) >&2
step finish "$tmp/finish.out" || {
  cat "$tmp/finish.out" >&2
  die "the index rebuild failed"
}
took "$tmp/finish.out"
t4=$SECONDS
sed -n '/relname/,/rows)/p' "$tmp/finish.out"
printf 'load10m: database=%s rows=%s events=%s approvals=%s tenants=%s migrate_s=%s insert_s=%s index_vacuum_s=%s total_s=%s\n' \
  "$db" "$rows" "$events" "$approvals" "$tenants" $((t1 - t0)) $((t3 - t2)) $((t4 - t3)) $((t4 - t0))
if [[ $keep == 1 ]]; then
  printf 'load10m: kept database %s (drop it with: psql -c '\''drop database "%s" with (force)'\'')\n' "$db" "$db" >&2
fi
