#!/usr/bin/env bash
# bench/rag_ab.sh — what a rag process costs a lane when it has nothing to
# retrieve (scenario 8 of `make bench`).
#
# The same open-loop load, in turn: through tpo proxying `tpo-bench --serve`
# with stages.rag.enabled true (five stages: stream, rag, assemble, infer,
# post), through tpo with "auto" and no context file (the default: no rag
# process, the fronts write into assemble's rings), and straight to --serve.
# PAIRS rounds; each run on a fresh instance. Per run: p50/p99 of end-to-end
# latency and the CPU the stage processes used per request, run-queue wait
# included (/proc/PID/schedstat around the run). Writes rag_ab.json and
# rag_ab.md to $TPO_BENCH_RESULTS (bench/results).
#
# usage: bench/rag_ab.sh [BUILD]   env: RATE (req/s, 10000), DUR (s, 10),
#                                   PAIRS (3), STREAM=1 (streamed answers)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
RES=${TPO_BENCH_RESULTS:-$ROOT/bench/results}
RATE=${RATE:-10000} DUR=${DUR:-10} PAIRS=${PAIRS:-3}
NAME=ragab$$
TMP=$(mktemp -d /tmp/tpo-ragab.XXXXXX)
SUP_PID= SERVE_PID=
. "$ROOT/bench/lib.sh"
log() { echo "rag_ab: $*" >&2; }

bench_setup
mkdir -p "$RES"
SPORT=$(free_port)
"$BUILD/tpo-bench" --serve "127.0.0.1:$SPORT" 2>/dev/null &
SERVE_PID=$!
STREAM_ARG=; [ "${STREAM:-0}" = 1 ] && STREAM_ARG=--stream

# stage_cpu: "cpu_ns wait_ns" summed over the instance's stage processes.
stage_cpu() {
	local s l c p st r cpu=0 wait=0 a b
	while read -r s l c p st r; do
		case $s in stream|rag|assemble|infer|post) ;; *) continue ;; esac
		[ "$st" = running ] || continue
		read -r a b _ <"/proc/$p/schedstat" || continue
		cpu=$((cpu + a)); wait=$((wait + b))
	done < <("$BUILD/tpo-supervisor" status --name "$NAME" 2>/dev/null)
	echo "$cpu $wait"
}

# run ARM ROUND: one measured run; leaves $TMP/ARM.ROUND.json (tpo-bench's)
# and, through tpo, $TMP/ARM.ROUND.cpu ("cpu_ns wait_ns procs" of the stages).
run() {
	local arm=$1 round=$2 port url before after procs
	if [ "$arm" = direct ]; then
		url="http://127.0.0.1:$SPORT/v1/chat/completions"
	else
		port=$(free_port)
		cat >"$TMP/c.json" <<EOF
{"name":"$NAME","listen":"127.0.0.1:$port","log_level":"warning",
 "admission":{"max_inflight_per_lane":1000000,"max_connections":100000,"request_timeout_ms":60000},
 "stages":{"rag":{"enabled":$([ "$arm" = five ] && echo true || echo '"auto"')},
  "infer":{"worker":"openai","endpoints":[{"url":"http://127.0.0.1:$SPORT/v1"}]}}}
EOF
		start_instance "$BUILD/tpo-supervisor" "$TMP/c.json" "$port"
		url="http://127.0.0.1:$port/v1/chat/completions"
		# Two seconds of the same load first: connections, caches.
		"$BUILD/tpo-bench" --quiet --url "$url" --mode open --rate "$RATE" --duration 2 \
			$STREAM_ARG >/dev/null 2>&1 || true
		procs=$("$BUILD/tpo-supervisor" status --name "$NAME" | awk '$5 == "running" && $1 != "supervisor"' | wc -l)
		before=$(stage_cpu)
	fi
	"$BUILD/tpo-bench" --quiet --json "$TMP/$arm.$round.json" --url "$url" --mode open \
		--rate "$RATE" --duration "$DUR" --timeout-ms 20000 $STREAM_ARG ||
		{ log "fatal: tpo-bench failed ($arm)"; exit 1; }
	if [ "$arm" != direct ]; then
		after=$(stage_cpu)
		echo "$before $after $procs" >"$TMP/$arm.$round.cpu"
		stop_pid "$SUP_PID" 300; SUP_PID=
		if ls /dev/shm/tpo."$NAME".* >/dev/null 2>&1; then
			log "fatal: the supervisor left /dev/shm/tpo.$NAME.* behind"; exit 1
		fi
	fi
}

log "$PAIRS rounds of five stages / four stages / direct at $RATE req/s for $DUR s${STREAM_ARG:+ (streamed)}"
for r in $(seq "$PAIRS"); do
	for arm in five four direct; do
		run "$arm" "$r"
	done
