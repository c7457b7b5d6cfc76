#!/usr/bin/env bash
# CI: install the TypeScript client's dev dependencies (clients/typescript) from
# its lock file and build it, so TestTypeScriptClient runs instead of skipping.
# Safe to run again: npm ci runs only when the lock file changed since the last
# install, the build only when a source is newer than dist/; Node comes from
# Debian only when none is on PATH.
set -euo pipefail
cd "$(dirname "$0")/../clients/typescript"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if ! apt-cache policy nodejs 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
fi
# playwright-core (e2e/) and the client's tests need Node 20 or later; Debian 12's own nodejs is 18.
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "Node $(node --version) is too old: the TypeScript client and browser tests need Node 20 or later" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version)"

stamp=node_modules/.atl-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  npm ci --no-audit --no-fund
  echo "$want" >"$stamp"
fi
# npm test builds again; this leaves a usable dist/ for anyone importing the package.
if [ ! -f dist/index.js ] || [ -n "$(find src package.json tsconfig.json -newer dist/index.js -print -quit)" ]; then
  npm run --silent build
fi
