#!/usr/bin/env bash
# bench/syscalls.sh — system calls and context switches per request, by stage
# and by call (scenario 9 of `make bench`): the kernel's part of a request,
# which callgrind (bench/profile.sh) does not see.
#
# tpo proxying `tpo-bench --serve` (the default configuration: four stages
# per lane) takes an open-loop load, non-streamed and then streamed (64
# tokens), each on a fresh instance after two seconds of warm-up, while
# `perf record` takes the raw_syscalls:sys_enter and sched:sched_switch
# tracepoints of the stage processes (no PMU needed; the counts are exact
# where CPU times on shared VMs are not). Per request sent: each stage's
# system calls by name, its switches away from the CPU, and how many of
# those were preemptions (runnable, but the CPU went to another task: the
# cores were busy) rather than sleeps. The window is the load plus ~1 s;
# idle wake-ups in it are a few per second per process. perf slows what it
# traces, so no latency is reported here.
#
# usage: bench/syscalls.sh [BUILD]   env: RATE (req/s, 5000), SRATE (streams/s,
#   2000), DUR (s, 4), TPO_BENCH_RESULTS (bench/results). Installs linux-perf
#   with apt-get when perf is missing. Writes syscalls.json and syscalls.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
RES=${TPO_BENCH_RESULTS:-$ROOT/bench/results}
RATE=${RATE:-5000} SRATE=${SRATE:-2000} DUR=${DUR:-4}
NAME=sysc$$
TMP=$(mktemp -d /tmp/tpo-syscalls.XXXXXX)
SUP_PID= SERVE_PID= PERF_PID=
. "$ROOT/bench/lib.sh"   # stop_pid, free_port, bench_setup, need_cmd, start_instance
log() { echo "syscalls: $*" >&2; }

bench_setup
need_cmd perf linux-perf
perf record -q -e raw_syscalls:sys_enter -o "$TMP/probe.data" -- true >/dev/null 2>"$TMP/probe.err" ||
	{ log "fatal: perf cannot record tracepoints here:"; cat "$TMP/probe.err" >&2; exit 111; }
mkdir -p "$RES"
# System call numbers to names, from this machine's headers.
echo '#include <sys/syscall.h>' | cc -dM -E - |
	sed -n 's/^#define __NR_\([a-z0-9_]*\) \([0-9]*\)$/\2 \1/p' >"$TMP/nr"
SPORT=$(free_port)
"$BUILD/tpo-bench" --serve "127.0.0.1:$SPORT" 2>/dev/null &
SERVE_PID=$!

# run CASE RATE [--stream]: one measured load; leaves $TMP/CASE.{json,procs,txt}.
run() {
	local case=$1 rate=$2 stream=${3:-} port url pids
	port=$(free_port)
	cat >"$TMP/c.json" <<EOF
{"name":"$NAME","listen":"127.0.0.1:$port","log_level":"warning",
 "admission":{"max_inflight_per_lane":1000000,"max_connections":100000,"request_timeout_ms":60000},
 "stages":{"infer":{"worker":"openai","endpoints":[{"url":"http://127.0.0.1:$SPORT/v1"}]}}}
EOF
	start_instance "$BUILD/tpo-supervisor" "$TMP/c.json" "$port"
	url="http://127.0.0.1:$port/v1/chat/completions"
	"$BUILD/tpo-bench" --quiet --url "$url" --mode open --rate "$rate" --duration 2 \
		$stream >/dev/null 2>&1 || true
	"$BUILD/tpo-supervisor" status --name "$NAME" |
		awk '$5 == "running" && $1 != "supervisor" { print $4, $1 }' >"$TMP/$case.procs"
	pids=$(cut -d' ' -f1 "$TMP/$case.procs" | paste -sd,)
	perf record -q -e raw_syscalls:sys_enter -e sched:sched_switch -p "$pids" \
		-o "$TMP/$case.data" -- sleep $((DUR + 1)) >/dev/null 2>"$TMP/perf.log" &
	PERF_PID=$!
	sleep 0.3
	"$BUILD/tpo-bench" --quiet --json "$TMP/$case.json" --url "$url" --mode open \
		--rate "$rate" --duration "$DUR" --timeout-ms 20000 $stream ||
		{ log "fatal: tpo-bench failed ($case)"; exit 1; }
	wait "$PERF_PID" || { log "fatal: perf record failed"; cat "$TMP/perf.log" >&2; exit 1; }
	PERF_PID=
	stop_pid "$SUP_PID" 300; SUP_PID=
	perf script -i "$TMP/$case.data" -F pid,event,trace 2>/dev/null >"$TMP/$case.txt"
}

