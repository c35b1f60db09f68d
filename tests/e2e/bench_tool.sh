#!/bin/bash
# tests/e2e/bench_tool.sh BUILD — tpo-bench, the load generator of `make bench`,
# against its own --serve baseline and a live instance: open loop sends
# exactly rate x duration requests and counts every answer; streamed answers
# count their tokens; closed loop keeps its connections alive (one per
# concurrency slot); a generator that wakes late still sends every request
# that fell due; answers are counted per status; a refused connection is a
# connection error, not a hang; keep-alive connections the server closes
# while idle are replaced without an error; and latency is counted from the
# scheduled send time (no coordinated omission): requests queued behind one
# slow connection show the wait their schedule implies.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
. tests/lib/e2e.sh

name=tb$$
port=$(free_port)
sport=$(free_port)
dir=$(mktemp -d /tmp/tpo-bench-e2e.XXXXXX)
sup=
srv=
cleanup() {
	for p in $srv $sup; do
		kill -TERM "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "bench_tool: FAIL: $*"; exit 1; }
# field FILE EXPR: a value of a tpo-bench JSON result (python expression on d)
field() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print($2)" "$1"; }
bench() { "$BUILD/tpo-bench" --quiet --timeout-ms 10000 "$@"; }

"$BUILD/tpo-bench" --serve "127.0.0.1:$sport" 2>"$dir/serve.log" &
srv=$!
wait_for bench_tool "$srv" "$dir/serve.log" "tpo-bench --serve" curl -s -o /dev/null "http://127.0.0.1:$sport/"
surl=http://127.0.0.1:$sport/v1/chat/completions

# 1. open loop: every scheduled request is sent and answered
bench --url "$surl" --mode open --rate 400 --duration 1 --json "$dir/open.json"
[ "$(field "$dir/open.json" "d['total']['sent']")" = 400 ] || fail "open loop did not send 400"
[ "$(field "$dir/open.json" "d['total']['ok']")" = 400 ] || fail "open loop: not 400 answered"
[ "$(field "$dir/open.json" "d['total']['answers'].get('200')")" = 400 ] || fail "answers by status"
[ "$(field "$dir/open.json" "d['total']['latency_us']['e2e_ok']['n']")" = 400 ] || fail "e2e histogram count"
field "$dir/open.json" "all(k in d['total']['latency_us']['e2e_ok'] for k in ('p50','p90','p99','p999'))" |
	grep -qx True || fail "percentiles missing"

# 2. streamed: every token of every answer counted, time to first token kept
bench --url "$surl" --mode open --rate 200 --duration 1 --stream --max-tokens 16 --json "$dir/stream.json"
[ "$(field "$dir/stream.json" "d['total']['ok']")" = 200 ] || fail "stream: not 200 answered"
[ "$(field "$dir/stream.json" "d['total']['tokens']")" = 3200 ] || fail "stream: tokens != 16 per answer"
[ "$(field "$dir/stream.json" "d['total']['latency_us']['ttft']['n']")" = 200 ] || fail "ttft count"
[ "$(field "$dir/stream.json" "d['total']['stream_errors']")" = 0 ] || fail "stream errors"

# 3. closed loop: each slot reuses its connection for every request
bench --url "$surl" --mode closed --concurrency 4 --duration 1 --json "$dir/closed.json"
[ "$(field "$dir/closed.json" "d['max_conns']")" = 4 ] || fail "closed loop opened more than 4 connections"
[ "$(field "$dir/closed.json" "int(d['total']['ok'] > 100 and d['total']['ok'] == d['total']['sent'] - d['total']['unanswered'])")" = 1 ] ||
	fail "closed loop: answers missing"
[ "$(field "$dir/closed.json" "d['total']['conn_errors'] + d['total']['timeouts']")" = 0 ] || fail "closed loop errors"

# 4. a generator that wakes late (stopped once it has begun sending, until
# past the end of its 1 s run) still sends every request that fell due,
# late, and counts the wait in their latency, instead of dropping the ones
# due while it was stopped
established_to() {  # PORT: established TCP connections to 127.0.0.1:PORT
	python3 - "$1" <<'PY'
import sys
port, n = int(sys.argv[1]), 0
for line in open("/proc/net/tcp").readlines()[1:]:
    f = line.split()
    n += f[3] == "01" and int(f[2].split(":")[1], 16) == port
print(n)
PY
}
"$BUILD/tpo-bench" --quiet --timeout-ms 10000 --url "$surl" --mode open --rate 100 --duration 1 \
	--json "$dir/late.json" &
gen=$!
for _ in $(seq 1 100); do
	[ "$(established_to "$sport")" -gt 0 ] && break
	sleep 0.02
done
kill -STOP "$gen"
sleep 1.2
kill -CONT "$gen"
wait "$gen" || fail "the stopped generator failed"
[ "$(field "$dir/late.json" "d['total']['sent']")" = 100 ] ||
	fail "a late generator sent $(field "$dir/late.json" "d['total']['sent']") of 100 due requests"
[ "$(field "$dir/late.json" "d['total']['ok']")" = 100 ] || fail "late requests not answered"
[ "$(field "$dir/late.json" "int(d['total']['latency_us']['e2e_ok']['max'] >= 300000)")" = 1 ] ||
	fail "the stop is missing from the late requests' latency"

# 5. a refused connection is counted, not waited on
dead=$(free_port)
bench --url "http://127.0.0.1:$dead/v1/chat/completions" --mode open --rate 50 --duration 1 \
	--json "$dir/dead.json" || true
[ "$(field "$dir/dead.json" "d['total']['ok']")" = 0 ] || fail "answers from a closed port"
[ "$(field "$dir/dead.json" "d['total']['conn_errors']")" = 50 ] || fail "refused connections not counted"

# 6. a server that closes each connection right after its answer, without
# saying so (no "Connection: close"): its FIN often arrives with the answer,
# in the same event; the generator must still notice the close and open a
# new connection for the next request instead of failing on the dead one
cport=$(free_port)
python3 - "$cport" <<'PY' &
import sys
from tests.lib.httpreq import listen, read_request
s = listen(int(sys.argv[1]))
body = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"completion_tokens":1}}'
while True:
    c, _ = s.accept()
    if read_request(c) is None:
        c.close()
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    c.close()
PY
closer=$!
srv="$srv $closer"
wait_for bench_tool "$closer" /dev/null "the closing server" \
	python3 -c "import socket,sys;socket.create_connection(('127.0.0.1',int(sys.argv[1]))).close()" "$cport"
