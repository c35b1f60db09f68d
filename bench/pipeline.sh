#!/usr/bin/env bash
# bench/pipeline.sh BUILD — the pipeline scenarios of `make bench` (issue 7,
# scenarios 2–6), run against the real supervisor, each next to a baseline
# measured in the same run:
#
#   2 capacity   closed loop, non-streaming and streaming (64 tokens), mock
#                worker at unlimited speed, against `tpo-bench --serve` (a bare
#                OpenAI-compatible responder: one HTTP hop, no pipeline)
#   3 overhead   the same load straight to an upstream and through tpo
#                proxying to it (openai worker): the upstream is `--serve`,
#                then the npm @dwmkerr/mock-llm; tpo's proxied capacity first
#                (closed loop), then the highest open-loop rate it sustains
#                (bisection), then open loop at 25/50/75/90 % of that; at
#                50 and 90 % nginx in front of the same upstream too (a
#                reference reverse proxy: Debian's package, unpacked into
#                TPO_NGINX_DIR, /tmp/tpo-bench-nginx, when the machine has none)
#   4 surge      tpo bounded by the model (mock at a fixed token rate, small
#                admission budget): its capacity closed loop, then 50 % 5 s,
#                300 % 10 s, 50 % 10 s open loop; reject_new, then drop_oldest
#   5 chaos      SIGKILL a random stage process every second for 30 s
#   6 memory     RSS per stage process and shm at 1k and 10k open streams
#
#   3c           the same against any OpenAI-compatible upstream given on the
#                command line (`make bench UPSTREAM=URL`, or a second
#                argument here): its base URL (http://host:port, a trailing
#                /v1 is fine); TPO_BENCH_MODEL names the model to ask for,
#                TPO_BENCH_API_KEY_ENV the environment variable holding its
#                API key (sent by tpo and by the direct runs alike)
#
# Writes bench/results/pipeline.json and pipeline.md (plus SVG plots).
# Installs what it needs with apt-get when missing and run as root: python3,
# curl, iproute2 (ss), coreutils (shuf), gnuplot-nox (plots; optional).
# Knobs: TPO_BENCH_RUNS (3), TPO_BENCH_DURATION (4 s per point),
# TPO_BENCH_SUST_STEPS (5: bisection probes for the sustained rate),
# TPO_BENCH_SKIP="capacity overhead mockllm url surge chaos memory nginx"
# (scenarios to skip; nginx: scenario 3 without its reference proxy),
# TPO_BENCH_MERGE=1 (skipped scenarios keep their sections from the
# previous pipeline.json/.md, so one scenario can be re-run alone),
# TPO_MOCKLLM_DIR (/tmp/tpo-bench-node: where npm installs mock-llm),
# TPO_BENCH_PLOTS=0 (no plots: gnuplot is neither needed nor installed),
# TPO_BENCH_RESULTS (bench/results: where the report goes; raw/ in it keeps
# the last run's tpo-bench JSON files, ignored by git).
# Leaves no process and no /dev/shm/tpo.* behind, whatever happens.
set -u

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${1:-build}
UPSTREAM=${2:-${TPO_BENCH_UPSTREAM:-}}
UP_MODEL=${TPO_BENCH_MODEL:-}
UP_KEY_ENV=${TPO_BENCH_API_KEY_ENV:-}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BENCH=$BUILD/tpo-bench
SUP=$BUILD/tpo-supervisor
RES=${TPO_BENCH_RESULTS:-$ROOT/bench/results}
RUNS=${TPO_BENCH_RUNS:-3}
DUR=${TPO_BENCH_DURATION:-4}
SKIP=" ${TPO_BENCH_SKIP:-} "
MOCKLLM_DIR=${TPO_MOCKLLM_DIR:-/tmp/tpo-bench-node}
MERGE=${TPO_BENCH_MERGE:-0}
NAME=pb$$
TMP=$(mktemp -d /tmp/tpo-pipeline.XXXXXX)
R=$TMP/r
mkdir -p "$R" "$RES"

SUP_PID= SERVE_PID= MOCK_PID= KILLER_PID= LOAD_PID= NGINX_PID= STEAL_PID=

log() { printf 'pipeline: %s\n' "$*" >&2; }
skipped() { case $SKIP in *" $1 "*) return 0 ;; esac; return 1; }

. "$ROOT/bench/lib.sh"   # stop_pid, free_port

cleanup() {
	stop_pid "$KILLER_PID"; stop_pid "$LOAD_PID"; stop_pid "$STEAL_PID"
	stop_pid "$SUP_PID"; stop_pid "$SERVE_PID"; stop_pid "$MOCK_PID"; stop_pid "$NGINX_PID"
	rm -f /dev/shm/tpo."$NAME".* 2>/dev/null
	# Every run's tpo-bench JSON stays for a closer look (not in git):
	# bench/results/raw/ holds the last run's.
	if [ -d "$R" ] && [ -n "$(ls -A "$R" 2>/dev/null)" ]; then
		rm -rf "$RES/raw" && mkdir -p "$RES/raw" && cp "$R"/*.json "$RES/raw/" 2>/dev/null
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for f in "$BENCH" "$SUP"; do
	[ -x "$f" ] || { log "fatal: $f missing: build first (make BUILD=...)"; exit 111; }
done
# Dependencies: installed with apt-get only when missing (and only as root).
APT_UPDATED=
apt_install() {  # package...
	command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || return 1
	log "installing $* with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$TMP/apt.log" 2>&1 && return 0
	[ -n "$APT_UPDATED" ] && return 1
	APT_UPDATED=1
	DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$TMP/apt.log" 2>&1
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$TMP/apt.log" 2>&1
}
need() {  # command package required|optional
	command -v "$1" >/dev/null && return 0
	apt_install "$2"
	command -v "$1" >/dev/null && return 0
	[ "$3" = optional ] && { log "$1 missing ($2 not installable): going on without it"; return 0; }
	log "fatal: $1 is needed (package $2; apt-get could not install it)"
	[ -f "$TMP/apt.log" ] && tail -5 "$TMP/apt.log" >&2
	exit 111
}
need python3 python3 required
need curl curl required
skipped memory || need ss iproute2 required   # scenario 6 counts open streams with it
need shuf coreutils required
# TPO_BENCH_PLOTS=0: no plots, and no gnuplot installed for them
[ "${TPO_BENCH_PLOTS:-1}" = 0 ] || need gnuplot gnuplot-nox optional

# field FILE... EXPR: median over the JSON files of a python expression on d
median() {
	local expr=$1; shift
	python3 - "$expr" "$@" <<'EOF'
import json, statistics, sys
expr = sys.argv[1]
v = [eval(expr, {}, {"d": json.load(open(f))}) for f in sys.argv[2:]]
print(statistics.median(v) if v else 0)
EOF
}

# ---- the machine ----
python3 - "$R/machine.json" <<'EOF'
import json, os, platform, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
m = {
  "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
  "cores": os.cpu_count(),
  # lscpu names the hypervisor when it says who it is; the CPU's
  # "hypervisor" flag tells a guest in any case (Firecracker names none)
  "hypervisor": sh("lscpu | sed -n 's/^Hypervisor vendor: *//p'") or
                ("guest, hypervisor not named" if " hypervisor" in sh("grep -m1 '^flags' /proc/cpuinfo") else ""),
  "kernel": platform.release(),
  "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
  "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
  "loadavg_start": open("/proc/loadavg").read().split()[:3],
  # steal ticks (/proc/stat) and when: the report gives the run's share
  "steal_start": [float(sh("date +%s.%N") or 0), int(open("/proc/stat").readline().split()[8])],
  "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
}
json.dump(m, open(sys.argv[1], "w"))
EOF

# ---- tpo ----
PORT=$(free_port)
LISTEN=127.0.0.1:$PORT
URL=http://$LISTEN/v1/chat/completions

# The surge's tpo is bounded by its model, not by the machine: each answer is
# SURGE_TOKENS tokens at SURGE_TPS tokens/s (~40 ms), an infer process runs
# SURGE_INFER at once and the front admits SURGE_BUDGET per lane, so capacity
# is lanes * SURGE_INFER / 40 ms (a few thousand req/s, well within what one
# tpo-bench thread sends) and SURGE_BUDGET - SURGE_INFER admitted requests per
# lane wait for inference (what drop_oldest can shed).
SURGE_TPS=400 SURGE_TOKENS=16 SURGE_INFER=48 SURGE_BUDGET=64

