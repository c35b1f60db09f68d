#!/bin/bash
# tests/e2e/bench_ragab.sh BUILD — scenario 8 of `make bench`
# (bench/rag_ab.sh): the same load through tpo with stages.rag.enabled true
# and "auto" (no context file), and straight to the upstream, one short
# round: every request answered, ten stage processes with rag and eight
# without (the default starts none), the stages' CPU per request read for
# both, the report and its JSON written, nothing left in /dev/shm.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
dir=$(mktemp -d /tmp/tpo-bench-ragab.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "bench_ragab: FAIL: $*"; [ -f "$dir/run.log" ] && tail -30 "$dir/run.log"; exit 1; }

RATE=300 DUR=1 PAIRS=1 TPO_BENCH_RESULTS="$dir" bench/rag_ab.sh "$BUILD" >"$dir/run.log" 2>&1 ||
	fail "bench/rag_ab.sh exited $?"
[ -s "$dir/rag_ab.md" ] || fail "no rag_ab.md"
grep -q "five stages against four" "$dir/rag_ab.md" || fail "rag_ab.md title"
python3 - "$dir/rag_ab.json" <<'PY' || fail "figures"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["not_ok"] == 0, f"{d['not_ok']} requests not answered 200"
for arm, procs in (("five", 10), ("four", 8)):
    (r,) = d["runs"][arm]
    assert r["sent"] >= 300 and r["ok"] == r["sent"], f"{arm}: {r}"
    assert r["stage_processes"] == procs, f"{arm}: {r['stage_processes']} stage processes"
    assert r["cpu_us_per_req"] > 0, f"{arm}: no stage CPU read"
    assert d["median"][arm]["added_p50_us"] is not None, arm
(r,) = d["runs"]["direct"]
assert r["sent"] >= 300 and r["ok"] == r["sent"], f"direct: {r}"
print("stage CPU per request, five / four:", d["runs"]["five"][0]["cpu_us_per_req"],
      d["runs"]["four"][0]["cpu_us_per_req"])
PY
left=$(ls /dev/shm | grep "^tpo\.ragab" || true)
[ -z "$left" ] || fail "left behind: $left"
echo "bench_ragab: ok"
