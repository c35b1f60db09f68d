#!/bin/bash
# tests/e2e/top_metrics.sh BUILD — tpo-top and /metrics on a live instance:
# under load `tpo-top --json` shows queued bytes and rates that agree with
# /metrics (which promtool accepts without lint problems); a SIGKILLed stage
# shows its state change and restart in both; the interactive screen at
# 80x24 (driven through tmux) shows the stage rows, sorts and quits; an
# unknown layout version is refused; tpo-top exits when the instance stops.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
. tests/lib/e2e.sh
command -v promtool >/dev/null || { echo "top_metrics: promtool missing (tools/install-deps --test)"; exit 1; }
command -v tmux >/dev/null || { echo "top_metrics: tmux missing (tools/install-deps --test)"; exit 1; }

name=tm$$
fake=tmv$$
sock=tpotop$$
port=$(free_port)
dir=$(mktemp -d /tmp/tpo-top-e2e.XXXXXX)
sup=
loads=()
cleanup() {
	for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; done
	tmux -L "$sock" kill-server 2>/dev/null || true
	if [ -n "$sup" ]; then
		kill -TERM "$sup" 2>/dev/null || true
		wait "$sup" 2>/dev/null || true
	fi
	rm -f "/dev/shm/tpo.$fake.stats"
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "top_metrics: FAIL: $*"; exit 1; }

# Slow tokens keep requests in flight (infer journals them in its input
# ring, so its queue is non-empty); a long first restart delay makes the
# backoff state of a killed stage observable.
cat >"$dir/cfg.json" <<EOF
{ "name": "$name", "listen": "127.0.0.1:$port", "lanes": 2, "drain_timeout_ms": 1000,
  "restart": { "base_ms": 2000, "cap_ms": 4000, "jitter_pct": 0 },
  "stages": { "rag": { "enabled": true },
              "infer": { "worker": "mock",
              "mock": { "tokens_per_second": 40, "max_tokens": 40, "seed": 0 } } } }
EOF
"$BUILD/tpo-supervisor" start -c "$dir/cfg.json" --name "$name" >"$dir/sup.log" 2>&1 &
sup=$!
wait_ready top_metrics "$sup" "$port" "$dir/sup.log"

# json_unit JSON STAGE LANE FIELD: a field of one unit of a `--json` line.
json_unit() {
	grep -o "{\"stage\":\"$2\",\"lane\":$3,[^}]*}" <<<"$1" | grep -o "\"$4\":[^,}]*" |
		head -1 | cut -d: -f2 | tr -d '"'
}
json_rate() { grep -o "\"$2\":[0-9.]*" <<<"$1" | head -1 | cut -d: -f2; }
# metric FILE SERIES: the value of one exposition series.
metric() { grep -F "$2 " "$1" | head -1 | awk '{print $2}'; }
scrape() { curl -sf "http://127.0.0.1:$port/metrics" >"$1" || fail "GET /metrics"; }
top_json() { "$BUILD/tpo-top" --name "$name" --json --count 1 -d "${1:-0.5}"; }

# ---- under load -----------------------------------------------------------
body='{"model":"tpo-mock","stream":true,"messages":[{"role":"user","content":"load me"}]}'
for i in 1 2 3 4 5 6; do
	( while :; do
		curl -sN --max-time 10 "http://127.0.0.1:$port/v1/chat/completions" \
			-H 'Content-Type: application/json' -d "$body" >/dev/null 2>&1 || sleep 0.1
	  done ) &
	loads+=($!)
done
sleep 1.5
scrape "$dir/m0.txt"
j=$(top_json 1)
scrape "$dir/m1.txt"
[ -n "$j" ] || fail "tpo-top --json printed nothing"

depth=0
for l in 0 1; do
	depth=$((depth + $(json_unit "$j" infer $l queue_depth_bytes)))
done
[ "$depth" -gt 0 ] || fail "no queued bytes at infer under load: $j"
tok_s=$(json_rate "$j" tokens)
out_s=$(json_rate "$j" requests_out)
awk -v t="$tok_s" -v o="$out_s" 'BEGIN { exit !(t > 0 && o > 0) }' ||
	fail "rates are zero under load: tokens $tok_s/s, requests out $out_s/s"