bench --url "http://127.0.0.1:$cport/v1/chat/completions" --mode open --rate 20 --duration 1 --max-conns 1 \
	--json "$dir/close.json"
[ "$(field "$dir/close.json" "d['total']['ok']")" = 20 ] || fail "answers lost to connections closed after an answer"
[ "$(field "$dir/close.json" "d['total']['conn_errors']")" = 0 ] || fail "a closed connection was reused"

# A live instance: the mock model paces tokens, the front closes idle
# keep-alive connections after 100 ms.
cat >"$dir/cfg.json" <<EOF
{ "name": "$name", "listen": "127.0.0.1:$port", "lanes": 1, "drain_timeout_ms": 1000,
  "admission": { "idle_timeout_ms": 100 },
  "stages": { "infer": { "worker": "mock",
              "mock": { "tokens_per_second": 40, "max_tokens": 4, "seed": 0 } } } }
EOF
"$BUILD/tpo-supervisor" start -c "$dir/cfg.json" --name "$name" >"$dir/sup.log" 2>&1 &
sup=$!
wait_ready bench_tool "$sup" "$port" "$dir/sup.log"
url=http://127.0.0.1:$port/v1/chat/completions

# 7. answers counted per status
bench --url "$url" --mode open --rate 20 --duration 1 --prompt 'x [[tpo:error=503]]' --json "$dir/err.json"
[ "$(field "$dir/err.json" "d['total']['answers'].get('503')")" = 20 ] || fail "503 answers not counted"
[ "$(field "$dir/err.json" "d['total']['ok']")" = 0 ] || fail "errors counted as ok"
# 429/503 are also timed from their hand-off to a connection (the generator's
# own lag left out): as many, and never longer than from their schedule
[ "$(field "$dir/err.json" "d['total']['latency_us']['shed_from_handoff']['n']")" = 20 ] ||
	fail "shed answers not timed from their hand-off"
field "$dir/err.json" "all(d['total']['latency_us']['shed_from_handoff'][q] <= d['total']['latency_us']['e2e_shed'][q] for q in ('p50','p99','max'))" |
	grep -qx True || fail "shed from hand-off longer than from schedule"

# 8. requests 250 ms apart: each finds its connection closed by the
# server's idle timeout, which the generator notices and replaces
bench --url "$url" --mode open --rate 4 --duration 2 --max-tokens 1 --json "$dir/idle.json"
[ "$(field "$dir/idle.json" "d['total']['ok']")" = 8 ] || fail "idle-closed connections lost answers"
[ "$(field "$dir/idle.json" "d['total']['conn_errors']")" = 0 ] || fail "idle close counted as error"

# 9. no coordinated omission: 10 requests scheduled 10 ms apart through one
# connection, each held >= 75 ms by the model's pacing (4 tokens at 40/s:
# three 25 ms gaps). The last, scheduled at 90 ms, ends >= 750 ms after the
# first was scheduled: counted from its schedule it took >= 660 ms; a
# generator timing from its actual send would report under 100 ms plus noise.
bench --url "$url" --mode open --rate 100 --duration 0.1 --max-conns 1 --max-tokens 4 \
	--json "$dir/co.json"
[ "$(field "$dir/co.json" "d['total']['ok']")" = 10 ] || fail "co: not 10 answered"
[ "$(field "$dir/co.json" "int(d['total']['latency_us']['e2e_ok']['max'] >= 500000)")" = 1 ] ||
	fail "latency not counted from the schedule (max $(field "$dir/co.json" "d['total']['latency_us']['e2e_ok']['max']") us)"
echo "bench_tool: ok"
