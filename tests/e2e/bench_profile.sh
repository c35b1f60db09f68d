#!/bin/bash
# tests/e2e/bench_profile.sh BUILD — the machine and instruction figures of
# `make bench`. bench/handoff (a hop of a lane, processes against threads)
# writes its JSON and report with a positive time for each ring. Scenario 7
# (bench/profile.sh): every stage under callgrind, instructions per request.
# Two of its cases, 2 s each: the report and its JSON exist, every request
# was answered, every stage executed some instructions for each request,
# and a proxied 64-token stream costs tpo-infer fewer than 150k (272k
# before chunks of one shape skipped the JSON parser, ~100k after: an
# instruction count, not a time, so the machine's load does not move it).
# Nothing is left behind. Under a sanitizer (TPO_SANITIZED) it is skipped:
# valgrind does not run ASan or TSan programs.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
dir=$(mktemp -d /tmp/tpo-bench-prof.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "bench_profile: FAIL: $*"; [ -f "$dir/run.log" ] && tail -30 "$dir/run.log"; exit 1; }

"$BUILD/bench/handoff" -r 1 -n 2000 -j "$dir/handoff.json" -m "$dir/handoff.md" >"$dir/run.log" 2>&1 ||
	fail "bench/handoff exited $?"
grep -q "5 processes (a lane)" "$dir/handoff.md" || fail "handoff.md"
python3 - "$dir/handoff.json" <<'PY' || fail "handoff figures"
import json, sys
d = json.load(open(sys.argv[1]))["us_per_hop"]
assert set(d) == {"processes5", "processes2", "threads5"}, sorted(d)
assert all(v > 0 for v in d.values()), d
PY
if [ "${TPO_SANITIZED:-}" = 1 ]; then
	echo "bench_profile: handoff ok; profile skipped under a sanitizer (valgrind cannot run its programs)"
	exit 0
fi

TPO_PROFILE_CASES="mock proxy_stream" TPO_PROFILE_DUR=2 TPO_BENCH_RESULTS="$dir" \
	bench/profile.sh "$BUILD" >"$dir/run.log" 2>&1 || fail "bench/profile.sh exited $?"
[ -s "$dir/profile.md" ] || fail "no profile.md"
python3 - "$dir/profile.json" <<'PY' || fail "figures"
import json, sys
d = json.load(open(sys.argv[1]))["cases"]
assert set(d) == {"mock", "proxy_stream"}, f"cases {sorted(d)}"
for case, c in d.items():
    assert c["not_ok"] == 0, f"{case}: {c['not_ok']} requests not answered 200"
    # The bench runs the default: no retrieval, so no rag process.
    assert c["absent"] == ["rag"], f"{case}: absent stages {c['absent']}"
    assert set(c["instructions_per_request"]) == {"stream", "assemble", "infer", "post"}, \
        f"{case}: stages {sorted(c['instructions_per_request'])}"
    for stage, n in c["instructions_per_request"].items():
        assert n > 100, f"{case}: {stage} {n} instructions per request"
    assert c["top"]["infer"], f"{case}: no functions for infer"
n = d["proxy_stream"]["instructions_per_request"]["infer"]
assert n < 150000, f"proxied stream: tpo-infer {n} instructions per stream"
print("infer per proxied stream:", n, "mock total:", d["mock"]["total"])
PY
left=$(ls /dev/shm | grep "^tpo\.pf" || true)
[ -z "$left" ] || fail "left in /dev/shm: $left"
echo "bench_profile: ok"