# Counters: /metrics before <= tpo-top <= /metrics after, and the rate
# tpo-top reports is within what /metrics saw over the enclosing window.
for l in 0 1; do
	t=$(json_unit "$j" infer $l tokens)
	a=$(metric "$dir/m0.txt" "tpo_stage_tokens_total{stage=\"infer\",lane=\"$l\"}")
	b=$(metric "$dir/m1.txt" "tpo_stage_tokens_total{stage=\"infer\",lane=\"$l\"}")
	[ "$a" -le "$t" ] && [ "$t" -le "$b" ] || fail "infer/$l tokens: metrics $a..$b, top $t"
	r=$(json_unit "$j" stream $l requests_out)
	a=$(metric "$dir/m0.txt" "tpo_stage_requests_completed_total{stage=\"stream\",lane=\"$l\"}")
	b=$(metric "$dir/m1.txt" "tpo_stage_requests_completed_total{stage=\"stream\",lane=\"$l\"}")
	[ "$a" -le "$r" ] && [ "$r" -le "$b" ] || fail "stream/$l requests: metrics $a..$b, top $r"
	d=$(metric "$dir/m1.txt" "tpo_stage_queue_capacity_bytes{stage=\"infer\",lane=\"$l\"}")
	[ "$d" = "$(json_unit "$j" infer $l queue_capacity_bytes)" ] || fail "infer/$l capacity differs"
done
a=0; b=0
for l in 0 1; do
	a=$((a + $(metric "$dir/m0.txt" "tpo_stage_tokens_total{stage=\"infer\",lane=\"$l\"}")))
	b=$((b + $(metric "$dir/m1.txt" "tpo_stage_tokens_total{stage=\"infer\",lane=\"$l\"}")))
done
# tpo-top's 1 s interval lies inside the scrape window, so its token count
# over the interval is at most what /metrics saw.
awk -v r="$tok_s" -v d=$((b - a)) 'BEGIN { exit !(r > 0 && r * 0.9 <= d + 1) }' ||
	fail "tokens/s $tok_s disagrees with /metrics delta $((b - a))"
qd=$(metric "$dir/m1.txt" "tpo_stage_queue_depth_bytes{stage=\"infer\",lane=\"0\"}")
[ -n "$qd" ] || fail "no tpo_stage_queue_depth_bytes in /metrics"

promtool check metrics <"$dir/m1.txt" >"$dir/promtool.txt" 2>&1 ||
	{ cat "$dir/promtool.txt"; fail "promtool check metrics"; }
[ ! -s "$dir/promtool.txt" ] || { cat "$dir/promtool.txt"; fail "promtool lint problems"; }
grep -q '^tpo_stage_service_seconds_bucket{stage="infer",lane="0",le="+Inf"}' "$dir/m1.txt" ||
	fail "no infer service-time histogram"

# ---- a stage killed -------------------------------------------------------
j=$(top_json 0.2)
old=$(json_unit "$j" rag 0 pid)
r0=$(json_unit "$j" rag 0 restarts)
[ "$old" -gt 0 ] && [ "$(json_unit "$j" rag 0 state)" = running ] || fail "rag/0 not running: $j"
kill -KILL "$old"
seen_top=; seen_met=
for _ in $(seq 1 40); do
	j=$(top_json 0.1)
	scrape "$dir/m2.txt"
	[ "$(json_unit "$j" rag 0 state)" = backoff ] && seen_top=1
	[ "$(metric "$dir/m2.txt" 'tpo_stage_state{stage="rag",lane="0",state="backoff"}')" = 1 ] &&
		seen_met=1
	[ -n "$seen_top" ] && [ -n "$seen_met" ] && break
done
[ -n "$seen_top" ] || fail "tpo-top never showed rag/0 in backoff"
[ -n "$seen_met" ] || fail "/metrics never showed rag/0 in backoff"
for _ in $(seq 1 60); do
	j=$(top_json 0.1)
	[ "$(json_unit "$j" rag 0 state)" = running ] && [ "$(json_unit "$j" rag 0 pid)" != "$old" ] && break
done
[ "$(json_unit "$j" rag 0 state)" = running ] || fail "rag/0 did not come back: $j"
r1=$(json_unit "$j" rag 0 restarts)
[ "$r1" -eq $((r0 + 1)) ] || fail "tpo-top restarts of rag/0: $r0 -> $r1"
scrape "$dir/m3.txt"
[ "$(metric "$dir/m3.txt" 'tpo_stage_restarts_total{stage="rag",lane="0"}')" = "$r1" ] ||
	fail "/metrics restarts of rag/0 differ from tpo-top ($r1)"
[ "$(metric "$dir/m3.txt" 'tpo_stage_state{stage="rag",lane="0",state="running"}')" = 1 ] ||
	fail "/metrics: rag/0 not running again"