# config KIND [UPSTREAM|POLICY]: cap (admission limits high), default
# (default admission), surge POLICY (bounded by the model, above), chaos (cap
# + fast restarts, no circuit), mem (cap + 10000 infer jobs), proxy (cap with
# the openai worker in front of UPSTREAM, a base URL)
config() {
	local kind=$1 adm restart='{}' inflight=256 worker
	adm='{"max_inflight_per_lane":1000000,"max_connections":100000,"request_timeout_ms":60000,"idle_timeout_ms":600000}'
	[ "$kind" = default ] && adm='{}'
	[ "$kind" = surge ] && adm='{"policy":"'$2'","max_inflight_per_lane":'$SURGE_BUDGET',"request_timeout_ms":10000}'
	[ "$kind" = chaos ] && restart='{"base_ms":10,"cap_ms":200,"max_restarts":63,"window_ms":1000,"stable_ms":1000}'
	# infer scans all max_inflight job slots per loop: only mem needs many
	[ "$kind" = mem ] && inflight=10000
	worker='"worker":"mock","mock":{"tokens_per_second":0,"max_tokens":64,"seed":1}'
	[ "$kind" = surge ] && { inflight=$SURGE_INFER
		worker='"worker":"mock","mock":{"tokens_per_second":'$SURGE_TPS',"max_tokens":'$SURGE_TOKENS',"seed":1}'; }
	# proxy: infer's defaults (64 transfers at once per lane, retries,
	# breaker). With 1,024 per lane, at 90 % of mock-llm's capacity infer
	# opened up to 2,048 connections to it when it fell behind, which
	# slowed it further until its breaker opened (503s, p50 0.5 s).
	[ "$kind" = proxy ] && { inflight=64; worker='"worker":"openai","endpoints":[{"url":"'$2'"'$PROXY_EP'}],
   "timeouts":{"connect_ms":2000,"first_token_ms":10000,"idle_ms":10000,"total_ms":60000}'; }
	cat > "$TMP/$kind${2:+.${2//[^a-z_]/}}.json" <<EOF
{"name":"$NAME","listen":"$LISTEN","log_level":"warning",
 "admission":$adm,"restart":$restart,
 "stages":{"infer":{"max_inflight":$inflight,
   $worker}}}
EOF
	echo "$TMP/$kind${2:+.${2//[^a-z_]/}}.json"
}

PROXY_EP=   # more of the proxied endpoint's JSON (3c: its model and key)

start_tpo() {  # config file
	local i code
	"$SUP" start -c "$1" --name "$NAME" >>"$TMP/sup.log" 2>&1 &
	SUP_PID=$!
	for i in $(seq 100); do
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://$LISTEN/readyz" 2>/dev/null)
		[ "$code" = 200 ] && return 0
		kill -0 "$SUP_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "tpo did not become ready; supervisor log:"; tail -20 "$TMP/sup.log" >&2
	return 1
}

stop_tpo() {
	stop_pid "$SUP_PID"; SUP_PID=
	if ls /dev/shm/tpo."$NAME".* >/dev/null 2>&1; then
		log "warning: the supervisor left /dev/shm/tpo.$NAME.* behind"
		rm -f /dev/shm/tpo."$NAME".*
	fi
}

stage_pids() {  # "stage lane pid" of running stage processes
	"$SUP" status --name "$NAME" 2>/dev/null |
		awk '$1 ~ /^(stream|rag|assemble|infer|post)$/ && $5 == "running" { print $1, $2, $4 }'
}

# CPU time and run-queue wait (/proc/PID/schedstat: ns on a CPU, ns runnable
# but waiting for one) of every stage process and of the upstream, one line
# "name pid cpu_ns wait_ns" each; read before and after a tpo run at 50 %
# for the report's "where the CPU went".
# With "nginx" as a second argument, nginx's master and workers instead of
# the stages (its runs at 50 %: what a single-hop proxy uses at that load).
prof_read() {  # upstream-pid [nginx]
	local s l p
	if [ "${2:-}" = nginx ]; then
		for p in $NGINX_PID $(ps --ppid "$NGINX_PID" -o pid= 2>/dev/null); do
			echo "nginx $p $(cut -d' ' -f1,2 "/proc/$p/schedstat" 2>/dev/null)"
		done
	else
		stage_pids | while read -r s l p; do
			echo "$s $p $(cut -d' ' -f1,2 "/proc/$p/schedstat" 2>/dev/null)"
		done
	fi
	[ -n "$1" ] && echo "upstream $1 $(cut -d' ' -f1,2 "/proc/$1/schedstat" 2>/dev/null)"
}

prof_end() {  # out.json before-file upstream-pid wall-ns [nginx]: deltas summed per name
	prof_read "$3" "${5:-}" > "$2.after"
	python3 - "$1" "$2" "$2.after" "$4" <<'EOF'
import json, sys
out, a, b, wall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def rd(f):
    r = {}
    for line in open(f):
        x = line.split()
        if len(x) == 4:
            r[x[1]] = (x[0], int(x[2]), int(x[3]))
    return r
a, b = rd(a), rd(b)
procs = {}
for pid, (name, cpu, wait) in b.items():
    if pid not in a:
        continue   # restarted during the run: its time is not comparable
    e = procs.setdefault(name, {"cpu_ns": 0, "wait_ns": 0, "processes": 0})
    e["cpu_ns"] += cpu - a[pid][1]
    e["wait_ns"] += wait - a[pid][2]
    e["processes"] += 1
json.dump({"wall_ns": wall, "procs": procs}, open(out, "w"))
EOF
}

restarts_total() {
	"$SUP" status --name "$NAME" 2>/dev/null |
		awk '$1 ~ /^(stream|rag|assemble|infer|post)$/ { n += $6 } END { print n + 0 }'
}

snapshot() {  # out.json: VmRSS per stage process, /dev/shm use, open streams
	stage_pids > "$TMP/pids.txt"
	python3 - "$1" "$NAME" "$PORT" "$TMP/pids.txt" <<'EOF'
import glob, json, os, subprocess, sys
out, name, port, pids = sys.argv[1:5]
procs = []
for line in open(pids):
    stage, lane, pid = line.split()
    rss = shm_rss = uss = pss = 0
    try:
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmRSS:"): rss = int(l.split()[1])
        for l in open(f"/proc/{pid}/smaps_rollup"):
            f = l.split()
            if f and f[0] in ("Private_Clean:", "Private_Dirty:"): uss += int(f[1])
            elif f and f[0] == "Pss:": pss = int(f[1])
        cur = None
        for l in open(f"/proc/{pid}/smaps"):
            f = l.split()
            if len(f) >= 6 and "-" in f[0]: cur = f[5]
            elif f and f[0] == "Rss:" and cur and cur.startswith(f"/dev/shm/tpo.{name}."):
                shm_rss += int(f[1])
    except OSError:
        continue
    procs.append({"stage": stage, "lane": int(lane), "pid": int(pid),
                  "vmrss_kib": rss, "shm_rss_kib": shm_rss, "private_kib": rss - shm_rss,
                  "uss_kib": uss, "pss_kib": pss})
segs = {}
for p in glob.glob(f"/dev/shm/tpo.{name}.*"):
    st = os.stat(p)
    segs[os.path.basename(p)] = {"size_kib": st.st_size // 1024, "resident_kib": st.st_blocks // 2}
ss = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                    capture_output=True, text=True).stdout
json.dump({"procs": procs, "shm": segs, "open_conns": len(ss.splitlines())}, open(out, "w"))
EOF
}

# steal_sampler FILE: "seconds steal_ticks" lines every 0.2 s until killed:
# the time the host ran something else while a vCPU of ours wanted to run
# (/proc/stat, USER_HZ ticks summed over the CPUs).
steal_sampler() {
	local _ steal
	while :; do    # builtins but the sleep: the sampler stays out of the way
		read -r _ _ _ _ _ _ _ _ steal _ </proc/stat
		printf '%s %s\n' "${EPOCHREALTIME/,/.}" "$steal"
		sleep 0.2
	done >"$1"
}

bench() {  # out.json args...
	local out=$1; shift
	"$BENCH" --quiet --json "$out" "$@" || log "warning: tpo-bench $* exited $?"
	[ -s "$out" ] || echo '{}' > "$out"
}

# the bare baseline, alive for the whole run (idle when not measured)
SPORT=$(free_port)
"$BENCH" --serve 127.0.0.1:$SPORT 2>>"$TMP/serve.log" &
SERVE_PID=$!
SURL=http://127.0.0.1:$SPORT/v1/chat/completions
sleep 0.3

T_START=$(date +%s)

# ---- 2 capacity ----
CAP_PLAIN=0 CAP_STREAM=0
if ! skipped capacity; then
log "capacity: closed loop, $RUNS runs x ${DUR}s per target and mode"
start_tpo "$(config cap)" || exit 111
for run in $(seq "$RUNS"); do
	for tgt in tpo base; do
		u=$URL; [ $tgt = base ] && u=$SURL
		bench "$R/cap.$tgt.plain.$run.json" --url "$u" --mode closed --concurrency 128 \
			--duration "$DUR" --warmup 1 --max-tokens 64 --timeout-ms 10000
		bench "$R/cap.$tgt.stream.$run.json" --url "$u" --mode closed --concurrency 64 \
			--duration "$DUR" --warmup 1 --max-tokens 64 --stream --timeout-ms 10000
	done
done
CAP_PLAIN=$(median 'd["total"]["ok_per_s"]' "$R"/cap.tpo.plain.*.json)
CAP_STREAM=$(median 'd["total"]["ok_per_s"]' "$R"/cap.tpo.stream.*.json)
log "capacity: tpo $CAP_PLAIN req/s non-streaming, $CAP_STREAM req/s streaming (medians)"

stop_tpo
fi

# ---- 3 overhead: straight to an upstream, and through tpo proxying to it ----
# sustained UP KIND CAP [tpo-bench args...]: the highest open-loop rate tpo
# keeps up with, by bisection between CAP/4 and CAP (CAP: the closed-loop
# capacity), SUST_STEPS probes of one run each. A rate is kept up with when
# every request is answered, ok/s is at least 98 % of the offered rate and
# the e2e p99 stays within SUST_P99_US: a backlog that grows for the whole
# run fails the last two. Closed loop, with a queue always waiting at every
# hop, each wake-up serves a batch; open-loop arrivals wake every stage per
# request and cost more CPU each, so this rate is lower. A probe that fails
# is run once more (a one-off stall of the shared machine should not lower
# the rate, and so the loads and the targets measured at them). Prints the
# rate, and writes it with each probe's verdicts to ovhsus.UP.KIND.json (the
# probes' results: ovhsus.UP.KIND.N.json, a failed first run
# ovhsus.UP.KIND.N.first.json).
SUST_STEPS=${TPO_BENCH_SUST_STEPS:-5} SUST_P99_US=10000
sustained_ok() {  # FILE RATE: did that run keep up?
	python3 - "$1" "$2" "$SUST_P99_US" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])).get("total", {})
rate, p99max = float(sys.argv[2]), float(sys.argv[3])
p99 = d.get("latency_us", {}).get("e2e_ok", {}).get("p99") or float("inf")
ok = d.get("ok", 0) == d.get("sent", -1) and d.get("ok_per_s", 0) >= 0.98 * rate and p99 <= p99max
sys.exit(0 if ok else 1)
EOF
}
sustained() {
	local up=$1 kind=$2 cap=$3 lo hi mid i f try v kept=
	shift 3
	lo=$((cap / 4)) hi=$cap
	for i in $(seq "$SUST_STEPS"); do
		mid=$(((lo + hi) / 2))
		f=$R/ovhsus.$up.$kind.$i.json
		for try in 1 2; do
			[ $try = 2 ] && mv "$f" "${f%.json}.first.json"
			bench "$f" --url "$URL" --mode open --rate "$mid" --duration "$DUR" \
				--warmup 1 --timeout-ms 10000 --max-conns 10000 "$@"
			sustained_ok "$f" "$mid" && break
		done
		if [ $try = 1 ]; then
			v=yes lo=$mid
		elif sustained_ok "$f" "$mid"; then
			v="no, then yes" lo=$mid
		else
			v="no, twice" hi=$mid
		fi
		kept+=${kept:+,}\"$v\"
		log "overhead/$up: $kind sustained? $mid req/s: $v"
	done
	echo "{\"req_per_s\": $lo, \"kept\": [$kept]}" > "$R/ovhsus.$up.$kind.json"
	echo "$lo"
}

# A reference reverse proxy beside tpo in scenario 3: nginx, one worker per
# core, keep-alive connections to the upstream, nothing buffered (SSE flows
# as it comes), no access log. What any proxy in front of the upstream costs
# on these cores, so tpo's added latency can be read against it. The
# machine's nginx if it has one; else Debian's package unpacked into
# NGINX_DIR (apt-get download + dpkg-deb -x: nothing installed, no service
# started). NGINX is empty when neither works or "nginx" is in
# TPO_BENCH_SKIP; the scenario then runs without it.
NGINX_DIR=${TPO_NGINX_DIR:-/tmp/tpo-bench-nginx}
NGINX=
nginx_find() {
	local deb
	if command -v nginx >/dev/null; then
		NGINX=$(command -v nginx)
		return 0
	fi
	if [ ! -x "$NGINX_DIR/usr/sbin/nginx" ] && command -v apt-get >/dev/null; then
		log "nginx: apt-get download nginx, unpacked into $NGINX_DIR"
		mkdir -p "$NGINX_DIR"
		( cd "$NGINX_DIR" || exit 1
		  apt-get download nginx >>"$TMP/apt.log" 2>&1 ||
			{ [ "$(id -u)" = 0 ] && apt-get update -q >>"$TMP/apt.log" 2>&1 &&
			  apt-get download nginx >>"$TMP/apt.log" 2>&1; }
		  for deb in nginx_*.deb; do
			[ -f "$deb" ] && dpkg-deb -x "$deb" . && rm -f "$deb"
		  done )
	fi
	if [ -x "$NGINX_DIR/usr/sbin/nginx" ] && "$NGINX_DIR/usr/sbin/nginx" -v 2>/dev/null; then
		NGINX=$NGINX_DIR/usr/sbin/nginx
		return 0
	fi
	log "nginx: not available: scenario 3 runs without the reference proxy"
	return 1
}
if ! skipped nginx && { ! skipped overhead || ! skipped mockllm || { [ -n "$UPSTREAM" ] && ! skipped url; }; }; then
	nginx_find
fi
[ -n "$NGINX" ] && "$NGINX" -v 2>&1 | python3 -c 'import json, sys; json.dump({"version": sys.stdin.read().strip().split("/")[-1]}, open(sys.argv[1], "w"))' "$R/nginx.json"

