#!/bin/bash
# tests/e2e/bench_syscalls.sh BUILD — scenario 9 of `make bench`
# (bench/syscalls.sh), one short low-rate run: every request answered, the
# four stage processes per lane of the default configuration traced (no
# rag), and the counts make sense of what a proxied request must do: the
# front receives and sends, infer talks to the upstream, every stage makes
# system calls and leaves its CPU; the report and its JSON written, nothing
# left in /dev/shm.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
dir=$(mktemp -d /tmp/tpo-bench-syscalls.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "bench_syscalls: FAIL: $*"; [ -f "$dir/run.log" ] && tail -30 "$dir/run.log"; exit 1; }

RATE=200 SRATE=100 DUR=1 TPO_BENCH_RESULTS="$dir" bench/syscalls.sh "$BUILD" >"$dir/run.log" 2>&1 ||
	fail "bench/syscalls.sh exited $?"
grep -q "System calls and context switches per request" "$dir/syscalls.md" || fail "syscalls.md title"
python3 - "$dir/syscalls.json" <<'PY' || fail "figures"
import json, sys
d = json.load(open(sys.argv[1]))
for case in ("plain", "stream"):
    c = d["cases"][case]
    assert c["sent"] >= 50 and c["ok"] == c["sent"], f"{case}: {c['ok']} of {c['sent']} answered"
    st = c["stages"]
    assert set(st) == {"stream", "assemble", "infer", "post"}, f"{case}: stages {sorted(st)}"
    n = {s: v["processes"] for s, v in st.items()}
    assert len(set(n.values())) == 1, f"{case}: processes per stage {n}"
    for s, v in st.items():
        assert v["syscalls_per_req"] > 0 and v["switches_per_req"] > 0, f"{case} {s}: {v}"
        assert v["preempted_per_req"] <= v["switches_per_req"], f"{case} {s}: {v}"
    calls = lambda s, *names: sum(st[s]["calls_per_req"].get(k, 0) for k in names)
    # One connection per request or keep-alive: either way a request is read
    # and its answer sent by the front, and infer sends it upstream and reads
    # the upstream's answer.
    assert calls("stream", "recvfrom", "read", "recvmsg") >= 0.9, f"{case}: front reads {st['stream']}"
    assert calls("stream", "sendmsg", "sendto", "write", "writev") >= 0.9, f"{case}: front sends {st['stream']}"
    assert calls("infer", "sendmsg", "sendto", "write", "writev") >= 0.9, f"{case}: infer sends {st['infer']}"
    assert calls("infer", "read", "recvfrom", "recvmsg") >= 0.9, f"{case}: infer reads {st['infer']}"
print("syscalls per request, plain / stream:", d["cases"]["plain"]["all"]["syscalls_per_req"],
      d["cases"]["stream"]["all"]["syscalls_per_req"])
PY
left=$(ls /dev/shm | grep "^tpo\.sysc" || true)
[ -z "$left" ] || fail "left behind: $left"
echo "bench_syscalls: ok"
