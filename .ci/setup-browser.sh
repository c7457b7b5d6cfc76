#!/usr/bin/env bash
# CI: what the console's browser tests (tests/console_e2e_test.go, e2e/) need: Debian's
# Chromium and playwright-core from e2e/package-lock.json. Safe to run again:
# it installs only what is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."

# Node 20 or later for playwright-core (and the TypeScript client's packages).
bash .ci/setup-node.sh

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

if [ ! -x /usr/bin/chromium ]; then
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null

# npm ci again only when the lock changed since the last install.
stamp=e2e/node_modules/.package-lock.sha256
want=$(sha256sum e2e/package-lock.json | cut -d' ' -f1)
if [ ! -d e2e/node_modules/playwright-core ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi
echo "playwright-core $(node -p "require('./e2e/node_modules/playwright-core/package.json').version")"
