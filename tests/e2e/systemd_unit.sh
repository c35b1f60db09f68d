#!/bin/bash
# The shipped unit file passes `systemd-analyze verify` (with its ExecStart
# pointed at this build) and keeps the settings the supervisor relies on.
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/tpo-supervisor#$BUILD/tpo-supervisor#g; s#/etc/tpo/pipeline.json#$PWD/examples/pipeline.json#g" \
	examples/tpo.service > "$tmp/tpo.service"
for want in 'Type=notify' 'WatchdogSec=' 'OOMPolicy=continue' 'KillMode=control-group' \
            'RestartPreventExitStatus=78'; do
	grep -q "^$want" "$tmp/tpo.service" || { echo "unit lacks $want"; exit 1; }
done
out=$(systemd-analyze verify "$tmp/tpo.service" 2>&1) || { echo "$out"; exit 1; }
# verify prints problems without failing for some classes: none allowed.
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "systemd_unit: verify ok"