# start_nginx UPBASE: nginx proxying to UPBASE (http://host:port) at NGINX_URL.
start_nginx() {
	local hp=${1#http://} d=$TMP/nginx i
	hp=${hp%%/*}
	NGINX_URL=http://127.0.0.1:$(free_port)
	rm -rf "$d" && mkdir -p "$d"
	cat > "$d/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $d/nginx.pid;
events { worker_connections 20000; }
http {
	access_log off;
	client_body_temp_path $d/body; proxy_temp_path $d/proxy;
	fastcgi_temp_path $d/fastcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
	upstream up { server $hp; keepalive 512; }
	server {
		listen ${NGINX_URL#http://} backlog=4096;
		location / {
			proxy_pass http://up;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $hp;
			proxy_buffering off;
			proxy_request_buffering off;
		}
	}
}
CONF
	"$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >>"$TMP/nginx.log" 2>&1 &
	NGINX_PID=$!
	for i in $(seq 50); do
		curl -s -o /dev/null "$NGINX_URL/" && return 0
		kill -0 "$NGINX_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "nginx did not start:"; tail -n 5 "$d/error.log" "$TMP/nginx.log" >&2
	stop_pid "$NGINX_PID"; NGINX_PID=
	return 1
}

# overhead UP UPBASE CONC_PLAIN CONC_STREAM CAPRUNS PCTS BASE [tpo-bench args...]:
# tpo (openai worker, endpoint UPBASE) measured closed loop (CAPRUNS runs per
# mode, median), then open loop at PCTS % of BASE: "sustained" (the highest
# open-loop rate tpo keeps up with, above) or "closed" (the closed-loop
# capacity), tpo and the upstream alternating, $RUNS runs at 50 and 90 %, one
# at other loads; at 50 and 90 % nginx in front of the same upstream (above)
# takes its turn too, after a warm-up run of its own. The upstream's own
# closed-loop capacity is ovhcap.UP.KIND.direct.*.json.
overhead() {
	local up=$1 ubase=$2 cplain=$3 cstream=$4 capruns=$5 pcts=$6 base=$7 kind conc cap
	local rate pct n run tgt tgts u extra t0 uppid=$SERVE_PID ng= warm
	[ "$up" = ml ] && uppid=$MOCK_PID
	[ "$up" = url ] && uppid=   # not ours: no schedstat
	shift 7
	start_tpo "$(config proxy "$ubase")" || return 1
	case $ubase in http://*) [ -n "$NGINX" ] && start_nginx "$ubase" && ng=1 ;; esac
	for kind in plain stream; do
		conc=$cplain; extra=("$@")
		[ $kind = stream ] && { conc=$cstream; extra+=(--stream); }
		log "overhead/$up: proxied capacity, $kind, $capruns run(s) x ${DUR}s, $conc connections"
		for run in $(seq "$capruns"); do
			bench "$R/ovhcap.$up.$kind.tpo.$run.json" --url "$URL" --mode closed \
				--concurrency "$conc" --duration "$DUR" --warmup 1 --timeout-ms 10000 "${extra[@]}"
		done
		cap=$(median 'd.get("total", {}).get("ok_per_s", 0)' "$R"/ovhcap."$up".$kind.tpo.*.json)
		log "overhead/$up: proxied capacity $kind $cap req/s"
		if [ "$base" = sustained ]; then
			cap=$(sustained "$up" $kind "${cap%.*}" "${extra[@]}")
			log "overhead/$up: sustained open-loop capacity $kind $cap req/s"
		fi
		warm=$ng
		for pct in $pcts; do
			rate=$(python3 -c "print(max(1, int($cap * $pct / 100)))")
			n=1 tgts="tpo direct"
			case $pct in 50|90) n=$RUNS; [ -n "$ng" ] && tgts+=" nginx" ;; esac
			log "overhead/$up: $kind at $pct % = $rate req/s, $n run(s): $tgts"
			# nginx's first seconds after a start are not its steady state
			# (runs right after its start took a second or two per request)
			if [ -n "$warm" ] && [ "${tgts%nginx}" != "$tgts" ]; then
				warm=
				bench "$TMP/nginx.warm.json" --url "$NGINX_URL/v1/chat/completions" \
					--mode open --rate "$rate" --duration 3 --timeout-ms 10000 \
					--max-conns 10000 "${extra[@]}"
			fi
			for run in $(seq $n); do
				for tgt in $tgts; do
					u=$URL
					[ $tgt = direct ] && u=$ubase/v1/chat/completions
					[ $tgt = nginx ] && u=$NGINX_URL/v1/chat/completions
					if [ $tgt != direct ] && [ "$pct" = 50 ]; then
						prof_read "$uppid" "${tgt#tpo}" > "$TMP/prof.before"
						t0=$(date +%s%N)
					fi
					bench "$R/ovh.$up.$kind.$pct.$tgt.$run.json" --url "$u" --mode open \
						--rate "$rate" --duration "$DUR" --warmup 1 --timeout-ms 10000 \
						--max-conns 10000 "${extra[@]}"
					if [ $tgt = tpo ] && [ "$pct" = 50 ]; then
						prof_end "$R/prof.$up.$kind.$run.json" "$TMP/prof.before" "$uppid" \
							$(($(date +%s%N) - t0))
					elif [ $tgt = nginx ] && [ "$pct" = 50 ]; then
						prof_end "$R/profng.$up.$kind.$run.json" "$TMP/prof.before" "$uppid" \
							$(($(date +%s%N) - t0)) nginx
					fi
				done
			done
		done
	done
	stop_pid "$NGINX_PID"; NGINX_PID=
	# Memory of a proxying instance after its load.
	[ "$up" = serve ] && { sleep 2; snapshot "$R/mem.proxy.json"; }
	stop_tpo
}

if ! skipped overhead; then
	# --serve's own capacity at the same concurrency is scenario 2's base
	for f in "$R"/cap.base.*.json; do
		g=${f##*/cap.base.}
		cp "$f" "$R/ovhcap.serve.${g%%.*}.direct.${g#*.}"
	done
	overhead serve "http://127.0.0.1:$SPORT" 128 64 "$RUNS" "25 50 75 90" sustained --max-tokens 64 ||
		exit 111
	# The pipeline alone: the same half load through tpo running the mock
	# worker (no upstream hop), alternating with the same load
	# straight to --serve: what tpo's stages add by themselves on these
	# cores, so the report can split the added latency in two.
	start_tpo "$(config cap)" || exit 111
	for kind in plain stream; do
		rate=$(python3 -c "import json; print(max(1, int(json.load(open('$R/ovhsus.serve.$kind.json'))['req_per_s'] * 0.5)))" 2>/dev/null) ||
			continue
		extra=(--max-tokens 64); [ $kind = stream ] && extra+=(--stream)
		log "overhead/pipeline alone: $kind at $rate req/s (50 %), $RUNS run(s)"
		for run in $(seq "$RUNS"); do
			for tgt in tpo direct; do
				u=$URL; [ $tgt = direct ] && u=$SURL
				bench "$R/ovhpipe.$kind.$tgt.$run.json" --url "$u" --mode open --rate "$rate" \
					--duration "$DUR" --warmup 1 --timeout-ms 10000 --max-conns 10000 "${extra[@]}"
			done
		done
	done
	stop_tpo
fi

# ---- 3b the same with the npm mock-llm as the upstream ----
if ! skipped mockllm; then
	ML=$MOCKLLM_DIR/node_modules/@dwmkerr/mock-llm/dist/main.js
	if [ ! -f "$ML" ] && command -v npm >/dev/null; then
		log "mock-llm: npm install @dwmkerr/mock-llm into $MOCKLLM_DIR"
		mkdir -p "$MOCKLLM_DIR"
		(cd "$MOCKLLM_DIR" && timeout 300 npm install --no-audit --no-fund --silent \
			@dwmkerr/mock-llm >>"$TMP/npm.log" 2>&1) || log "mock-llm: npm install failed"
	fi
	if [ -f "$ML" ] && command -v node >/dev/null; then
		MPORT=$(free_port)
		# one fixed answer: 320 characters, streamed as 64 chunks of 5 (at
		# least 1 ms apart: mock-llm uses setInterval); without a rule it
		# echoes the prompt into its JSON template, which tpo's templated
		# prompt (with newlines) breaks
		C=$(python3 -c 'print(("tpo " * 80)[:320])')
		cat > "$TMP/mockllm.yaml" <<EOF
streaming:
  chunkSize: 5
  chunkIntervalMs: 0
rules:
  - path: "/v1/chat/completions"
    method: "POST"
    match: "@"
    response:
      status: 200
      content: |
        {"id": "chatcmpl-1", "object": "chat.completion", "model": "tpo-mock",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "$C"},
           "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 64, "total_tokens": 67}}
EOF
		HOST=127.0.0.1 PORT=$MPORT node "$ML" --config "$TMP/mockllm.yaml" >"$TMP/mockllm.log" 2>&1 &
		MOCK_PID=$!
		MBASE=http://127.0.0.1:$MPORT
		for i in $(seq 100); do
			curl -s -o /dev/null "$MBASE/health" && break
			sleep 0.1
		done
		for kind in plain stream; do
			extra=(); [ $kind = stream ] && extra=(--stream)
			bench "$R/ovhcap.ml.$kind.direct.1.json" --url "$MBASE/v1/chat/completions" \
				--mode closed --concurrency 32 --duration "$DUR" --warmup 1 --timeout-ms 10000 \
				"${extra[@]}"
		done
		# closed: mock-llm's paced streams (~100 ms) exceed SUST_P99_US
		overhead ml "$MBASE" 32 32 1 "50 90" closed || exit 111
		stop_pid "$MOCK_PID"; MOCK_PID=
	else
		log "mock-llm: not available (npm/node missing or install failed): --serve is the only upstream"
		echo '{"skipped":"mock-llm not installable"}' > "$R/ml.skip.json"
	fi
fi

# ---- 3c the same with an upstream given on the command line ----
if [ -n "$UPSTREAM" ] && ! skipped url; then
	UBASE=${UPSTREAM%/}; UBASE=${UBASE%/v1}
	uargs=(--max-tokens 64)
	PROXY_EP=
	if [ -n "$UP_MODEL" ]; then
		uargs+=(--model "$UP_MODEL")
		PROXY_EP+=',"model":"'$UP_MODEL'"'
	fi
	if [ -n "$UP_KEY_ENV" ]; then
		if [ -n "${!UP_KEY_ENV:-}" ]; then
			uargs+=(--header "Authorization: Bearer ${!UP_KEY_ENV}")
			PROXY_EP+=',"api_key_env":"'$UP_KEY_ENV'"'
		else
			log "upstream: warning: $UP_KEY_ENV is not set: sending no API key"
		fi
	fi
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$UBASE/v1/models" 2>/dev/null)
	log "upstream: $UBASE (GET /v1/models: HTTP ${code:-none})"
	echo "{\"url\": \"$UBASE\", \"model\": \"$UP_MODEL\"}" > "$R/url.upstream.json"
	for kind in plain stream; do
		extra=("${uargs[@]}"); [ $kind = stream ] && extra+=(--stream)
		bench "$R/ovhcap.url.$kind.direct.1.json" --url "$UBASE/v1/chat/completions" \
			--mode closed --concurrency 32 --duration "$DUR" --warmup 1 --timeout-ms 60000 \
			"${extra[@]}"
	done
	overhead url "$UBASE" 32 32 1 "50 90" closed "${uargs[@]}" || exit 111
	PROXY_EP=
fi

# ---- 4 surge ----
# surge POLICY: tpo bounded by the model (config surge); its capacity closed
# loop with one connection per admission slot, then 50 % 5 s, 300 % 10 s and
# 50 % 10 s of it open loop. tpo-bench's send lag (due -> handed to a
# connection) shows whether the surge really left the load generator.
surge() {
	local pol=$1 lanes conc cap lo hi
	start_tpo "$(config surge "$pol")" || return 1
	lanes=$("$SUP" status --name "$NAME" 2>/dev/null | awk '$1 == "stream" { n++ } END { print n + 0 }')
	[ "$lanes" -gt 0 ] || lanes=1
	conc=$((lanes * SURGE_BUDGET))
	log "surge/$pol: capacity, closed loop, $conc connections ($lanes lanes x $SURGE_BUDGET), ${DUR}s"
	bench "$R/surge.$pol.cap.json" --url "$URL" --mode closed --concurrency "$conc" \
		--duration "$DUR" --warmup 1 --max-tokens "$SURGE_TOKENS" --timeout-ms 10000
	cap=$(median 'd.get("total", {}).get("ok_per_s", 0)' "$R/surge.$pol.cap.json")
	lo=$(python3 -c "print(max(1, int($cap * 0.5)))")
	hi=$(python3 -c "print(max(1, int($cap * 3)))")
	[ "$hi" -le 30000 ] || log "surge/$pol: warning: $hi req/s may exceed what one tpo-bench thread sends"
	log "surge/$pol: capacity $cap req/s; $lo req/s 5 s, $hi req/s 10 s, $lo req/s 10 s"
	echo "$lanes" > "$R/surge.$pol.lanes.txt"
	steal_sampler "$R/surge.$pol.steal.txt" &
	STEAL_PID=$!
	bench "$R/surge.$pol.json" --url "$URL" --mode open --profile "$lo:5,$hi:10,$lo:10" \
		--warmup 1 --max-tokens "$SURGE_TOKENS" --timeout-ms 10000 --max-conns 10000
	stop_pid "$STEAL_PID"; STEAL_PID=
	curl -s -o /dev/null -w '%{http_code}' "$URL" -d '{"model":"tpo-mock","messages":[{"role":"user","content":"after"}]}' \
		> "$R/surge.$pol.after.txt"
	stop_tpo
}
if ! skipped surge; then
	echo "{\"tokens_per_second\":$SURGE_TPS,\"max_tokens\":$SURGE_TOKENS,\"infer_max_inflight\":$SURGE_INFER,\"max_inflight_per_lane\":$SURGE_BUDGET}" \
		> "$R/surge.config.json"
	surge reject_new || exit 111
	surge drop_oldest || exit 111
fi

# ---- 5 chaos ----
if ! skipped chaos; then
	# 1000 req/s unless the streaming capacity (if measured) is below 4000
	crate=$(python3 -c "c = $CAP_STREAM; print(max(100, min(1000, int(c * 0.25))) if c else 1000)")
	log "chaos: $crate streamed req/s (64 tokens at 2000 tok/s), 10 s calm then 30 s of SIGKILL/s"
	start_tpo "$(config chaos)" || exit 111
	"$BENCH" --quiet --json "$R/chaos.tpo.json" --url "$URL" --mode open \
		--profile "$crate:10,$crate:30" --warmup 1 --stream --max-tokens 64 \
		--prompt "[[tpo:tps=2000]] chaos" --timeout-ms 15000 --max-conns 10000 &
	LOAD_PID=$!
	(
		sleep 11
		end=$(( $(date +%s) + 30 ))
		while [ "$(date +%s)" -lt "$end" ]; do
			line=$(stage_pids | shuf -n 1)
			if [ -n "$line" ]; then
				set -- $line
				kill -KILL "$3" 2>/dev/null && echo "$(date +%s.%N) $1 $2 $3"
			fi
			sleep 1
		done
	) > "$R/chaos.kills.txt" &
	KILLER_PID=$!
	wait "$KILLER_PID"; KILLER_PID=
	wait "$LOAD_PID"; LOAD_PID=
	[ -s "$R/chaos.tpo.json" ] || echo '{}' > "$R/chaos.tpo.json"
	restarts_total > "$R/chaos.restarts.txt"
	sleep 1
	curl -s -o /dev/null -w '%{http_code}' "$URL" -d '{"model":"tpo-mock","messages":[{"role":"user","content":"after"}]}' \
		> "$R/chaos.after.txt"
	"$SUP" status --name "$NAME" > "$R/chaos.status.txt" 2>&1
	stop_tpo
fi

# ---- 6 memory ----

if ! skipped memory; then
	start_tpo "$(config default)" || exit 111
	sleep 0.5
	snapshot "$R/mem.default.json"
	stop_tpo
	start_tpo "$(config mem)" || exit 111
	sleep 0.5
	snapshot "$R/mem.idle.json"
	for n in 1000 10000; do
		ramp=$(python3 -c "print(max(1, $n / 2500))")
		log "memory: $n open streams (1 token/s), ramp ${ramp}s"
		"$BENCH" --quiet --json "$R/mem.$n.bench.json" --url "$URL" --mode closed \
			--concurrency "$n" --ramp "$ramp" --duration "$(python3 -c "print($ramp + 5)")" \
			--stream --max-tokens 64 --prompt "[[tpo:tps=1]] hold" --drain-ms 0 \
			--timeout-ms 60000 &
		LOAD_PID=$!
		sleep "$(python3 -c "print($ramp + 3)")"
		snapshot "$R/mem.$n.json"
		wait "$LOAD_PID"; LOAD_PID=
		sleep 1
	done
	stop_tpo
fi

stop_pid "$SERVE_PID"; SERVE_PID=
echo $(( $(date +%s) - T_START )) > "$R/elapsed.txt"

# ---- the report ----
python3 - "$R" "$RES" "$RUNS" "$DUR" "$MERGE" <<'EOF' || exit 1
import glob, json, os, shutil, statistics, subprocess, sys, time
R, RES, RUNS, DUR = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
MERGE = sys.argv[5] not in ("", "0")

def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
def files(pat):
    return sorted(glob.glob(os.path.join(R, pat)))
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def g(d, *path):
    for k in path:
        if not isinstance(d, (dict, list)):
            return None
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return None
    return d
def not_ok_kinds(fs):
    """What the requests that did not end 2xx got, summed over runs:
    "HTTP 502 × 3, timeouts × 1" (empty when every request ended ok)."""
    c = {}
    for d in fs:
        for st, n in (g(d, "total", "answers") or {}).items():
            if not str(st).startswith("2"):
                c[f"HTTP {st}"] = c.get(f"HTTP {st}", 0) + n
        for k in ("conn_errors", "timeouts", "unanswered", "stream_errors"):
            n = g(d, "total", k) or 0
            if n:
                c[k.replace("_", " ")] = c.get(k.replace("_", " "), 0) + n
    return ", ".join(f"{k} × {n}" for k, n in sorted(c.items()))


def lat(d, h, q, ph=None):
    s = d.get("total") if ph is None else g(d, "phases", ph)
    return g(s, "latency_us", h, q)
def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None
def r1(x):
    return None if x is None else round(x, 1)
def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        x = round(x, 1) if abs(x) < 1000 else round(x)
    return f"{x:,}{unit}" if isinstance(x, int) else f"{x}{unit}"

machine = load(os.path.join(R, "machine.json"))
machine["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
try:   # the share of the vCPUs' time the host gave to others during the run
    t0, k0 = machine.pop("steal_start")
    machine["steal_pct"] = round((int(open("/proc/stat").readline().split()[8]) - k0) / os.sysconf("SC_CLK_TCK")
                                 / (time.time() - t0) / (machine.get("cores") or 1) * 100, 2)
except Exception:
    pass
out = {"machine": machine, "runs": RUNS, "duration_s": DUR}
try:
    out["elapsed_s"] = int(open(os.path.join(R, "elapsed.txt")).read())
except Exception:
    pass
md = []
md.append("# tpo pipeline benchmarks (`make bench`, bench/pipeline.sh)\n")
md.append(f"Machine: {machine.get('cpu')} — {machine.get('cores')} vCPUs ({machine.get('hypervisor') or 'bare metal'}), "
          f"{machine.get('mem_gib')} GiB, {machine.get('os')}, Linux {machine.get('kernel')}; {machine.get('date')}. "
          f"Load average at start {' '.join(machine.get('loadavg_start', []))}, at end {' '.join(machine['loadavg_end'])}"
          + (f"; steal (the host running something else on these vCPUs) {machine['steal_pct']} % of their time over the run"
             if machine.get("steal_pct") is not None else "") + ". "
          "The load generator (`tpo-bench`, one thread) runs on the same two cores as every tpo process, "
          "and the machine may be shared with other work: read ratios rather than absolutes. "
          f"Medians of {RUNS} runs of {DUR:g} s (after 1 s of warm-up) where marked.\n")
md.append("Scenarios 2, 5 and 6 run tpo with its mock worker at unlimited speed (tokens_per_second 0), scenario 4 "
          "with the mock at a fixed token rate (its capacity bounded by the model); "
          "scenario 2's baseline `base` is `tpo-bench --serve`, a bare single-threaded OpenAI-compatible responder "
          "that answers at once with the same number of tokens, so `tpo - base` is what tpo's stages add to one "
          "HTTP hop. Scenario 3 puts tpo in front of an upstream (the openai worker) and compares it with the "
          "same load sent straight to that upstream.\n")

# ---- capacity
cap = {}
for kind in ("plain", "stream") if files("cap.tpo.*.json") else ():
    for tgt in ("tpo", "base"):
        fs = [load(f) for f in files(f"cap.{tgt}.{kind}.*.json")]
        cap[f"{tgt}.{kind}"] = {
            "req_per_s_runs": [r1(g(d, "total", "ok_per_s")) for d in fs],
            "req_per_s": r1(med([g(d, "total", "ok_per_s") for d in fs])),
            "tokens_per_s": r1(med([g(d, "total", "tokens_per_s") for d in fs])),
            "p50_us": r1(med([lat(d, "e2e_ok", "p50") for d in fs])),
            "p99_us": r1(med([lat(d, "e2e_ok", "p99") for d in fs])),
            "errors": sum((g(d, "total", "sent") or 0) - (g(d, "total", "ok") or 0) for d in fs),
            "client_cpu_share": r1(med([100 * g(d, "client_cpu_s") / g(d, "wall_s") for d in fs if g(d, "wall_s")])),
        }
if cap:
    out["capacity"] = cap
    md.append("## 2. Capacity (closed loop: 128 connections non-streaming, 64 streaming; 64 tokens per answer)\n")
    md.append("| | tpo | base | tpo / base |\n|---|---|---|---|")
    for kind, label in (("plain", "non-streaming"), ("stream", "streaming")):
        t, b = cap[f"tpo.{kind}"], cap[f"base.{kind}"]
        md.append(f"| {label} req/s (runs: {', '.join(fmt(x) for x in t['req_per_s_runs'])}) | {fmt(t['req_per_s'])} | {fmt(b['req_per_s'])} | {ratio(t['req_per_s'], b['req_per_s'])} |")
        md.append(f"| {label} tokens/s | {fmt(t['tokens_per_s'])} | {fmt(b['tokens_per_s'])} | {ratio(t['tokens_per_s'], b['tokens_per_s'])} |")
        md.append(f"| {label} p50 / p99 at that load, µs | {fmt(t['p50_us'])} / {fmt(t['p99_us'])} | {fmt(b['p50_us'])} / {fmt(b['p99_us'])} | |")
        md.append(f"| {label}: failed answers; client CPU % of wall | {t['errors']}; {fmt(t['client_cpu_share'])} % | {b['errors']}; {fmt(b['client_cpu_share'])} % | |")
    md.append("")

# ---- overhead: straight to an upstream and through tpo proxying to it
def cap_row(fs):
    return {"runs": len(fs),
            "req_per_s_runs": [r1(g(d, "total", "ok_per_s")) for d in fs],
            "req_per_s": r1(med([g(d, "total", "ok_per_s") for d in fs])),
            "p50_us": r1(med([lat(d, "e2e_ok", "p50") for d in fs])),
            "p99_us": r1(med([lat(d, "e2e_ok", "p99") for d in fs])),
            "ttft_p50_us": r1(med([lat(d, "ttft", "p50") for d in fs])),
            "errors": sum((g(d, "total", "sent") or 0) - (g(d, "total", "ok") or 0) for d in fs)}
def sub(a, b):
    return r1(a - b) if a is not None and b is not None else None
PROCS = ("stream", "rag", "assemble", "infer", "post")
def profile(up, kind, tgt="tpo"):
    """Where the CPU went in the tpo runs at 50 % (or nginx's, tgt "nginx"):
    per request sent (warm-up included, as in the schedstat window), CPU and
    run-queue wait of each stage (both lanes), tpo's stages together (or
    nginx's processes), the upstream and the load generator, and how busy the
    cores were; medians of the runs."""
    per = []
    for f in files(f"{'prof' if tgt == 'tpo' else 'profng'}.{up}.{kind}.*.json"):
        p = load(f)
        run = f.rsplit(".", 2)[-2]
        d = load(os.path.join(R, f"ovh.{up}.{kind}.50.{tgt}.{run}.json"))
        n = (g(d, "total", "sent") or 0) + (g(d, "total", "offered_rate") or 0) * (d.get("warmup_s") or 0)
        wall = (p.get("wall_ns") or 0) / 1e9
        if not n or not wall or not p.get("procs"):
            continue
        e = {}
        for name, v in p["procs"].items():
            e[name] = {"cpu_us": v["cpu_ns"] / 1e3 / n, "wait_us": v["wait_ns"] / 1e3 / n}
        if tgt == "tpo":
            e["tpo"] = {k: sum(e[s][k] for s in PROCS if s in e) for k in ("cpu_us", "wait_us")}
        e["generator"] = {"cpu_us": (d.get("client_cpu_s") or 0) * 1e6 / n, "wait_us": None}
        busy = sum(e[k]["cpu_us"] for k in (tgt, "upstream", "generator") if k in e) * n / 1e6
        e["busy_pct"] = 100 * busy / (wall * (machine.get("cores") or 1))
        per.append(e)
    if not per:
        return None
    out_ = {"runs": len(per)}
    for name in PROCS + ("tpo", "nginx", "upstream", "generator"):
        if any(name in e for e in per):
            out_[name] = {k: r1(med([g(e, name, k) for e in per])) for k in ("cpu_us", "wait_us")}
    out_["busy_pct"] = r1(med([e["busy_pct"] for e in per]))
    return out_
def pipeline_alone():
    """The half load through tpo with the mock worker (no upstream hop)
    against the same load straight to --serve, alternating: what
    tpo's stages add by themselves (medians of the runs)."""
    pa = {}
    for kind in ("plain", "stream"):
        row = {}
        for tgt in ("tpo", "direct"):
            fs = [load(f) for f in files(f"ovhpipe.{kind}.{tgt}.*.json")]
            if fs:
                row[tgt] = {"runs": len(fs), "offered": g(fs[0], "total", "offered_rate"),
                            "not_ok": sum((g(d, "total", "sent") or 0) - (g(d, "total", "ok") or 0) for d in fs),
                            "e2e_ok_p50": r1(med([lat(d, "e2e_ok", "p50") for d in fs])),
                            "e2e_ok_p99": r1(med([lat(d, "e2e_ok", "p99") for d in fs])),
                            "ttft_p50": r1(med([lat(d, "ttft", "p50") for d in fs]))}
        if "tpo" in row and "direct" in row:
            row["added_e2e_p50_us"] = sub(row["tpo"]["e2e_ok_p50"], row["direct"]["e2e_ok_p50"])
            row["added_e2e_p99_us"] = sub(row["tpo"]["e2e_ok_p99"], row["direct"]["e2e_ok_p99"])
            if kind == "stream":
                row["added_ttft_p50_us"] = sub(row["tpo"]["ttft_p50"], row["direct"]["ttft_p50"])
            pa[kind] = row
    return pa
UPS = (("serve", "`tpo-bench --serve`", "the bare single-threaded responder of scenario 2 (answers at once)"),
       ("ml", "@dwmkerr/mock-llm (npm, Node.js)",
        "one fixed 320-character answer, streamed as 64 chunks of 5 that mock-llm paces with setInterval "
        "(≥ 1 ms apart, so a streamed answer takes ~100 ms whoever asks)"),
       ("url", "`" + (load(os.path.join(R, "url.upstream.json")).get("url") or "an upstream given on the command line") + "`",
        "given on the command line (`make bench UPSTREAM=URL`)" +
        (f", model `{load(os.path.join(R, 'url.upstream.json')).get('model')}`" if load(os.path.join(R, "url.upstream.json")).get("model") else "")))
ovh_all = {}
for up, upname, updesc in UPS:
    caps = {}
    for kind in ("plain", "stream"):
        for tgt in ("tpo", "direct"):
            fs = [load(f) for f in files(f"ovhcap.{up}.{kind}.{tgt}.*.json")]
            if fs:
                caps[f"{kind}.{tgt}"] = cap_row(fs)
        if f"{kind}.tpo" in caps and f"{kind}.direct" in caps:
            caps[f"{kind}.ratio"] = ratio(caps[f"{kind}.tpo"]["req_per_s"], caps[f"{kind}.direct"]["req_per_s"])
        sus = load(os.path.join(R, f"ovhsus.{up}.{kind}.json"))
        if "req_per_s" in sus:
            probes = []
            for i, kept in enumerate(sus.get("kept", []), 1):
                d = load(os.path.join(R, f"ovhsus.{up}.{kind}.{i}.json"))
                probes.append({"kept": kept, "offered": g(d, "total", "offered_rate"), "ok_per_s": r1(g(d, "total", "ok_per_s")),
                               "not_ok": (g(d, "total", "sent") or 0) - (g(d, "total", "ok") or 0),
                               "p50_us": r1(lat(d, "e2e_ok", "p50")), "p99_us": r1(lat(d, "e2e_ok", "p99"))})
            caps[f"{kind}.sustained"] = {"req_per_s": sus["req_per_s"], "probes": probes}
    rows = {}
    for kind in ("plain", "stream"):
        for pct in (25, 50, 75, 90):
            row = {}
            for tgt in ("tpo", "direct", "nginx"):
                fs = [load(f) for f in files(f"ovh.{up}.{kind}.{pct}.{tgt}.*.json")]
                if not fs:
                    continue
                row[tgt] = {"runs": len(fs), "offered": g(fs[0], "total", "offered_rate"),
                            "ok_per_s": r1(med([g(d, "total", "ok_per_s") for d in fs])),
                            "not_ok": sum((g(d, "total", "sent") or 0) - (g(d, "total", "ok") or 0) for d in fs),
                            "not_ok_kinds": not_ok_kinds(fs)}
                for h in ("e2e_ok", "ttft"):
                    for q in ("p50", "p90", "p99", "p999"):
                        row[tgt][f"{h}_{q}"] = r1(med([lat(d, h, q) for d in fs]))
            if "tpo" in row and "direct" in row:
                t, d_ = row["tpo"], row["direct"]
                row["added_e2e_p50_us"] = sub(t["e2e_ok_p50"], d_["e2e_ok_p50"])
                row["added_e2e_p99_us"] = sub(t["e2e_ok_p99"], d_["e2e_ok_p99"])
                if kind == "stream":
                    row["added_ttft_p50_us"] = sub(t["ttft_p50"], d_["ttft_p50"])
                    row["added_ttft_p99_us"] = sub(t["ttft_p99"], d_["ttft_p99"])
                row["throughput_ratio"] = ratio(t["ok_per_s"], d_["ok_per_s"])
            if "nginx" in row and "direct" in row:
                n_, d_ = row["nginx"], row["direct"]
                row["nginx_added_e2e_p50_us"] = sub(n_["e2e_ok_p50"], d_["e2e_ok_p50"])
                row["nginx_added_e2e_p99_us"] = sub(n_["e2e_ok_p99"], d_["e2e_ok_p99"])
                if kind == "stream":
                    row["nginx_added_ttft_p50_us"] = sub(n_["ttft_p50"], d_["ttft_p50"])
                    row["nginx_added_ttft_p99_us"] = sub(n_["ttft_p99"], d_["ttft_p99"])
            if pct == 50 and row:
                pr = profile(up, kind)
                if pr:
                    row["profile"] = pr
                pr = profile(up, kind, "nginx")
                if pr:
                    row["profile_nginx"] = pr
            if row:
                rows[f"{kind}.{pct}"] = row
    if caps or rows:
        ovh_all[up] = {"upstream": upname, "capacity": caps, "loads": rows}
        if any("nginx" in r for r in rows.values()):
            ovh_all[up]["nginx"] = load(os.path.join(R, "nginx.json")).get("version")
        if up == "serve":
            pa = pipeline_alone()
            if pa:
                ovh_all[up]["pipeline_alone"] = pa
if ovh_all:
    out["overhead"] = ovh_all
ovh = g(ovh_all, "serve", "loads") or {}
if ovh_all:
    md.append("## 3. Overhead: the same load straight to an upstream and through tpo proxying to it\n")
    md.append("tpo runs the `openai` worker with the upstream as its only endpoint (stream, assemble, infer and post: no retrieval is configured, so no rag process runs (`stages.rag.enabled` \"auto\"); one more HTTP hop: "
              "tpo-infer's own HTTP/1.1 client for an http:// URL at an IP address, libcurl for others, "
              "docs/workers.md); `direct` is the same tpo-bench load sent straight to the upstream; added = tpo − direct. "
              "tpo's proxied capacity is measured first, closed loop. With `tpo-bench --serve` as the upstream the "
              "open-loop loads are percentages of the highest rate tpo sustains in open loop (found by bisection "
              "between a quarter of the closed-loop capacity and all of it: a rate is sustained when every request is "
              "answered, at least 98 % of the offered rate is answered per second and the p99 stays within 10 ms, so "
              "a backlog growing through the run fails; a failed probe runs once more). The closed-loop figure is higher because with a queue always "
              "waiting at every hop each wake-up of a stage serves a batch; open-loop arrivals wake every stage for "
              "almost every request, which costs more CPU per request. With mock-llm (paced answers) the loads are "
              "percentages of the closed-loop capacity, and so with an upstream given on the command line (3c). Both are sent to tpo and straight to the upstream. "
              "Everything (load generator, upstream, tpo's eight processes) shares the two cores.\n")
for n, (up, upname, updesc) in enumerate(UPS):
    o = ovh_all.get(up)
    if not o:
        if up == "ml" and files("ml.skip.json"):
            md.append("### 3b. Upstream @dwmkerr/mock-llm\n\nnot run: npm could not install @dwmkerr/mock-llm.\n")
        continue
    caps, rows = o["capacity"], o["loads"]
    md.append(f"### 3{'abc'[n]}. Upstream {upname}\n")
    md.append(f"The upstream: {updesc}.\n")
    md.append("| closed loop | through tpo req/s (runs) | direct req/s (runs) | ratio | through tpo p50 / p99 µs | direct p50 / p99 µs | failed tpo / direct |\n|---|---|---|---|---|---|---|")
    for kind, label in (("plain", "non-streaming"), ("stream", "streaming")):
        t, d_ = caps.get(f"{kind}.tpo"), caps.get(f"{kind}.direct")
        if not t or not d_:
            continue
        conc = {"serve": {"plain": 128, "stream": 64}}.get(up, {}).get(kind, 32)
        md.append(f"| {label}, {conc} connections | {fmt(t['req_per_s'])} ({', '.join(fmt(x) for x in t['req_per_s_runs'])}) | "
                  f"{fmt(d_['req_per_s'])} ({', '.join(fmt(x) for x in d_['req_per_s_runs'])}) | {caps.get(kind + '.ratio')} | "
                  f"{fmt(t['p50_us'])} / {fmt(t['p99_us'])} | {fmt(d_['p50_us'])} / {fmt(d_['p99_us'])} | {t['errors']} / {d_['errors']} |")
    md.append("")
    base = "closed-loop capacity"
    for kind, label in (("plain", "non-streaming"), ("stream", "streaming")):
        su = caps.get(f"{kind}.sustained")
        if not su:
            continue
        base = "sustained open-loop capacity"
        md.append(f"Sustained open-loop capacity, {label}: **{fmt(su['req_per_s'])} req/s** "
                  f"({ratio(su['req_per_s'], g(caps, kind + '.tpo', 'req_per_s'))} of the closed-loop figure). Probes:\n")
        md.append("| offered req/s | answered/s | not ok | p50 / p99 µs (the deciding run) | sustained (a failed probe runs twice) |\n|---|---|---|---|---|")
        for pr in su["probes"]:
            md.append(f"| {fmt(pr['offered'])} | {fmt(pr['ok_per_s'])} | {pr['not_ok']} | {fmt(pr['p50_us'])} / {fmt(pr['p99_us'])} | {pr['kept']} |")
        md.append("")
    md.append("Open loop, latency from the scheduled send:\n")
    md.append(f"| load (of {base}) | offered req/s | through tpo p50 / p99 µs | direct p50 / p99 µs | added p50 / p99 µs | ok/s tpo / direct | not ok tpo / direct |\n|---|---|---|---|---|---|---|")
    for kind in ("plain", "stream"):
        for pct in (25, 50, 75, 90):
            r = rows.get(f"{kind}.{pct}")
            if not r or "tpo" not in r or "direct" not in r:
                continue
            t, d_ = r["tpo"], r["direct"]
            why = lambda x: f"{x['not_ok']}" + (f" ({x['not_ok_kinds']})" if x.get("not_ok_kinds") else "")
            md.append(f"| {'non-streaming' if kind == 'plain' else 'streaming'} {pct} %{' (' + str(t['runs']) + ' runs)' if t['runs'] > 1 else ''} | {fmt(t['offered'])} | {fmt(t['e2e_ok_p50'])} / {fmt(t['e2e_ok_p99'])} | {fmt(d_['e2e_ok_p50'])} / {fmt(d_['e2e_ok_p99'])} | {fmt(r.get('added_e2e_p50_us'))} / {fmt(r.get('added_e2e_p99_us'))} | {r.get('throughput_ratio')} | {why(t)} / {why(d_)} |")
    md.append("")
    ngr = [(kind, pct, rows.get(f"{kind}.{pct}")) for kind in ("plain", "stream") for pct in (50, 90)]
    ngr = [(kind, pct, r) for kind, pct, r in ngr if r and "nginx" in r and "tpo" in r and "direct" in r]
    if ngr:
        md.append(f"A reference reverse proxy at the 50 and 90 % loads: nginx {o.get('nginx') or ''} in front of the same "
                  "upstream (a worker per core, keep-alive connections to the upstream, nothing buffered, no access "
                  "log; a warm-up run of its own first), taking its turn with tpo and direct: what a single-hop proxy "
                  "costs on these cores. *tpo ÷ nginx*: the added p50 through tpo over that through nginx (end to end; "
                  "TTFT for streams, whose end to end is the upstream's pacing when it paces).\n")
        md.append("| load | through nginx p50 / p99 µs | added by nginx p50 / p99 µs | added by tpo p50 / p99 µs | tpo ÷ nginx | "
                  "TTFT added p50, nginx / tpo µs | not ok nginx |\n|---|---|---|---|---|---|---|")
        for kind, pct, r in ngr:
            n_ = r["nginx"]
            q = "ttft" if kind == "stream" else "e2e"
            a_t, a_n = r.get(f"added_{q}_p50_us"), r.get(f"nginx_added_{q}_p50_us")
            md.append(f"| {'non-streaming' if kind == 'plain' else 'streaming'} {pct} %"
                      f"{' (' + str(n_['runs']) + ' runs)' if n_['runs'] > 1 else ''} | "
                      f"{fmt(n_['e2e_ok_p50'])} / {fmt(n_['e2e_ok_p99'])} | "
                      f"{fmt(r.get('nginx_added_e2e_p50_us'))} / {fmt(r.get('nginx_added_e2e_p99_us'))} | "
                      f"{fmt(r.get('added_e2e_p50_us'))} / {fmt(r.get('added_e2e_p99_us'))} | "
                      f"{ratio(a_t, a_n) if a_n and a_n > 0 and a_t is not None and a_t > 0 else 'n/a'} | "
                      + (f"{fmt(r.get('nginx_added_ttft_p50_us'))} / {fmt(r.get('added_ttft_p50_us'))}" if kind == "stream" else "") +
                      f" | {n_['not_ok']}" + (f" ({n_['not_ok_kinds']})" if n_.get("not_ok_kinds") else "") + " |")
        md.append("")
    profs = [(label, rows.get(f"{kind}.50", {}).get("profile")) for kind, label in (("plain", "non-streaming"), ("stream", "streaming"))]
    profs = [(l, p) for l, p in profs if p]
    if profs:
        md.append("Where the CPU went in the tpo runs at 50 % (per request sent; `/proc/PID/schedstat` of each process "
                  "around each run, medians of the runs; *waiting*: runnable but waiting for a CPU, the queueing in the "
                  "added latency; each stage summed over its lanes; the generator's is its own getrusage):\n")
        md.append("| process | " + " | ".join(f"{l}: CPU / waiting µs" for l, _ in profs) + " |\n|---|" + "---|" * len(profs))
        names = (("stream", "stream (front)"), ("rag", "rag"), ("assemble", "assemble"), ("infer", "infer"), ("post", "post"),
                 ("tpo", "**tpo, all its stages**"), ("upstream", "upstream"), ("generator", "load generator"))
        for k, nm in names:
            md.append(f"| {nm} | " + " | ".join(f"{fmt(g(p, k, 'cpu_us'))} / {fmt(g(p, k, 'wait_us'))}" for _, p in profs) + " |")
        md.append(f"| the {machine.get('cores')} cores busy | " + " | ".join(f"{fmt(p['busy_pct'])} %" for _, p in profs) + " |")
        png = [rows.get(f"{kind}.50", {}).get("profile_nginx") for kind, label in (("plain", "non-streaming"), ("stream", "streaming"))
               if rows.get(f"{kind}.50", {}).get("profile")]
        if any(png):
            md.append("| *nginx's runs at the same load:* **nginx** (master and workers) | " +
                      " | ".join(f"{fmt(g(p, 'nginx', 'cpu_us'))} / {fmt(g(p, 'nginx', 'wait_us'))}" if p else "n/a" for p in png) + " |")
            md.append("| upstream / load generator, nginx's runs | " +
                      " | ".join(f"{fmt(g(p, 'upstream', 'cpu_us'))} / {fmt(g(p, 'generator', 'cpu_us'))} (CPU)" if p else "n/a" for p in png) + " |")
            md.append(f"| the {machine.get('cores')} cores busy, nginx's runs | " +
                      " | ".join(f"{fmt(p['busy_pct'])} %" if p else "n/a" for p in png) + " |")
        md.append("")
    pa = o.get("pipeline_alone") or {}
    if pa:
        md.append("The pipeline alone: the same 50 % loads through tpo running the mock worker instead of the openai "
                  "worker (no upstream hop: infer answers 64 tokens itself), alternating with the same load "
                  "straight to the upstream; the rest of the added latency above is the upstream hop (infer's HTTP client, the "
                  "loopback TCP round trip and the upstream's own work, which the direct runs have too):\n")
        md.append("| load | offered req/s | tpo, mock worker p50 / p99 µs | direct p50 / p99 µs | added p50 / p99 µs | TTFT added p50 µs | not ok tpo / direct |\n|---|---|---|---|---|---|---|")
        for kind in ("plain", "stream"):
            r = pa.get(kind)
            if not r:
                continue
            t, d_ = r["tpo"], r["direct"]
            md.append(f"| {'non-streaming' if kind == 'plain' else 'streaming'} 50 % ({t['runs']} runs) | {fmt(t['offered'])} | "
                      f"{fmt(t['e2e_ok_p50'])} / {fmt(t['e2e_ok_p99'])} | {fmt(d_['e2e_ok_p50'])} / {fmt(d_['e2e_ok_p99'])} | "
                      f"{fmt(r.get('added_e2e_p50_us'))} / {fmt(r.get('added_e2e_p99_us'))} | {fmt(r.get('added_ttft_p50_us'))} | "
                      f"{t['not_ok']} / {d_['not_ok']} |")
        md.append("")
    md.append("Time to first token (streaming):\n")
    md.append("| load | through tpo p50 / p99 µs | direct p50 / p99 µs | added p50 / p99 µs |\n|---|---|---|---|")
    for pct in (25, 50, 75, 90):
        r = rows.get(f"stream.{pct}")
        if not r or "tpo" not in r or "direct" not in r:
            continue
        md.append(f"| {pct} % | {fmt(r['tpo']['ttft_p50'])} / {fmt(r['tpo']['ttft_p99'])} | {fmt(r['direct']['ttft_p50'])} / {fmt(r['direct']['ttft_p99'])} | {fmt(r.get('added_ttft_p50_us'))} / {fmt(r.get('added_ttft_p99_us'))} |")
    md.append("")

# ---- surge: one run per admission policy, each against tpo bounded by the model
SURGE_POLICIES = ("reject_new", "drop_oldest")
def surge_phase(p, name):
    lag = lambda q: r1(g(p, "latency_us", "send_lag", q))
    offered, dur, sent = p.get("offered_rate"), p.get("duration_s"), p.get("sent")
    return {"name": name, "offered": offered, "sent": sent,
            "sent_of_offered": round(sent / (offered * dur), 3) if sent is not None and offered and dur else None,
            "send_lag_p99_us": lag("p99"), "send_lag_max_us": lag("max"),
            "ok": p.get("ok"), "shed": p.get("shed"), "answers": p.get("answers"),
            "conn_errors": p.get("conn_errors"), "timeouts": p.get("timeouts"),
            "unanswered": p.get("unanswered"), "lost": p.get("lost"),
            "ok_p50_us": r1(g(p, "latency_us", "e2e_ok", "p50")), "ok_p99_us": r1(g(p, "latency_us", "e2e_ok", "p99")),
            "ok_max_us": r1(g(p, "latency_us", "e2e_ok", "max")),
            "shed_p50_us": r1(g(p, "latency_us", "e2e_shed", "p50")), "shed_p99_us": r1(g(p, "latency_us", "e2e_shed", "p99")),
            "shed_max_us": r1(g(p, "latency_us", "e2e_shed", "max")),
            "shed_from_handoff_p99_us": r1(g(p, "latency_us", "shed_from_handoff", "p99")),
            "ok_per_s": p.get("ok_per_s")}
su = {}
for pol in SURGE_POLICIES:
    d = load(os.path.join(R, f"surge.{pol}.json"))
    if not d:
        continue
    c = load(os.path.join(R, f"surge.{pol}.cap.json"))
    e = {"capacity_req_per_s": r1(g(c, "total", "ok_per_s")), "capacity_p99_us": r1(g(c, "total", "latency_us", "e2e_ok", "p99")),
         "capacity_concurrency": c.get("concurrency"), "capacity_not_ok": (g(c, "total", "sent") or 0) - (g(c, "total", "ok") or 0),
         "phases": [surge_phase(g(d, "phases", i) or {}, n) for i, n in enumerate(("before", "surge", "after"))],
         "max_conns": d.get("max_conns"), "backlog_overflow": d.get("backlog_overflow"),
         "extra_responses": d.get("extra_responses")}
    try:
        e["lanes"] = int(open(os.path.join(R, f"surge.{pol}.lanes.txt")).read())
    except Exception:
        pass
    # steal in the surge phase (1 s of warm-up and 5 s before it): the share
    # of the vCPUs' time the host gave to others, and its worst 1 s
    try:
        sm = [tuple(map(float, l.split())) for l in open(os.path.join(R, f"surge.{pol}.steal.txt")) if len(l.split()) == 2]
        t0, hz, ncpu = sm[0][0], os.sysconf("SC_CLK_TCK"), machine.get("cores") or 1
        win = [x for x in sm if 6 <= x[0] - t0 <= 16]
        per_s = [(b[1] - a[1]) / hz / (b[0] - a[0]) / ncpu * 100 for a, b in zip(win, win[1:]) if b[0] > a[0]]
        if len(win) >= 2:
            e["surge_steal_pct"] = round((win[-1][1] - win[0][1]) / hz / (win[-1][0] - win[0][0]) / ncpu * 100, 2)
            e["surge_steal_max_pct_1s"] = round(max(sum(per_s[i:i + 5]) / 5 for i in range(max(1, len(per_s) - 4))), 1)
    except Exception:
        pass
    # recovery: first second after the surge whose slowest admitted answer is
    # within 2x of the median slowest second before it (at least 1 ms), with
    # nothing shed and no errors
    tl = d.get("timeline", [])
    w = int(d.get("warmup_s", 1))
    before = [x["ok_max_us"] for x in tl if w <= x["t"] < w + 5 and x["ok"]]
    lim = max(2 * (statistics.median(before) if before else 0), 1000)
    rec = None
    for x in tl:
        if x["t"] >= w + 15 and x["ok"] and x["ok_max_us"] <= lim and x["shed"] == 0 and x["err"] == 0:
            rec = x["t"] - (w + 15)
            break
    e["recovery_s"], e["recovery_limit_us"] = rec, r1(lim)
    # sheds after the surge: in which of its seconds (the surge's admitted
    # backlog can still fill a lane's budget when the 50 % phase starts)
    after = [x for x in tl if x["t"] >= w + 15 and x.get("shed")]
    e["after_shed_seconds"] = [x["t"] - (w + 15) for x in after]
    # the generator kept up when every phase left at its rate: nothing expired
    # unsent, and the surge's send lag p99 is within 1 ms
    e["generator_kept_up"] = all((p["send_lag_p99_us"] or 0) <= 1000 and (p["sent_of_offered"] or 0) >= 0.98
                                 for p in e["phases"])
    try:
        e["status_after"] = open(os.path.join(R, f"surge.{pol}.after.txt")).read().strip()
    except Exception:
        pass
    e["timeline"] = tl
    su[pol] = e
if su:
    su["config"] = load(os.path.join(R, "surge.config.json"))
    out["surge"] = su
    sc = su["config"]
    md.append("## 4. Surge: 50 % → 300 % (10 s) → 50 % of a model-bound capacity\n")
    md.append(f"tpo bounded by its model, not by the machine: the mock worker answers {sc.get('max_tokens')} tokens at "
              f"{sc.get('tokens_per_second')} tokens/s (~{fmt(1000 * (sc.get('max_tokens', 1) - 1) / max(1, sc.get('tokens_per_second', 1)))} ms), "
              f"an infer process runs {sc.get('infer_max_inflight')} at once, the front admits {sc.get('max_inflight_per_lane')} per lane "
              f"(the rest of a lane's budget waits for inference: what drop_oldest sheds). Non-streaming requests. The capacity is measured "
              "first (closed loop, one connection per admission slot), then the profile is offered open loop with latency from the "
              "scheduled send. `sent / offered` and the send lag (from a request's due time until tpo-bench hands it to a "
              "connection) show that the load really left the generator.\n")
    md.append("| policy | lanes | capacity req/s (closed loop) | p99 µs at capacity |\n|---|---|---|---|")
    for pol in SURGE_POLICIES:
        e = su.get(pol)
        if e:
            md.append(f"| {pol} | {e.get('lanes', 'n/a')} | {fmt(e['capacity_req_per_s'])} | {fmt(e['capacity_p99_us'])} |")
    md.append("")
    md.append("| policy | phase | offered req/s | sent / offered; send lag p99 / max µs | ok/s | admitted p50 / p99 / max µs | shed (429/503) | shed p50 / p99 / max µs (p99 from the hand-off) | conn errors / timeouts / unanswered / lost |\n|---|---|---|---|---|---|---|---|---|")
    for pol in SURGE_POLICIES:
        e = su.get(pol)
        if not e:
            continue
        for p in e["phases"]:
            md.append(f"| {pol} | {p['name']} | {fmt(p['offered'])} | {p['sent_of_offered']}; {fmt(p['send_lag_p99_us'])} / {fmt(p['send_lag_max_us'])} | "
                      f"{fmt(p['ok_per_s'])} | {fmt(p['ok_p50_us'])} / {fmt(p['ok_p99_us'])} / {fmt(p['ok_max_us'])} | "
                      f"{fmt(p['shed'])}{''.join(f', {k}: {v}' for k, v in (p['answers'] or {}).items() if k in ('429', '503') and p['shed'] != v)} | "
                      f"{fmt(p['shed_p50_us'])} / {fmt(p['shed_p99_us'])} / {fmt(p['shed_max_us'])} ({fmt(p.get('shed_from_handoff_p99_us'))}) | "
                      f"{p['conn_errors']} / {p['timeouts']} / {p['unanswered']} / {p['lost']} |")
    md.append("")
    for pol in SURGE_POLICIES:
        e = su.get(pol)
        if not e:
            continue
        b, s_, a = e["phases"]
        md.append(f"- {pol}: admitted p99 during / before the surge {ratio(s_['ok_p99_us'], b['ok_p99_us'])}×, after / before "
                  f"{ratio(a['ok_p99_us'], b['ok_p99_us'])}×. Recovery: {fmt(e['recovery_s'])} s after the surge ended, the slowest "
                  f"admitted answer of a second was back within {fmt(e['recovery_limit_us'])} µs with nothing shed. A request after "
                  f"the run: HTTP {e.get('status_after')}. Generator kept up: {'yes' if e['generator_kept_up'] else 'NO: the figures measure its backlog'} "
                  f"(connections used {fmt(e['max_conns'])}, backlog overflow {e['backlog_overflow']}, extra responses {e['extra_responses']})."
                  + (f" Steal during the surge (the host running something else on our vCPUs): {e['surge_steal_pct']} % of their "
                     f"time, {e.get('surge_steal_max_pct_1s')} % in its worst second."
                     if e.get("surge_steal_pct") is not None else "")
                  + (f" The {fmt(a['shed'])} shed after the surge were in its second{'s' if len(e['after_shed_seconds']) > 1 else ''} "
                     f"{', '.join(str(t) for t in e['after_shed_seconds'])} (0: the first)"
                     + (": the surge's admitted requests still held the lanes' budget when the 50 % phase began."
                        if max(e["after_shed_seconds"]) <= 1 else ".")
                     if a.get("shed") and e.get("after_shed_seconds") else ""))
    md.append("\nThe parenthesised shed p99 counts from the request's hand-off to a connection instead of its schedule: "
              "the generator's own lag left out. When it is high too, the whole machine was slow (both share the cores, "
              "and with steal the host took them), not the generator alone.\n")
    md.append("\nA 429 (reject_new) is the new request's own answer, sent as it arrives. A 503 under drop_oldest goes to an "
              "admitted request still waiting for inference, so its latency is the time it waited, not the shed path's.\n")

# ---- chaos
d = load(os.path.join(R, "chaos.tpo.json"))
if d:
    ch = {"phases": []}
    for i, name in enumerate(("calm", "chaos")):
        p = g(d, "phases", i) or {}
        ch["phases"].append({"name": name, "offered": p.get("offered_rate"), "sent": p.get("sent"),
            "answers": p.get("answers"), "ok": p.get("ok"), "conn_errors": p.get("conn_errors"),
            "timeouts": p.get("timeouts"), "unanswered": p.get("unanswered"),
            "stream_errors": p.get("stream_errors"), "lost": p.get("lost"),
            "longest_stall_ms": r1(p.get("longest_stall_ms")),
            "ok_p50_us": r1(g(p, "latency_us", "e2e_ok", "p50")), "ok_p99_us": r1(g(p, "latency_us", "e2e_ok", "p99"))})
    try:
        kills = [l.split() for l in open(os.path.join(R, "chaos.kills.txt")) if l.strip()]
    except Exception:
        kills = []
    ch["kills"] = len(kills)
    ch["kills_by_stage"] = {}
    for k in kills:
        ch["kills_by_stage"][k[1]] = ch["kills_by_stage"].get(k[1], 0) + 1
    try:
        ch["restarts"] = int(open(os.path.join(R, "chaos.restarts.txt")).read())
    except Exception:
        ch["restarts"] = None
    try:
        ch["status_after"] = open(os.path.join(R, "chaos.after.txt")).read().strip()
    except Exception:
        pass
    ch["extra_responses"] = d.get("extra_responses")
    out["chaos"] = ch
    md.append("## 5. Chaos: SIGKILL a random stage process every second for 30 s\n")
    md.append(f"Streamed requests (64 tokens at 2000 tokens/s, so ~32 ms each) at {fmt(g(ch, 'phases', 0, 'offered'))} req/s; "
              f"10 s calm (the baseline), then 30 s with a kill a second. Kills: {ch['kills']} ({', '.join(f'{k} {v}' for k, v in sorted(ch['kills_by_stage'].items()))}); "
              f"restarts counted by the supervisor: {ch['restarts']}; a request after the run: HTTP {ch.get('status_after')}.\n")
    md.append("| phase | sent | answers by status | conn errors | timeouts | unanswered | lost | longest stall ms | ok p50 / p99 µs |\n|---|---|---|---|---|---|---|---|---|")
    for p in ch["phases"]:
        md.append(f"| {p['name']} | {p['sent']} | {', '.join(f'{k}: {v}' for k, v in (p['answers'] or {}).items())} | {p['conn_errors']} | {p['timeouts']} | {p['unanswered']} | {p['lost']} | {fmt(p['longest_stall_ms'])} | {fmt(p['ok_p50_us'])} / {fmt(p['ok_p99_us'])} |")
    md.append(f"\n`lost` = sent − (HTTP answers + connection errors + timeouts + unanswered), counted per request by tpo-bench; "
              f"bytes on a connection with no request in flight (a second answer): {ch['extra_responses']}. A connection error is "
              "the client's answer when the stream process holding its connection is the one killed. Requests count in the "
              "phase they were sent in: the killer starts 11 s after the generator (its 1 s warm-up and the calm 10 s), "
              "when the requests sent in the calm phase's last ~32 ms are still streaming, so a first kill of a front "
              "shows as connection errors of the calm phase.\n")

# ---- memory
mem = {}
for key in ("default", "idle", "1000", "10000", "proxy"):
    d = load(os.path.join(R, f"mem.{key}.json"))
    if not d:
        continue
    per = {}
    for p in d.get("procs", []):
        e = per.setdefault(p["stage"], {"vmrss_kib_max": 0, "private_kib_max": 0, "shm_rss_kib_max": 0,
                                        "uss_kib_max": 0, "n": 0})
        e["uss_kib_max"] = max(e["uss_kib_max"], p.get("uss_kib", 0))
        e["vmrss_kib_max"] = max(e["vmrss_kib_max"], p["vmrss_kib"])
        e["private_kib_max"] = max(e["private_kib_max"], p["private_kib"])
        e["shm_rss_kib_max"] = max(e["shm_rss_kib_max"], p["shm_rss_kib"])
        e["n"] += 1
    shm = d.get("shm", {})
    mem[key] = {"stages": per, "shm_size_kib": sum(v["size_kib"] for v in shm.values()),
                "shm_resident_kib": sum(v["resident_kib"] for v in shm.values()),
                "open_conns": d.get("open_conns"), "procs": d.get("procs")}
    b = load(os.path.join(R, f"mem.{key}.bench.json"))
    if b:
        mem[key]["bench_max_inflight"] = b.get("max_inflight")
        mem[key]["bench_answers"] = g(b, "total", "answers")
if mem:
    out["memory"] = mem
    md.append("## 6. Memory: VmRSS per stage process (largest lane) at 0, 1k and 10k open streams\n")
    md.append("`default`: idle, default admission limits (max_connections 10000); `idle`, `1000`, `10000`: the "
              "capacity configuration (max_connections 100000, max_inflight_per_lane 1000000, infer max_inflight 10000) with that many open "
              "streams (1 token/s each, so they stay open). The ratio compares 10k streams with `idle`. `proxying`: the overhead scenario's instance (openai worker to the bare responder) after its load.\n")
    keys = [k for k in ("default", "idle", "1000", "10000", "proxy") if k in mem]
    md.append("| stage | " + " | ".join((f"{k} streams: VmRSS / private / USS KiB" if k != "proxy" else "proxying (openai worker), after its load: VmRSS / private / USS KiB") for k in keys) + " | ratio to idle |\n|---|" + "---|" * (len(keys) + 1))
    for st in ("stream", "rag", "assemble", "infer", "post"):
        cells = []
        for k in keys:
            e = mem[k]["stages"].get(st)
            cells.append(f"{fmt(e['vmrss_kib_max'])} / {fmt(e['private_kib_max'])} / {fmt(e.get('uss_kib_max'))}" if e else "n/a")
        i0 = g(mem, "idle", "stages", st, "vmrss_kib_max")
        il = g(mem, "10000", "stages", st, "vmrss_kib_max")
        md.append(f"| {st} | " + " | ".join(cells) + f" | {ratio(il, i0)} |")
    md.append("| shm segments: size / resident KiB | " + " | ".join(f"{fmt(mem[k]['shm_size_kib'])} / {fmt(mem[k]['shm_resident_kib'])}" for k in keys) + " | |")
    md.append("| open client connections (ss) | " + " | ".join(fmt(mem[k]["open_conns"]) for k in keys) + " | |")
    md.append("\nVmRSS counts every page a process has touched: the rings it maps and the shared libraries' pages as well; "
              "private = VmRSS − Rss of its /dev/shm/tpo.* mappings; USS = its Private_Clean + Private_Dirty pages "
              "(smaps_rollup), the memory that would be freed if it exited. An infer process maps libcurl (and its ~30 "
              "libraries: ~8 MiB of shared clean pages in its VmRSS) only when an endpoint needs it (https, a host "
              "name, a proxy); the bench's upstreams are at 127.0.0.1, served by infer's own HTTP client.\n")

# ---- merge: with TPO_BENCH_MERGE, a scenario not run keeps its section (JSON
# and markdown) from the previous report
def sections(text):
    head, secs, cur = [], {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            cur = line[3:].split(" ", 1)[0]
            secs[cur] = []
        if line.startswith("Pipeline scenarios took"):
            continue
        (secs[cur] if cur else head).append(line)
    return "\n".join(head), {k: "\n".join(v) for k, v in secs.items()}
head, new = sections("\n".join(md))
order = (("capacity", "2."), ("overhead", "3."), ("surge", "4."), ("chaos", "5."), ("memory", "6."))
merged = []
if MERGE:
    old = load(os.path.join(RES, "pipeline.json"))
    try:
        _, prev = sections(open(os.path.join(RES, "pipeline.md")).read())
    except Exception:
        prev = {}
    for key, num in order:
        if key not in out and key in old and num in prev:
            out[key] = old[key]
            new[num] = prev[num]
            merged.append(key)
out["section_dates"] = {k: machine.get("date") for k, _ in order if k in out}
if merged:
    for k in merged:
        out["section_dates"][k] = g(old, "section_dates", k) or g(old, "machine", "date")
    out["merged"] = merged
    sd = out["section_dates"]
    head += (f"\nRe-run here: {', '.join(k for k, _ in order if k not in merged and k in out) or 'nothing'}; carried over "
             f"from earlier runs: {', '.join(f'{k} ({sd[k]})' for k in merged)} (their machine load is not the one above).\n")
md = [head.rstrip() + "\n"] + [new[num].rstrip() + "\n" for _, num in order if num in new]
cap = out.get("capacity", {})
ovh = g(out, "overhead", "serve", "loads") or {}
mem = out.get("memory", {})

# ---- targets
tg = []
def target(name, val, limit, higher, unit, why=None):
    ok = None if val is None else (val >= limit if higher else val <= limit)
    miss = None
    if ok is False:
        pc = f" ({abs(val / limit - 1) * 100:.0f} %)" if limit else ""
        miss = f"{abs(val - limit):,.1f} {unit}{pc} {'short' if higher else 'over'}" + (f"; {why}" if why else "")
    tg.append({"target": name, "measured": val, "limit": limit, "met": ok, "miss": miss, "unit": unit})
target("non-streaming req/s", g(cap, "tpo.plain", "req_per_s"), 20000, True, "req/s")
target("streamed tokens/s", g(cap, "tpo.stream", "tokens_per_s"), 300000, True, "tokens/s")
def why_load(kind, q="p50"):
    """What the profile of the tpo runs at that load shows (section 3a),
    and what nginx in front of the same upstream added there."""
    p = g(ovh, f"{kind}.50", "profile")
    if not p or not g(p, "tpo", "cpu_us"):
        return None
    top = max(PROCS, key=lambda s: g(p, s, "cpu_us") or 0)
    pa = g(ovh_all, "serve", "pipeline_alone", kind) or {}
    alone = pa.get("added_ttft_p50_us" if kind == "stream" else "added_e2e_p50_us")
    ng = g(ovh, f"{kind}.50", f"nginx_added_{'ttft' if kind == 'stream' else 'e2e'}_{q}_us")
    ngcpu = g(ovh, f"{kind}.50", "profile_nginx", "nginx", "cpu_us")
    return ((f"nginx in front of the same upstream at the same load added {fmt(ng)} µs {q}"
             + (f" using {fmt(ngcpu)} µs of CPU per request" if ngcpu is not None else "") + "; " if ng is not None else "") +
            f"at that load the {machine.get('cores')} cores were {fmt(p['busy_pct'])} % busy; per request tpo's stages "
            f"used {fmt(g(p, 'tpo', 'cpu_us'))} µs of CPU ({top} {fmt(g(p, top, 'cpu_us'))}) and waited "
            f"{fmt(g(p, 'tpo', 'wait_us'))} µs for one, the upstream {fmt(g(p, 'upstream', 'cpu_us'))}, the generator "
            f"{fmt(g(p, 'generator', 'cpu_us'))}"
            + (f"; the pipeline alone (mock worker, no upstream hop) added {fmt(alone)} µs p50 at that rate" if alone is not None else "")
            + " (3a, docs/bench.md)")
target("added latency p50 at half load (half the sustained open-loop capacity, proxying --serve)", g(ovh, "plain.50", "added_e2e_p50_us"), 100, False, "µs", why_load("plain"))
target("added latency p99 at half load (half the sustained open-loop capacity, proxying --serve)", g(ovh, "plain.50", "added_e2e_p99_us"), 1000, False, "µs", why_load("plain", "p99"))
target("TTFT added (p50, half the sustained open-loop streaming capacity, proxying --serve)", g(ovh, "stream.50", "added_ttft_p50_us"), 200, False, "µs", why_load("stream"))
def why_shed():
    """Whose the tail is: the generator's own lag in the surge phase, and the
    shed p99 counted from the hand-off to a connection (lag left out)."""
    p = g(out, "surge", "reject_new", "phases", 1) or {}
    if p.get("send_lag_p99_us") is None:
        return None
    st = g(out, "surge", "reject_new", "surge_steal_pct")
    return (f"the generator's send lag p99 in the surge was {fmt(p['send_lag_p99_us'])} µs (latency counts from the "
            "scheduled send); counted from the hand-off to a connection the shed p99 was "
            f"{fmt(p.get('shed_from_handoff_p99_us'))} µs"
            + (f"; the host took {st} % of the vCPUs' time during the surge (steal), and a p99 is the worst 1 % of "
               "requests" if st is not None else "") + " (4.)")
target("shed answers p99 under surge (reject_new, model-bound capacity)", g(out, "surge", "reject_new", "phases", 1, "shed_p99_us"), 1000, False, "µs", why_shed())
lost = [p.get("lost") for p in (g(out, "chaos", "phases") or []) if p.get("lost") is not None]
target("requests lost under chaos", sum(lost) if lost else None, 0, False, "requests")
# Scenario 6 proper (mock worker, idle to 10k open streams), then the
# proxying instance after its load (up to max_inflight, 64, transfers at once
# per infer).
for sel, what in ((lambda k: k != "proxy", "scenario 6: mock worker, up to 10k open streams"),
                  (lambda k: k == "proxy", "proxying infer after its load")):
    rss = [e["vmrss_kib_max"] for k in mem if sel(k) for e in mem[k]["stages"].values()]
    target(f"RSS per stage process, largest ({what})", max(rss) / 1024 if rss else None, 8, False, "MiB")
    uss = [e.get("uss_kib_max", 0) for k in mem if sel(k) for e in mem[k]["stages"].values()]
    target(f"USS per stage process, largest ({what})", max(uss) / 1024 if uss else None, 8, False, "MiB")
out["targets"] = tg
md.insert(1, "## Targets\n\n| target | measured | limit | met |\n|---|---|---|---|\n" + "\n".join(
    f"| {t['target']} | {fmt(t['measured'] if not isinstance(t['measured'], float) else round(t['measured'], 1))} {t['unit']} | {'≥' if t['target'].endswith('/s') else '≤'} {t['limit']:,} {t['unit']} | {'yes' if t['met'] else ('no: ' + t['miss'] if t['met'] is False else 'n/a')} |"
    for t in tg) + "\n")

# ---- plots
PLOTS = os.environ.get("TPO_BENCH_PLOTS", "1") != "0"
if PLOTS and shutil.which("gnuplot") and ovh:
    def dat(kind, h):
        p = os.path.join(R, f"plot.{kind}.{h}.dat")
        with open(p, "w") as f:
            for pct in (25, 50, 75, 90):
                r = ovh.get(f"{kind}.{pct}")
                if not r or "tpo" not in r or "direct" not in r:
                    continue
                t, b = r["tpo"], r["direct"]
                f.write(f"{t['offered']} {t[h + '_p50']} {t[h + '_p99']} {b[h + '_p50']} {b[h + '_p99']}\n")
        return p
    plots = []
    for kind, h, title, fn in (("plain", "e2e_ok", "non-streaming end to end", "pipeline-latency.svg"),
                               ("stream", "e2e_ok", "streaming (64 tokens) end to end", "pipeline-stream.svg"),
                               ("stream", "ttft", "time to first token", "pipeline-ttft.svg")):
        p = dat(kind, h)
        script = f"""set terminal svg size 720,420 dynamic background rgb 'white'
set output '{os.path.join(RES, fn)}'
set title '{title}: straight to --serve and through tpo proxying to it'
set xlabel 'offered load, requests/s (25/50/75/90 % of proxied capacity)'
set ylabel 'latency, µs'
set logscale y
set key top left
set grid
plot '{p}' u 1:2 w lp t 'through tpo p50', '' u 1:3 w lp t 'through tpo p99', '' u 1:4 w lp dt 2 t 'direct p50', '' u 1:5 w lp dt 2 t 'direct p99'
"""
        if subprocess.run(["gnuplot"], input=script, text=True).returncode == 0:
            plots.append(fn)
    if plots:
        md.append("## Plots\n\n" + "\n".join(f"![{f}]({f})" for f in plots) + "\n")
elif not PLOTS:
    md.append("(no plots: TPO_BENCH_PLOTS=0)\n")
elif not shutil.which("gnuplot"):
    md.append("(no plots: gnuplot is not installed; the tables above carry the figures)\n")

if "elapsed_s" in out:
    md.append(f"{'This run' if merged else 'Pipeline scenarios'} took {out['elapsed_s']} s.\n")
json.dump(out, open(os.path.join(RES, "pipeline.json"), "w"), indent=1)
open(os.path.join(RES, "pipeline.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
log "wrote $RES/pipeline.json and $RES/pipeline.md"
