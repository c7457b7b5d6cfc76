#!/usr/bin/env bash
# Runs the README's curl walkthrough against a fresh database and prints each
# command with its real answer, as markdown. Used to produce the README.
#   scripts/walkthrough.sh > /tmp/walkthrough.md
set -euo pipefail
cd "$(dirname "$0")/.."
base=${ATL_WALKTHROUGH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
db="atl_walkthrough_$$"
port=${WALKTHROUGH_PORT:-18090}
tmp=$(mktemp -d)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${hookpid:-}" ] && kill "$hookpid" 2>/dev/null && wait "$hookpid" 2>/dev/null || true
  psql -X -q "$base" -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
psql -X -q "$base" -c "create database $db"
go build -o "$tmp/atl" .
export ATL=http://127.0.0.1:$port
export OPERATOR=change-me-operator-token
# A webhook receiver on 127.0.0.1 (hence ATL_ALLOW_PRIVATE_TARGETS) that answers 204 and keeps the last delivery.
hookport=$((port + 1))
python3 - "$hookport" "$tmp/hook.txt" <<'PY' &
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "w") as f:
            for h in ("X-ATL-Delivery", "X-ATL-Event", "X-ATL-Signature"):
                f.write(f"{h}: {self.headers[h]}\n")
            f.write("\n" + body.decode() + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
PY
hookpid=$!
export HOOK_URL=http://127.0.0.1:$hookport/atl
DATABASE_URL="${base/\/postgres\?/\/$db?}" PORT=$port ATL_ADMIN_TOKEN=$OPERATOR ATL_ALLOW_PRIVATE_TARGETS=true "$tmp/atl" 2>"$tmp/atl.log" &
pid=$!
for _ in $(seq 1 50); do curl -sf "$ATL/api/v1/health" >/dev/null && break; sleep 0.2; done

# show CMD: prints the command as written and its answer (status line + JSON).
show() {
  printf '```console\n$ %s\n' "$1"
  out=$(eval "$1 -s -w '\n%{http_code}'")
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  echo "HTTP $code"
  if [ -n "$body" ]; then echo "$body" | jq . ; fi
  echo "$body" >"$tmp/last.json"
  printf '```\n\n'
}
# keep NAME JQ CMD: runs CMD quietly and exports the JQ field as NAME.
keep() { export "$1"="$(eval "$3 -s" | jq -r "$2")"; }

echo "### Health"; echo
show 'curl $ATL/api/v1/health'
show 'curl $ATL/api/v1/health/db'
echo "The API's own description (OpenAPI 3.1):"; echo
printf '```console\n$ %s\n' "curl -s \$ATL/api/v1/openapi.json | jq -c '{openapi, title: .info.title, paths: (.paths | length)}'"
curl -s "$ATL/api/v1/openapi.json" | jq -c '{openapi, title: .info.title, paths: (.paths | length)}'
printf '```\n\n'
show 'curl $ATL/api/v1/stats -H "Authorization: Bearer $OPERATOR"'

echo "### Tenants and keys"; echo
show 'curl $ATL/api/v1/tenants -H "Authorization: Bearer $OPERATOR" --json '"'"'{"id":"acme","name":"Acme Travel"}'"'"
ACME_ADMIN=$(jq -r .api_key "$tmp/last.json"); export ACME_ADMIN
keep GLOBEX_ADMIN .api_key 'curl $ATL/api/v1/tenants -H "Authorization: Bearer $OPERATOR" --json '"'"'{"id":"globex","name":"Globex"}'"'"
keep ADMIN .api_key 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ACME_ADMIN" --json '"'"'{"role":"admin","subject":"ops@acme.example"}'"'"
echo '(`$ADMIN` below is an admin key of acme; `$GLOBEX_ADMIN` the admin key that came back when globex was created.)'; echo
show 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN" --json '"'"'{"role":"agent","subject":"bot-1"}'"'"
keep AGENT .api_key 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN" --json '"'"'{"role":"agent","subject":"booker"}'"'"
keep ALICE .api_key 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN" --json '"'"'{"role":"approver","subject":"alice@acme.example"}'"'"
keep BOB .api_key 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN" --json '"'"'{"role":"approver","subject":"bob@acme.example"}'"'"
keep OLD_KEY_ID .id 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN" --json '"'"'{"role":"agent","subject":"retired-bot"}'"'"
echo '(`$AGENT` is an agent key with subject `booker`; `$ALICE` and `$BOB` approver keys; `$OLD_KEY_ID` the id of a key to revoke.)'; echo
show 'curl $ATL/api/v1/keys -H "Authorization: Bearer $ADMIN"'
show 'curl -X DELETE $ATL/api/v1/keys/$OLD_KEY_ID -H "Authorization: Bearer $ADMIN"'

echo "### Events and the audit trail"; echo
show 'curl $ATL/api/v1/events -H "Authorization: Bearer $AGENT" -H "X-User-ID: user-42" --json '"'"'{"events":[{"tool_name":"flights.search","status":"succeeded","stage":"plan","tool_args":{"to":"LIS"}},{"tool_name":"hotels.search","status":"succeeded","tool_args":{"city":"Lisbon"}}]}'"'"
show 'curl "$ATL/api/v1/events?tool_name=hotels.search" -H "Authorization: Bearer $ALICE"'
show 'curl "$ATL/api/v1/audit/logs?agent_id=booker&limit=1" -H "Authorization: Bearer $ADMIN"'
echo "Another tenant naming acme is refused, and acme's ids are unknown to it:"; echo
show 'curl "$ATL/api/v1/audit/logs?tenant_id=acme" -H "Authorization: Bearer $GLOBEX_ADMIN"'
show 'curl -X DELETE $ATL/api/v1/keys/$OLD_KEY_ID -H "Authorization: Bearer $GLOBEX_ADMIN"'

echo "### Policies"; echo
show 'curl -X PUT $ATL/api/v1/policies/search -H "Authorization: Bearer $ADMIN" --json '"'"'{"trust_level":"L0"}'"'"
show 'curl -X PUT $ATL/api/v1/policies/bookings.create -H "Authorization: Bearer $ADMIN" --json '"'"'{"trust_level":"L3","approval_ttl_seconds":900}'"'"
show 'curl -X PUT $ATL/api/v1/policies/payments.refund -H "Authorization: Bearer $ADMIN" --json '"'"'{"trust_level":"L4"}'"'"
show 'curl -X PUT $ATL/api/v1/policies/scratch -H "Authorization: Bearer $ADMIN" --json '"'"'{"trust_level":"L2"}'"'"
show 'curl -X PUT $ATL/api/v1/policies -H "Authorization: Bearer $ADMIN" --json '"'"'{"default_trust_level":"L3"}'"'"
show 'curl $ATL/api/v1/policies/payments.refund -H "Authorization: Bearer $AGENT"'
show 'curl -X DELETE $ATL/api/v1/policies/scratch -H "Authorization: Bearer $ADMIN"'
show 'curl $ATL/api/v1/policies -H "Authorization: Bearer $AGENT"'
show 'curl -X PUT $ATL/api/v1/policies/x -H "Authorization: Bearer $ADMIN" --json '"'"'{"trust_level":"L9"}'"'"

echo "### The gate: L0 passes"; echo
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"workflow":"trip","tool":"search","args":{"q":"Lisbon hotels"}}'"'"
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"tool":"search","args":{},"mode":"live"}'"'"

