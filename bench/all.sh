#!/usr/bin/env bash
# bench/all.sh: every benchmark in one command (make bench): the machine, then
# bench/writes.sh, bench/reads.sh (which loads its 10-million-row database
# with bench/load10m.sh), bench/idle.sh and the Go benchmarks. Each script's
# table goes to stdout, progress to stderr; BENCH_ONLY picks some of them.
# Exits non-zero if any part failed, after running the others.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
only=${BENCH_ONLY:-writes reads idle go}
for p in $only; do
  [[ $p =~ ^(writes|reads|idle|go)$ ]] || {
    echo "all.sh: BENCH_ONLY: unknown part '$p' (writes, reads, idle, go)" >&2
    exit 2
  }
done
base_url=${ATL_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}

echo "## machine ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo "nproc: $(nproc)"
free -h | sed 's/^/  /'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "PostgreSQL: $(psql "$base_url" -X -At -c 'show server_version' 2>/dev/null || echo unknown)"
echo "Go: $(go version)"
echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

failed=()
part() {
  local name=$1
  shift
  echo
  echo "## $name"
  "$@" || failed+=("$name")
}
for p in $only; do
  case $p in
    writes) part "bench/writes.sh" bash "$root/bench/writes.sh" ;;
    reads) part "bench/reads.sh" bash "$root/bench/reads.sh" ;;
    idle) part "bench/idle.sh" bash "$root/bench/idle.sh" ;;
    go) part "go test -bench" bash -c "cd '$root' && go test -run '^\$' -bench \"\${BENCH_GO:-.}\" -benchmem -count=1 ." ;;
  esac
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#failed[@]})); then
  echo "all.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