# ---- --once ---------------------------------------------------------------
"$BUILD/tpo-top" --name "$name" --once -d 0.2 >"$dir/once.txt"
! grep -q $'\033' "$dir/once.txt" || fail "--once printed escape codes"
[ "$(grep -cE '^(stream|rag|assemble|infer|post) ' "$dir/once.txt")" -eq 10 ] ||
	{ cat "$dir/once.txt"; fail "--once: expected 10 stage rows"; }
grep -q 'no upstream endpoints (mock worker)' "$dir/once.txt" || fail "--once: endpoint section"

# ---- the interactive screen -----------------------------------------------
screen() { tmux -L "$sock" capture-pane -p -t top; }
tmux -L "$sock" new-session -d -s top -x 80 -y 24 "$BUILD/tpo-top --name $name -d 0.5"
for _ in $(seq 1 30); do screen | grep -q '^infer ' && break; sleep 0.1; done
s=$(screen)
for st in stream rag assemble infer post; do
	[ "$(grep -c "^$st " <<<"$s")" -eq 2 ] || { echo "$s"; fail "screen: rows of $st"; }
done
grep -q 'sort: stage' <<<"$s" || { echo "$s"; fail "screen: sort indicator"; }
[ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' <<<"$s")" -le 80 ] ||
	fail "screen wider than 80 columns"
tmux -L "$sock" send-keys -t top s
for _ in $(seq 1 20); do screen | grep -q 'sort: restarts' && break; sleep 0.1; done
s=$(screen)
grep -q 'sort: restarts' <<<"$s" || { echo "$s"; fail "screen: s did not move the sort"; }
# rag/0 restarted once: sorted by restarts it is the first row.
first=$(grep -m1 -E '^(stream|rag|assemble|infer|post) ' <<<"$s")
[[ $first == "rag       0 "* ]] || { echo "$s"; fail "screen: not sorted by restarts"; }
tmux -L "$sock" send-keys -t top q
for _ in $(seq 1 30); do tmux -L "$sock" has-session -t top 2>/dev/null || break; sleep 0.1; done
! tmux -L "$sock" has-session -t top 2>/dev/null || fail "screen: q did not quit"

# ---- an unknown layout version is refused ---------------------------------
# A stats segment header (seg.h) of version 99, owned by this shell.
{
	printf 'TPOSEG\000\001'                              # magic
	printf '\002\000\000\000'                            # kind TPO_SEG_STATS
	printf '\143\000\000\000'                            # version 99
	printf '\000\020\000\000\000\000\000\000'            # size 4096
	printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($$ & 255)) $((($$ >> 8) & 255)) \
		$((($$ >> 16) & 255)) $((($$ >> 24) & 255)))"    # owner pid
	head -c $((4096 - 28)) /dev/zero
} >"/dev/shm/tpo.$fake.stats"
set +e
"$BUILD/tpo-top" --name "$fake" --once >"$dir/v.out" 2>"$dir/v.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "a version 99 segment was accepted"
grep -q 'version 99 is not supported' "$dir/v.err" || { cat "$dir/v.err"; fail "version message"; }
rm -f "/dev/shm/tpo.$fake.stats"

# ---- the instance stops ---------------------------------------------------
tmux -L "$sock" new-session -d -s top2 -x 80 -y 24 "$BUILD/tpo-top --name $name -d 0.2"
"$BUILD/tpo-top" --name "$name" --json -d 0.2 >"$dir/follow.json" 2>"$dir/follow.err" &
follow=$!
sleep 0.5
for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; done
loads=()
kill -TERM "$sup"
seen=
for _ in $(seq 1 100); do
	screen2=$(tmux -L "$sock" capture-pane -p -t top2 2>/dev/null) || break
	grep -q 'instance stopped' <<<"$screen2" && { seen=1; break; }
	sleep 0.05
done
wait "$sup" || fail "supervisor exit status $?"
sup=
[ -n "$seen" ] || fail "screen never said 'instance stopped'"
for _ in $(seq 1 40); do tmux -L "$sock" has-session -t top2 2>/dev/null || break; sleep 0.1; done
! tmux -L "$sock" has-session -t top2 2>/dev/null || fail "screen did not exit after the stop"
wait "$follow" || fail "tpo-top --json exit status $?"
grep -q 'stopped' "$dir/follow.err" || fail "tpo-top --json did not report the stop"
echo "top_metrics: ok (load, agreement, promtool, restart, --once, tmux, version, stop)"
