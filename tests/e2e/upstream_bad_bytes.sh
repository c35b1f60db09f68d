#!/bin/bash
# tests/e2e/upstream_bad_bytes.sh BUILD — a model server whose error answers
# hold bytes that are not UTF-8, or text that tpo's messages must cut: the
# client still gets one clean error, and it is valid UTF-8 JSON (a client's
# JSON decoder fails on anything else, and the error is lost). Through the
# real supervisor and the openai worker, against a scripted upstream on
# 127.0.0.1 (python3), streamed and not, before and after the first token.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
. tests/lib/e2e.sh

name=ub$$
port=$(free_port)
uport=$(free_port)
dir=$(mktemp -d /tmp/tpo-badbytes.XXXXXX)
sup=; srv=
cleanup() {
	for p in $sup $srv; do
		kill -TERM "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "upstream_bad_bytes: FAIL: $*"; [ -f "$dir/sup.log" ] && tail -20 "$dir/sup.log"; exit 1; }

# The upstream: what it answers depends on the last message's content.
cat >"$dir/up.py" <<'PY'
import sys, threading
from tests.lib.httpreq import listen, read_request
s = listen(int(sys.argv[1]))
LONG = ("\u00e9" * 700).encode()       # two bytes each: any cut may split one
def send(c, status, ctype, body):
    c.sendall(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n" % (status, ctype, len(body)) + body)
def answer(c):
    req = read_request(c)
    if req is None:
        c.close()
        return
    head, body = req
    if b"health" in head.split(b"\r\n")[0]:
        send(c, b"200 OK", b"text/plain", b"ok")
    elif b"raw-bytes" in body:
        send(c, b"500 Internal Server Error", b"text/html",
             b"\xff\xfe<h1>upstream fell over</h1> \xc3\xa9t\xc3")
    elif b"long-accents" in body:
        send(c, b"400 Bad Request", b"application/json",
             b'{"error":{"message":"' + LONG + b'"}}')
    elif b"mid-stream" in body:
        ev = (b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
              b'data: {"error":{"message":"' + LONG + b'"}}\n\n')
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Connection: close\r\n\r\n" + ev)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,), daemon=True).start()
PY
PYTHONPATH=$PWD python3 "$dir/up.py" "$uport" >"$dir/up.log" 2>&1 &
srv=$!
wait_for upstream_bad_bytes "$srv" "$dir/up.log" upstream curl -sf "http://127.0.0.1:$uport/health"

cat >"$dir/c.json" <<EOF
{"name":"$name","listen":"127.0.0.1:$port","lanes":1,
 "stages":{"infer":{"worker":"openai","retries":{"max_attempts":1},
  "breaker":{"failures":1000},
  "endpoints":[{"url":"http://127.0.0.1:$uport/v1"}]}}}
EOF
"$BUILD/tpo-supervisor" start -c "$dir/c.json" >"$dir/sup.log" 2>&1 &
sup=$!
wait_ready upstream_bad_bytes "$sup" "$port" "$dir/sup.log"

# ask WORD STREAM: the raw answer body in $dir/WORD.STREAM, status printed.
ask() {
	curl -s -N -o "$dir/$1.$2" -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
		-H 'Content-Type: application/json' \
		-d "{\"model\":\"m\",\"stream\":$2,\"messages\":[{\"role\":\"user\",\"content\":\"$1\"}]}"
}
# check FILE KIND WANT: the body (json) or every data: line but [DONE] (sse)
# decodes as strict UTF-8 JSON; the error message holds WANT.
check() {
	python3 - "$@" <<'PY' || fail "$1: not one clean, valid UTF-8 JSON error"
import json, sys
path, kind, want = sys.argv[1:4]
raw = open(path, "rb").read()
text = raw.decode("utf-8")            # strict: raises on any bad byte
if kind == "json":
    objs = [json.loads(text)]
else:
    objs = [json.loads(l[6:]) for l in text.split("\n")
            if l.startswith("data: ") and l != "data: [DONE]"]
errs = [o["error"]["message"] for o in objs if "error" in o]
assert len(errs) == 1, f"{len(errs)} errors in {raw[:300]!r}"
assert want in errs[0], f"{want!r} not in {errs[0]!r}"
PY
}

s=$(ask raw-bytes false); [ "$s" = 502 ] || fail "raw-bytes: HTTP $s, want 502"
check "$dir/raw-bytes.false" json "upstream fell over"
grep -q $'\xef\xbf\xbd' "$dir/raw-bytes.false" || fail "raw-bytes: no U+FFFD where the bad bytes were"
s=$(ask raw-bytes true); [ "$s" = 502 ] || fail "raw-bytes streamed: HTTP $s, want 502"
check "$dir/raw-bytes.true" json "upstream fell over"
s=$(ask long-accents false); [ "$s" = 400 ] || fail "long-accents: HTTP $s, want 400"
check "$dir/long-accents.false" json $'\xc3\xa9\xc3\xa9'
s=$(ask mid-stream true); [ "$s" = 200 ] || fail "mid-stream: HTTP $s, want 200"
check "$dir/mid-stream.true" sse $'\xc3\xa9\xc3\xa9'
grep -q 'Hello' "$dir/mid-stream.true" || fail "mid-stream: the token before the error is missing"

kill -TERM "$sup"; wait "$sup" || fail "supervisor exit status $?"; sup=
ls /dev/shm/tpo."$name".* >/dev/null 2>&1 && fail "segments left in /dev/shm"
echo "upstream_bad_bytes: ok"