done

python3 - "$TMP" "$RES" "$PAIRS" "$RATE" "$DUR" "${STREAM:-0}" \
	"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, statistics, sys
tmp, res, pairs, rate, dur, stream, commit = sys.argv[1:8]
pairs = int(pairs)
def pct(d, k):
    h = d["total"].get("latency_us", {}).get("ttft" if k == "ttft" else "e2e_ok", {})
    return h.get("p50" if k in ("p50", "ttft") else k)
rows = {"five": [], "four": [], "direct": []}
for arm in rows:
    for r in range(1, pairs + 1):
        d = json.load(open(f"{tmp}/{arm}.{r}.json"))
        t = d["total"]
        e = {"sent": t["sent"], "ok": t["ok"], "p50_us": pct(d, "p50"), "p99_us": pct(d, "p99")}
        if stream == "1":
            e["ttft_p50_us"] = pct(d, "ttft")
        if arm != "direct":
            c0, w0, c1, w1, procs = map(int, open(f"{tmp}/{arm}.{r}.cpu").read().split())
            e["stage_processes"] = procs
            e["cpu_us_per_req"] = (c1 - c0) / 1e3 / t["sent"]
            e["wait_us_per_req"] = (w1 - w0) / 1e3 / t["sent"]
        rows[arm].append(e)
med = lambda xs: statistics.median(xs) if xs and None not in xs else None
def m(arm, k): return med([e.get(k) for e in rows[arm]])
out = {"commit": commit, "rate": int(rate), "duration_s": float(dur), "rounds": pairs,
       "streamed": stream == "1", "runs": rows, "median": {}}
for arm in rows:
    out["median"][arm] = {k: m(arm, k) for k in rows[arm][0] if k not in ("sent", "ok")}
for arm in ("five", "four"):
    for k in ("p50_us", "p99_us"):
        a, d = m(arm, k), m("direct", k)
        out["median"][arm]["added_" + k] = a - d if a is not None and d is not None else None
    if stream == "1":
        a, d = m(arm, "ttft_p50_us"), m("direct", "ttft_p50_us")
        out["median"][arm]["added_ttft_p50_us"] = a - d if a is not None and d is not None else None
lost = sum(e["sent"] - e["ok"] for arm in rows for e in rows[arm])
out["not_ok"] = lost
json.dump(out, open(f"{res}/rag_ab.json", "w"), indent=1)
f5, f4 = out["median"]["five"], out["median"]["four"]
def fmt(v, n=1): return "n/a" if v is None else f"{v:,.{n}f}"
def ratio(a, b): return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}×"
md = ["# A rag process with nothing to retrieve: five stages against four\n",
      f"`bench/rag_ab.sh` (scenario 8 of `make bench`), commit {commit}: {rate} req/s open loop"
      f"{' (streamed)' if stream == '1' else ''}, {dur} s per run, {pairs} rounds of: tpo proxying "
      "`tpo-bench --serve` with `stages.rag.enabled` true (five stages), the same with \"auto\" and no context file "
      "(no rag process: four), the same load straight to --serve. Medians of the rounds; added = tpo − direct; "
      "CPU and waiting: `/proc/PID/schedstat` of the stage processes around each run, per request sent.\n",
      "| figure | five stages | four stages (the default) | four / five |", "|---|---:|---:|---:|"]
for k, nm in (("stage_processes", "stage processes"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"),
              ("added_p50_us", "added p50 µs"), ("added_p99_us", "added p99 µs"),
              ("ttft_p50_us", "TTFT p50 µs"), ("added_ttft_p50_us", "TTFT added p50 µs"),
              ("cpu_us_per_req", "stage CPU per request µs"), ("wait_us_per_req", "stage run-queue wait per request µs")):
    if k not in f5:
        continue
    md.append(f"| {nm} | {fmt(f5[k], 0 if k == 'stage_processes' else 1)} | {fmt(f4[k], 0 if k == 'stage_processes' else 1)} | {ratio(f4[k], f5[k])} |")
md.append(f"| direct p50 / p99 µs | {fmt(out['median']['direct']['p50_us'])} / {fmt(out['median']['direct']['p99_us'])} | | |")
md.append(f"\nRequests not answered 200: {lost}.\n")
md.append("Per round (five / four / direct): p50 µs " + "; ".join(
    " / ".join(fmt(rows[a][i]["p50_us"]) for a in ("five", "four", "direct")) for i in range(pairs)) +
    "; stage CPU per request µs " + "; ".join(
    " / ".join(fmt(rows[a][i]["cpu_us_per_req"]) for a in ("five", "four")) for i in range(pairs)) + ".\n")
open(f"{res}/rag_ab.md", "w").write("\n".join(md))
print("\n".join(md))
sys.exit(1 if lost else 0)
EOF