echo "### An L3 call: held, approved by one human, executed once"; echo
keep L3 .approval_request_id 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"workflow":"trip","tool":"bookings.create","args":{"hotel":"H-204","nights":2},"idempotency_key":"trip-42-book"}'"'"
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"workflow":"trip","tool":"bookings.create","args":{"hotel":"H-204","nights":2},"idempotency_key":"trip-42-book"}'"'"
echo '(The first call answered the same; this retry with the same `idempotency_key` got it back without writing anything. `$L3` is its `approval_request_id`.)'; echo
show 'curl "$ATL/api/v1/approvals?status=PENDING" -H "Authorization: Bearer $ALICE"'
show 'curl $ATL/api/v1/approvals/$L3/decisions -H "Authorization: Bearer $ALICE" --json '"'"'{"decision":"APPROVE","reason":"within the travel budget"}'"'"
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"workflow":"trip","tool":"bookings.create","args":{"hotel":"H-204","nights":2},"approval_request_id":"'"'"'$L3'"'"'"}'"'"
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"workflow":"trip","tool":"bookings.create","args":{"hotel":"H-204","nights":2},"approval_request_id":"'"'"'$L3'"'"'"}'"'"

echo "### An L4 call: two distinct humans"; echo
keep L4 .approval_request_id 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"tool":"payments.refund","args":{"amount":120,"currency":"EUR"}}'"'"
echo '(`$L4` is the `approval_request_id` of this held call.)'; echo
show 'curl $ATL/api/v1/approvals/$L4/decisions -H "Authorization: Bearer $ALICE" --json '"'"'{"decision":"APPROVE"}'"'"
show 'curl $ATL/api/v1/approvals/$L4/decisions -H "Authorization: Bearer $ALICE" --json '"'"'{"decision":"APPROVE"}'"'"
show 'curl $ATL/api/v1/approvals/$L4/decisions -H "Authorization: Bearer $BOB" --json '"'"'{"decision":"APPROVE","reason":"refund confirmed with customer"}'"'"
show 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"tool":"payments.refund","args":{"amount":120,"currency":"EUR"},"approval_request_id":"'"'"'$L4'"'"'"}'"'"
show 'curl $ATL/api/v1/approvals/$L4 -H "Authorization: Bearer $AGENT"'
show 'curl -X POST $ATL/api/v1/approvals/expire -H "Authorization: Bearer $ADMIN"'

