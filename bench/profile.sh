#!/usr/bin/env bash
# bench/profile.sh BUILD — instructions per request of every stage, counted by
# valgrind's callgrind (scenario 7 of `make bench`).
#
# Wall-clock figures on a shared two-core VM move from run to run; the
# instructions a stage executes for one request do not. Every stage process
# of a real tpo (the real supervisor, rings and HTTP) runs under callgrind;
# tpo-bench sends an open-loop load twice, LOW and HIGH requests per second
# for DUR seconds, each time to a fresh instance. A stage's instructions per
# request are (I_high - I_low) / (n_high - n_low) summed over its lanes:
# start-up, configuration, idle timer wake-ups and shutdown cancel out.
# User-space instructions only: the kernel's share (system calls, context
# switches: most of a request's CPU time here) is not counted; docs/bench.md
# gives the counts that measure it.
#
# Cases: mock worker non-streaming and streaming (64 tokens); the openai worker
# proxying `tpo-bench --serve`, non-streaming and streaming.
#
# Writes bench/results/profile.json and profile.md. Knobs: TPO_PROFILE_DUR
# (5 s), TPO_PROFILE_CASES (which of the four; all by default), TPO_BENCH_RESULTS (bench/results). Installs valgrind with apt-get
# when missing (as root). Leaves no process and no /dev/shm/tpo.* behind.
set -u

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RES=${TPO_BENCH_RESULTS:-$ROOT/bench/results}
DUR=${TPO_PROFILE_DUR:-5}
NAME=pf$$
TMP=$(mktemp -d /tmp/tpo-profile.XXXXXX)
mkdir -p "$RES"
SUP_PID= SERVE_PID=

log() { printf 'profile: %s\n' "$*" >&2; }

. "$ROOT/bench/lib.sh"   # stop_pid, free_port, bench_setup, need_cmd, start_instance
bench_setup
need_cmd valgrind valgrind

# The supervisor runs the stage programs found next to its own executable:
# a copy of it sits beside one wrapper per stage that runs the real program
# under callgrind, one output file per process.
BIN=$TMP/bin
mkdir -p "$BIN" "$TMP/cg"
cp "$BUILD/tpo-supervisor" "$BIN/"
for s in stream rag assemble infer post; do
	printf '#!/bin/sh\nexec valgrind -q --tool=callgrind --callgrind-out-file=%s/cg/%s.%%p %s "$@"\n' \
		"$TMP" "$s" "$BUILD/tpo-$s" >"$BIN/tpo-$s"
	chmod +x "$BIN/tpo-$s"
done

SPORT=$(free_port)
"$BUILD/tpo-bench" --serve "127.0.0.1:$SPORT" 2>/dev/null &
SERVE_PID=$!

