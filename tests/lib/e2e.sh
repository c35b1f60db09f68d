# tests/lib/e2e.sh — what the end-to-end scripts (tests/e2e/*.sh) share;
# they source it. Not a test itself (tests/run runs tests/e2e/*.sh only).

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
	python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' \
		2>/dev/null || echo $((20000 + RANDOM % 20000))
}

# wait_for TAG PID LOG WHAT PROBE...: runs PROBE every 0.1 s until it
# succeeds, for up to 30 s, while the server WHAT (process PID, output in
# LOG) starts. If PID exits first, or the time runs out, prints LOG and
# "TAG: FAIL: ..." and exits 1.
wait_for() {
	local tag=$1 pid=$2 log=$3 what=$4

	shift 4
	for _ in $(seq 1 300); do
		"$@" >/dev/null 2>&1 && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "$tag: FAIL: $what died"; exit 1; }
		sleep 0.1
	done
	cat "$log"
	echo "$tag: FAIL: $what not ready after 30 s"
	exit 1
}

# wait_ready TAG PID PORT LOG: until the instance whose supervisor is PID
# answers /readyz on 127.0.0.1:PORT (wait_for).
wait_ready() {
	wait_for "$1" "$2" "$4" supervisor curl -sf "http://127.0.0.1:$3/readyz"
}
