# bench/lib.sh — shell helpers of the bench/*.sh scripts (sourced).

# stop_pid PID [TENTHS]: TERM, wait up to TENTHS tenths of a second (150),
# then KILL; reaps it. Nothing to do for an empty or dead PID. Safe under
# set -e (a process already gone is not an error).
stop_pid() {
	local p=$1 n=${2:-150} i
	[ -n "$p" ] || return 0
	kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
	kill -TERM "$p" 2>/dev/null || true
	for i in $(seq "$n"); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	return 0
}

# free_port: a TCP port on 127.0.0.1 free a moment ago.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_setup: the common ending of a bench script's set-up, for scripts that
# keep NAME (instance), TMP (scratch dir), SUP_PID and SERVE_PID (and
# PERF_PID if they run perf) and define log(): on exit stop them (30 s for
# the supervisor: stages under callgrind write their counts as they exit),
# remove the instance's segments and TMP; then check that BUILD holds every
# program (exit 111 if not).
bench_setup() {
	trap 'stop_pid "${PERF_PID:-}"; stop_pid "$SUP_PID" 300; stop_pid "$SERVE_PID"
	      rm -f /dev/shm/tpo."$NAME".* 2>/dev/null; rm -rf "$TMP"' EXIT
	trap 'exit 130' INT TERM
	local f
	for f in tpo-supervisor tpo-bench tpo-stream tpo-rag tpo-assemble tpo-infer tpo-post; do
		[ -x "$BUILD/$f" ] || { log "fatal: $BUILD/$f missing: build first"; exit 111; }
	done
}

# need_cmd CMD PACKAGE: install PACKAGE with apt-get when CMD is missing (as
# root; apt-get update once if the install fails); exit 111 if still missing.
# Uses log() and TMP of the calling script.
need_cmd() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null && return 0
	if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
		log "installing $pkg with apt-get"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >"$TMP/apt.log" 2>&1 ||
			{ DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$TMP/apt.log" 2>&1
			  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >>"$TMP/apt.log" 2>&1; }
	fi
	command -v "$cmd" >/dev/null || { log "fatal: $cmd is needed (package $pkg)"; exit 111; }
}

# start_instance SUPERVISOR CONFIG PORT [TENTHS]: start an instance NAME from
# CONFIG in the background (SUP_PID; its log appended to $TMP/sup.log) and
# wait up to TENTHS tenths of a second (300) for 127.0.0.1:PORT/readyz to
# answer 200; exit 1 with the log's tail if it does not.
start_instance() {
	local sup=$1 cfg=$2 port=$3 n=${4:-300} i code=
	"$sup" start -c "$cfg" --name "$NAME" >>"$TMP/sup.log" 2>&1 &
	SUP_PID=$!
	for i in $(seq "$n"); do
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null) || true
		[ "$code" = 200 ] && return 0
		kill -0 "$SUP_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "fatal: tpo not ready on port $port"
	tail -5 "$TMP/sup.log" >&2
	exit 1
}
