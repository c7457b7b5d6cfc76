#!/usr/bin/env bash
# make test: go test over every package with its usual closing lines (ok/FAIL
# per package, a failed test's output), then a summary of what skipped and why.
# Arguments go to go test (the Makefile passes -race -count=1).
set -uo pipefail
cd "$(dirname "$0")/.."
go build -o "${TMPDIR:-/tmp}/atl-testsummary.$$" ./scripts/testsummary || exit 2
trap 'rm -f "${TMPDIR:-/tmp}/atl-testsummary.$$"' EXIT
go test -json "$@" ./... | "${TMPDIR:-/tmp}/atl-testsummary.$$"