# one CASE WORKER STREAM RATE LABEL: a fresh instance, RATE req/s for DUR s;
# leaves $TMP/out/CASE.LABEL/ with the callgrind files and tpo-bench's JSON.
one() {
	local case=$1 worker=$2 stream=$3 rate=$4 label=$5 port
	local out=$TMP/out/$case.$label
	port=$(free_port)
	cat >"$TMP/c.json" <<EOF
{"name":"$NAME","listen":"127.0.0.1:$port","log_level":"warning",
 "admission":{"max_inflight_per_lane":1000000,"max_connections":100000,"request_timeout_ms":60000},
 "stages":{"infer":{"max_inflight":64,$worker}}}
EOF
	rm -f "$TMP"/cg/*
	: >"$TMP/sup.log"
	start_instance "$BIN/tpo-supervisor" "$TMP/c.json" "$port" 600
	mkdir -p "$out"
	"$BUILD/tpo-bench" --quiet --json "$out/load.json" --url "http://127.0.0.1:$port/v1/chat/completions" \
		--mode open --rate "$rate" --duration "$DUR" --timeout-ms 20000 $stream ||
		{ log "fatal: tpo-bench failed"; exit 1; }
	stop_pid "$SUP_PID" 300
	SUP_PID=
	rm -f /dev/shm/tpo."$NAME".* 2>/dev/null
	mv "$TMP"/cg/* "$out/"
	for f in "$out"/*.[0-9]*; do
		callgrind_annotate --auto=no --threshold=100 "$f" >"$f.txt" 2>/dev/null
	done
}

MOCK='"worker":"mock","mock":{"tokens_per_second":0,"max_tokens":64,"seed":1}'
PROXY='"worker":"openai","endpoints":[{"url":"http://127.0.0.1:'$SPORT'/v1"}],"timeouts":{"connect_ms":5000,"first_token_ms":20000,"idle_ms":20000,"total_ms":60000}'
for c in ${TPO_PROFILE_CASES:-mock mock_stream proxy proxy_stream}; do
	w=$MOCK; [ "${c%_stream}" = proxy ] && w=$PROXY
	s=; lo=100 hi=400
	case $c in *_stream) s=--stream lo=40 hi=160 ;; esac
	log "$c: $lo then $hi req/s for $DUR s, every stage under callgrind"
	one "$c" "$w" "$s" "$lo" low
	one "$c" "$w" "$s" "$hi" high
done

python3 - "$TMP/out" "$RES" "$DUR" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" <<'EOF'
import collections, glob, json, os, re, subprocess, sys
out, res, dur, commit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
STAGES = ["stream", "rag", "assemble", "infer", "post"]
CASES = [("mock", "mock worker, non-streaming"), ("mock_stream", "mock worker, streaming 64 tokens"),
         ("proxy", "proxying `tpo-bench --serve`, non-streaming"),
         ("proxy_stream", "proxying `tpo-bench --serve`, streaming 64 tokens")]
line = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*?)\s*$")

def run(case, label):
    d = f"{out}/{case}.{label}"
    load = json.load(open(f"{d}/load.json"))["total"]
    tot = collections.Counter(); fn = collections.defaultdict(collections.Counter)
    for f in glob.glob(f"{d}/*.txt"):
        st = os.path.basename(f).split(".")[0]
        for l in open(f):
            m = line.match(l)
            if not m or m.group(2).startswith(("=>", "<", "*")): continue
            n = int(m.group(1).replace(",", "")); what = m.group(2)
            if what == "PROGRAM TOTALS": tot[st] += n; continue
            # "file:function [object]" -> "function (object or file)"
            what = re.sub(r"^\S*?:", "", what.split(" [")[0]) if ":" in what else what
            fn[st][what] += n
    return load, tot, fn

report = {"commit": commit, "duration_s": float(dur), "cases": {}}
md = ["# Instructions per request, by stage (callgrind)\n",
      f"`bench/profile.sh` (scenario 7 of `make bench`), commit {commit}. Every stage process of a real tpo runs under "
      "callgrind; the load is sent twice to a fresh instance (low and high open-loop rate, "
      f"{dur} s each) and a stage's figure is the difference of its instruction counts divided by the difference "
      "of requests sent, so start-up, idle wake-ups and shutdown cancel out. User-space instructions only: the "
      "kernel's share (system calls, context switches) is not in it. Unlike times, these counts do not move with "
      "the machine's load: compare them across commits.\n"]
for case, title in CASES:
    if not os.path.exists(f"{out}/{case}.high/load.json"): continue
    lo, ti_lo, fn_lo = run(case, "low"); hi, ti_hi, fn_hi = run(case, "high")
    dn = hi["sent"] - lo["sent"]
    bad = (lo["sent"] - lo["ok"]) + (hi["sent"] - hi["ok"])
    # A stage without processes (rag with no retrieval configured) left no files.
    present = [s for s in STAGES if ti_hi[s] or ti_lo[s]]
    per = {s: (ti_hi[s] - ti_lo[s]) / dn for s in present}
    top = {}
    for s in present:
        d = {f: (fn_hi[s][f] - fn_lo[s][f]) / dn for f in set(fn_hi[s]) | set(fn_lo[s])}
        top[s] = sorted(((f, v) for f, v in d.items() if v >= 20), key=lambda x: -x[1])[:12]
    report["cases"][case] = {"requests": [lo["sent"], hi["sent"]], "not_ok": bad,
                             "instructions_per_request": {s: round(per[s]) for s in present},
                             "absent": [s for s in STAGES if s not in present],
                             "total": round(sum(per.values())),
                             "top": {s: [[f, round(v)] for f, v in top[s]] for s in present}}
    md.append(f"\n## {title}\n\n{lo['sent']} and {hi['sent']} requests"
              + (f", {bad} not answered 200 (the figures are suspect)" if bad else ", all answered") + ".\n")
    md.append("| stage | instructions per request | largest parts (instructions per request) |\n|---|---:|---|")
    for s in STAGES:
        if s not in present:
            md.append(f"| {s} | no process | (`stages.rag.enabled` \"auto\" without retrieval: the fronts write into assemble's rings) |")
            continue
        parts = ", ".join(f"{f} {v:,.0f}" for f, v in top[s][:5])
        md.append(f"| {s} | {per[s]:,.0f} | {parts} |")
    md.append(f"| **all {len(present)} stages** | **{sum(per.values()):,.0f}** | |")
json.dump(report, open(f"{res}/profile.json", "w"), indent=1)
open(f"{res}/profile.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
rc=$?
[ $rc = 0 ] && log "wrote $RES/profile.json and $RES/profile.md"
exit $rc
