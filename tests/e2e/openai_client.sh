#!/bin/bash
# tpo driven by the official `openai` npm client library, streaming and not.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../node"
. ../lib/e2e.sh
if [ ! -d node_modules/openai ]; then
	npm install --no-audit --no-fund --loglevel=error >/dev/null 2>npm.err || {
		cat npm.err; echo "openai_client: npm install failed"; exit 1; }
	rm -f npm.err
fi
name=oc$$
port=$(free_port)
log=$(mktemp)
"$BUILD/tpo-supervisor" start --name "$name" --listen "127.0.0.1:$port" 2>"$log" &
sup=$!
cleanup() {
	kill -TERM "$sup" 2>/dev/null || true
	wait "$sup" 2>/dev/null || true
	rm -f "$log"
}
trap cleanup EXIT
wait_ready openai_client "$sup" "$port" "$log"
node openai_client.mjs "http://127.0.0.1:$port/v1"
