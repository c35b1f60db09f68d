# bench/lib.sh — shell helpers of bench/pipeline.sh and bench/profile.sh (sourced).

# stop_pid PID [TENTHS]: TERM, wait up to TENTHS tenths of a second (150),
# then KILL; reaps it. Nothing to do for an empty or dead PID.
stop_pid() {
	local p=$1 n=${2:-150} i
	[ -n "$p" ] || return 0
	kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
	kill -TERM "$p" 2>/dev/null
	for i in $(seq "$n"); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	return 0
}

# free_port: a TCP port on 127.0.0.1 free a moment ago.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
