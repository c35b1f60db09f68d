#!/bin/bash
# The openai worker against the real @dwmkerr/mock-llm server (npm), driven
# through the whole pipeline by the real supervisor: streaming and not, and
# an upstream 401 passed through.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
NPMDIR=${TPO_MOCKLLM_DIR:-/tmp/tpo-mock-llm}
. "$(dirname "$0")/../lib/e2e.sh"

if [ ! -f "$NPMDIR/node_modules/@dwmkerr/mock-llm/dist/main.js" ]; then
	mkdir -p "$NPMDIR"
	if ! (cd "$NPMDIR" && npm install --no-audit --no-fund --loglevel=error \
			@dwmkerr/mock-llm >npm.log 2>&1); then
		cat "$NPMDIR/npm.log"
		echo "workers_mockllm: npm install @dwmkerr/mock-llm failed (see above)"
		exit 1
	fi
fi

work=$(mktemp -d /tmp/tpo-mockllm.XXXXXX)
name=wm$$
mport=$(free_port)
port=$(free_port)
mock=; sup=
cleanup() {
	[ -n "$sup" ] && { kill -TERM "$sup" 2>/dev/null || true; wait "$sup" 2>/dev/null || true; }
	[ -n "$mock" ] && { kill -TERM "$mock" 2>/dev/null || true; wait "$mock" 2>/dev/null || true; }
	rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/mock-llm.yaml" <<'YAML'
streaming:
  chunkSize: 6
  chunkIntervalMs: 5
rules:
  - path: "/v1/chat/completions"
    method: "POST"
    match: "@"
    response:
      status: 200
      content: |
        {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4",
         "choices": [{"message": {"role": "assistant",
           "content": "Hello from mock-llm, the \"answer\" is 42."},
           "finish_reason": "stop"}]}
  - path: "/v1/chat/completions"
    method: "POST"
    match: "contains(body.messages[-1].content, 'error-401')"
    response:
      status: 401
      content: |
        {"error": {"message": "Incorrect API key provided.",
          "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}
YAML
(cd "$work" && HOST=127.0.0.1 PORT=$mport exec node "$NPMDIR/node_modules/@dwmkerr/mock-llm/dist/main.js" \
	--config "$work/mock-llm.yaml" >"$work/mock.log" 2>&1) &
mock=$!
wait_for workers_mockllm "$mock" "$work/mock.log" mock-llm curl -s -o /dev/null "http://127.0.0.1:$mport/health"
grep -q "127.0.0.1:$mport" "$work/mock.log" || { cat "$work/mock.log"; echo "mock-llm not on 127.0.0.1"; exit 1; }

cat >"$work/pipeline.json" <<JSON
{"lanes": 1,
 "stages": {"infer": {"worker": "openai",
   "endpoints": [{"url": "http://127.0.0.1:$mport"}],
   "timeouts": {"first_token_ms": 5000, "idle_ms": 5000}}}}
JSON
"$BUILD/tpo-supervisor" start -c "$work/pipeline.json" --name "$name" \
	--listen "127.0.0.1:$port" >"$work/sup.log" 2>&1 &
sup=$!
wait_ready workers_mockllm "$sup" "$port" "$work/sup.log"
want='Hello from mock-llm, the "answer" is 42.'
url="http://127.0.0.1:$port/v1/chat/completions"

# Not streamed.
body=$(curl -s -m 20 "$url" -H 'content-type: application/json' \
	-d '{"model":"gpt-4","messages":[{"role":"user","content":"ping"}]}')
got=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["choices"][0]["message"]["content"])' "$body") \
	|| { echo "bad answer: $body"; cat "$work/sup.log"; exit 1; }
[ "$got" = "$want" ] || { echo "non-streamed: got '$got'"; exit 1; }

# Streamed: several chunks that add up to the answer, then [DONE].
curl -sN -m 20 "$url" -H 'content-type: application/json' \
	-d '{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"ping"}]}' >"$work/sse"
python3 - "$work/sse" "$want" <<'PY' || { cat "$work/sse"; exit 1; }
import json, sys
text, chunks, done = "", 0, False
for line in open(sys.argv[1]).read().split("\n"):
    if not line.startswith("data: "):
        continue
    d = line[6:]
    if d == "[DONE]":
        done = True
        continue
    j = json.loads(d)
    assert "error" not in j, d
    for c in j.get("choices", []):
        t = c.get("delta", {}).get("content")
        if t:
            text += t
            chunks += 1
assert done, "no [DONE]"
assert text == sys.argv[2], repr(text)
assert chunks > 1, "only %d chunk(s)" % chunks
PY

# An upstream 401 reaches the client as 401 with its message.
code=$(curl -s -m 20 -o "$work/err" -w '%{http_code}' "$url" -H 'content-type: application/json' \
	-d '{"model":"gpt-4","messages":[{"role":"user","content":"error-401"}]}')
[ "$code" = 401 ] || { echo "401 case: HTTP $code: $(cat "$work/err")"; exit 1; }
grep -q "Incorrect API key provided." "$work/err" || { cat "$work/err"; exit 1; }
echo "mock-llm via openai worker: streamed, not streamed and 401 ok"