log "tpo proxying --serve: $RATE req/s non-streamed, $SRATE streams/s, $DUR s each, under perf"
run plain "$RATE"
run stream "$SRATE" --stream

python3 - "$TMP" "$RES" "$RATE" "$SRATE" "$DUR" \
	"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import collections, json, re, sys
tmp, res, rate, srate, dur, commit = sys.argv[1:7]
names = {}
for l in open(f"{tmp}/nr"):
    n, nm = l.split()
    names.setdefault(int(n), nm)
order = ["stream", "rag", "assemble", "infer", "post"]
out = {"commit": commit, "duration_s": float(dur), "cases": {}}
md = ["# System calls and context switches per request, by stage\n",
      f"`bench/syscalls.sh` (scenario 9 of `make bench`), commit {commit}: tpo proxying `tpo-bench --serve` "
      "(default configuration), open loop, each case on a fresh instance; `perf record` of the "
      "raw_syscalls:sys_enter and sched:sched_switch tracepoints of the stage processes over the load "
      f"({dur} s) and ~1 s around it, divided by the requests sent. *Switches*: times a stage process left "
      "its CPU; *preempted*: of those, the ones where it was still runnable (the CPU went to another "
      "task) rather than asleep. Each stage summed over its lanes. perf slows what it traces: no "
      "latency here.\n"]
bad = 0
for case, r, label in (("plain", int(rate), f"non-streamed, {rate} req/s"),
                       ("stream", int(srate), f"streamed (64 tokens), {srate} streams/s")):
    b = json.load(open(f"{tmp}/{case}.json"))["total"]
    sent, ok = b["sent"], b["ok"]
    bad += sent - ok
    stage_of = {}
    for l in open(f"{tmp}/{case}.procs"):
        p, s = l.split()
        stage_of[int(p)] = s
    calls = collections.defaultdict(collections.Counter)
    sw = collections.Counter()
    pre = collections.Counter()
    for l in open(f"{tmp}/{case}.txt"):
        m = re.match(r"\s*(\d+)\s+(\S+):\s*(.*)", l)
        if not m or int(m.group(1)) not in stage_of:
            continue
        pid, ev, tr = int(m.group(1)), m.group(2), m.group(3)
        s = stage_of[pid]
        if "sys_enter" in ev:
            nr = re.search(r"NR (\d+)", tr)
            if nr:
                calls[s][names.get(int(nr.group(1)), "nr" + nr.group(1))] += 1
        elif "sched_switch" in ev:
            pp = re.search(r"prev_pid=(\d+)", tr)
            if pp and int(pp.group(1)) == pid:
                sw[s] += 1
                st = re.search(r"prev_state=(\S+)", tr)
                if st and st.group(1).startswith("R"):
                    pre[s] += 1
    per = lambda n: round(n / sent, 2) if sent else None
    stages = {}
    for s in order:
        if s not in stage_of.values():
            continue
        stages[s] = {"processes": sum(1 for v in stage_of.values() if v == s),
                     "syscalls_per_req": per(sum(calls[s].values())),
                     "switches_per_req": per(sw[s]), "preempted_per_req": per(pre[s]),
                     "calls_per_req": {k: per(v) for k, v in calls[s].most_common()}}
    tot = {"syscalls_per_req": per(sum(sum(c.values()) for c in calls.values())),
           "switches_per_req": per(sum(sw.values())), "preempted_per_req": per(sum(pre.values()))}
    out["cases"][case] = {"rate": r, "sent": sent, "ok": ok, "stages": stages, "all": tot}
    md += [f"## {label}\n", f"{sent} requests sent, {ok} answered 200.\n",
           "| stage | processes | system calls | switches (preempted) | largest calls |",
           "|---|---:|---:|---:|---|"]
    for s, d in stages.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(d["calls_per_req"].items())[:6])
        md.append(f"| {s} | {d['processes']} | {d['syscalls_per_req']:.2f} | "
                  f"{d['switches_per_req']:.2f} ({d['preempted_per_req']:.2f}) | {top} |")
    md.append(f"| **all stages** | {len(stage_of)} | **{tot['syscalls_per_req']:.2f}** | "
              f"**{tot['switches_per_req']:.2f}** ({tot['preempted_per_req']:.2f}) | |\n")
json.dump(out, open(f"{res}/syscalls.json", "w"), indent=1)
open(f"{res}/syscalls.md", "w").write("\n".join(md))
print("\n".join(md))
sys.exit(1 if bad else 0)
EOF
