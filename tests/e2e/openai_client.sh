#!/bin/bash
# tpo driven by the official `openai` npm client library, streaming and not.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../node"
if [ ! -d node_modules/openai ]; then
	npm install --no-audit --no-fund --loglevel=error >/dev/null 2>npm.err || {
		cat npm.err; echo "openai_client: npm install failed"; exit 1; }
	rm -f npm.err
fi
name=oc$$
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null \
	|| echo $((20000 + $$ % 20000)))
log=$(mktemp)
"$BUILD/tpo-supervisor" start --name "$name" --listen "127.0.0.1:$port" 2>"$log" &
sup=$!
cleanup() {
	kill -TERM "$sup" 2>/dev/null || true
	wait "$sup" 2>/dev/null || true
	rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
	curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
	kill -0 "$sup" 2>/dev/null || { cat "$log"; echo "openai_client: supervisor died"; exit 1; }
	sleep 0.1
done
node openai_client.mjs "http://127.0.0.1:$port/v1"