echo "### The hash chain"; echo
show 'curl $ATL/api/v1/audit/verify -H "Authorization: Bearer $ADMIN"'
show 'curl $ATL/api/v1/audit/head -H "Authorization: Bearer $AGENT"'

echo "### Evals and drift"; echo
show 'curl $ATL/api/v1/evals/runs -H "Authorization: Bearer $AGENT" --json '"'"'{"suite_name":"support-bot","model_id":"model-a","provider":"provider-1"}'"'"
BASE=$(jq -r .id "$tmp/last.json"); export BASE
echo '(`$BASE` is its `id`.) With no earlier run there is no baseline, so the drift is 0:'; echo
show 'curl $ATL/api/v1/evals/runs/$BASE/complete -H "Authorization: Bearer $AGENT" --json '"'"'{"results":{"c1":{"passed":true,"score":0.9},"c2":{"passed":true,"score":0.8},"c3":{"passed":false,"score":0.2}}}'"'"
keep RUN .id 'curl $ATL/api/v1/evals/runs -H "Authorization: Bearer $AGENT" --json '"'"'{"suite_name":"support-bot","model_id":"model-b","provider":"provider-2"}'"'"
echo 'A second run (`$RUN`) on another model is compared with the latest passed run. By hand: c1 moves 0.2, c2 flips (1), c3 is only in the baseline (1), c4 only in the run (1): 100 × 3.2 / 4 = 80.00, over the threshold of 10:'; echo
show 'curl $ATL/api/v1/evals/runs/$RUN/complete -H "Authorization: Bearer $AGENT" --json '"'"'{"results":{"c1":{"passed":true,"score":0.7},"c2":{"passed":false,"score":0.4},"c4":{"passed":true,"score":1}}}'"'"
show 'curl -X PUT $ATL/api/v1/evals/baselines/support-bot -H "Authorization: Bearer $AGENT" --json '"'"'{"run_id":"'"'"'$BASE'"'"'"}'"'"
show 'curl "$ATL/api/v1/evals/runs?suite_name=support-bot&status=failed" -H "Authorization: Bearer $ALICE"'
show 'curl $ATL/api/v1/evals/runs/$BASE -H "Authorization: Bearer $ALICE"'

echo "### Webhooks"; echo
echo '(`$HOOK_URL` is a receiver on this machine that answers 204; the service runs with `ATL_ALLOW_PRIVATE_TARGETS=true` so that it may call it.)'; echo
show 'curl $ATL/api/v1/webhooks -H "Authorization: Bearer $ADMIN" --json '"'"'{"url":"'"'"'$HOOK_URL'"'"'","format":"json"}'"'"
HOOK=$(jq -r .id "$tmp/last.json"); export HOOK
echo '(`$HOOK` is its `id`; the `secret` signs every delivery and is never shown again.)'; echo
show 'curl $ATL/api/v1/webhooks -H "Authorization: Bearer $ADMIN" --json '"'"'{"url":"ftp://hooks.example.com/atl","format":"xml"}'"'"
show 'curl $ATL/api/v1/webhooks -H "Authorization: Bearer $ADMIN"'
keep HELD .approval_request_id 'curl $ATL/api/v1/agents/booker/execute -H "Authorization: Bearer $AGENT" --json '"'"'{"tool":"bookings.create","args":{"hotel":"H-310","nights":1}}'"'"
keep DECIDED .status 'curl $ATL/api/v1/approvals/$HELD/decisions -H "Authorization: Bearer $BOB" --json '"'"'{"decision":"REJECT","reason":"over budget"}'"'"
for _ in $(seq 1 50); do
  [ "$(curl -s "$ATL/api/v1/webhooks/$HOOK/deliveries" -H "Authorization: Bearer $ADMIN" | jq '[.items[] | select(.status == "pending")] | length')" = 0 ] && break
  sleep 0.1
done
echo 'An agent'"'"'s call was held (`$HELD`) and Bob rejected it: two events, each delivered once. The headers of the last one, as the receiver got them (its body is the `payload` below):'; echo
printf '```http\n'; sed -n '1,3p' "$tmp/hook.txt"; printf '```\n\n'
show 'curl "$ATL/api/v1/webhooks/$HOOK/deliveries?limit=1" -H "Authorization: Bearer $ADMIN"'
show 'curl "$ATL/api/v1/webhooks/$HOOK/deliveries" -H "Authorization: Bearer $GLOBEX_ADMIN"'
show 'curl -X DELETE $ATL/api/v1/webhooks/$HOOK -H "Authorization: Bearer $ADMIN"'
