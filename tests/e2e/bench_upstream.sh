#!/bin/bash
# tests/e2e/bench_upstream.sh BUILD — `make bench UPSTREAM=URL` (issue 7's
# "or any OpenAI-compatible URL given on the command line"): bench/pipeline.sh
# run with only scenario 3c, against a small upstream of our own that
# answers only requests that name its model and carry its API key (401 or
# 404 otherwise, as real servers do). No request of the scenario, through
# tpo, through the reference nginx or straight to the upstream, may be
# refused for its model or key, and at 50 % of the closed-loop capacity every
# one must be answered (under ASan, TPO_SANITIZED, tpo is slow enough to fall
# behind, and only 4xx counts). The report has its 3c section, with nginx's
# table, and its JSON the figures (nginx's added latency and version); the
# raw files stay in raw/; nothing is left behind (no segment, no nginx).
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
. tests/lib/e2e.sh

uport=$(free_port)
dir=$(mktemp -d /tmp/tpo-bench-up.XXXXXX)
srv=
cleanup() {
	[ -n "$srv" ] && { kill -TERM "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; }
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "bench_upstream: FAIL: $*"; [ -f "$dir/run.log" ] && tail -30 "$dir/run.log"; exit 1; }

cat > "$dir/up.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
KEY, MODEL = "Bearer tpo-test-key", "tiny-model"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def send(self, code, body, ctype="application/json"):
        b = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        self.send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self.send(400, '{"error":{"message":"bad JSON"}}')
        if self.headers.get("Authorization") != KEY:
            return self.send(401, '{"error":{"message":"invalid API key"}}')
        if req.get("model") != MODEL:
            return self.send(404, '{"error":{"message":"no such model: %s"}}' % req.get("model"))
        toks = [" tok"] * 8
        if not req.get("stream"):
            return self.send(200, json.dumps({"id": "c1", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(toks)},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": len(toks), "total_tokens": 3 + len(toks)}}))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        out = b""
        for i, t in enumerate(toks):
            ch = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
                  "choices": [{"index": 0, "delta": {"content": t},
                               "finish_reason": "length" if i == len(toks) - 1 else None}]}
            out += b"data: " + json.dumps(ch).encode() + b"\n\n"
        out += b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(out), out))
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024   # bursts of new connections
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$dir/up.py" "$uport" 2>"$dir/up.log" &
srv=$!
base=http://127.0.0.1:$uport
wait_for bench_upstream "$srv" "$dir/up.log" "the upstream" curl -sf "$base/v1/models"
# The upstream refuses what lacks its key or names another model.
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/chat/completions" -d '{"model":"tiny-model"}')
[ "$code" = 401 ] || fail "the upstream answered $code without a key (401 expected)"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer tpo-test-key' \
	"$base/v1/chat/completions" -d '{"model":"other"}')
[ "$code" = 404 ] || fail "the upstream answered $code for another model (404 expected)"

# Only 3c, short runs, no plots; the key reaches tpo through the environment.
BENCH_UP_KEY=tpo-test-key TPO_BENCH_MODEL=tiny-model TPO_BENCH_API_KEY_ENV=BENCH_UP_KEY \
TPO_BENCH_SKIP="capacity overhead mockllm surge chaos memory" TPO_BENCH_RUNS=1 \
TPO_BENCH_DURATION=1 TPO_BENCH_PLOTS=0 TPO_BENCH_RESULTS="$dir/res" \
	bench/pipeline.sh "$BUILD" "$base/v1/" >"$dir/run.log" 2>&1 || fail "bench/pipeline.sh exited $?"

md=$dir/res/pipeline.md js=$dir/res/pipeline.json
grep -q "^### 3c\. Upstream \`$base\`" "$md" || fail "no 3c section for $base in the report"
python3 - "$js" <<'EOF' || fail "the 3c figures (above)"
import json, os, sys
o = json.load(open(sys.argv[1]))["overhead"]["url"]
strict = os.environ.get("TPO_SANITIZED") != "1"
bad = []
for kind in ("plain", "stream"):
    for side in ("tpo", "direct"):
        c = o["capacity"].get(f"{kind}.{side}") or {}
        if not c.get("req_per_s"):
            bad.append(f"closed loop {kind} {side}: {c}")
    for pct in (50, 90):
        row = o["loads"].get(f"{kind}.{pct}") or {}
        for side in ("tpo", "direct", "nginx"):
            r = row.get(side) or {}
            refused = any(f"HTTP 4{x}" in (r.get("not_ok_kinds") or "") for x in ("00", "01", "03", "04"))
            if not r.get("ok_per_s") or refused or (pct == 50 and strict and r.get("not_ok")):
                bad.append(f"{kind} {pct} % {side}: ok/s {r.get('ok_per_s')}, not ok {r.get('not_ok')} ({r.get('not_ok_kinds')})")
        if row.get("added_e2e_p50_us") is None or row.get("nginx_added_e2e_p50_us") is None:
            bad.append(f"{kind} {pct} %: no added latency (tpo {row.get('added_e2e_p50_us')}, nginx {row.get('nginx_added_e2e_p50_us')})")
if not o.get("nginx"):
    bad.append("nginx's version is not recorded")
if bad:
    print("\n".join(bad))
    sys.exit(1)
EOF
ls "$dir"/res/raw/ovh.url.plain.50.tpo.1.json "$dir"/res/raw/ovhcap.url.stream.direct.1.json >/dev/null ||
	fail "raw/ lacks the run's tpo-bench files"
grep -q "upstream: $base (GET /v1/models: HTTP 200)" "$dir/run.log" || fail "the upstream's check is not logged"
grep -q "^A reference reverse proxy at the 50 and 90 % loads: nginx" "$md" || fail "no nginx table in the report"
ps -eo args | grep -q "[n]ginx.*tpo-pipeline\." && fail "bench/pipeline.sh left its nginx running"
ls /dev/shm/tpo.pb* >/dev/null 2>&1 && fail "/dev/shm/tpo.pb* left behind"
echo "bench_upstream: ok (3c against $base: model and key sent through tpo, nginx and direct, report and raw files written)"
