#!/usr/bin/env bash
# Removes what deploy/demo/demo.sh created: its processes (by the PIDs it
# recorded), its pins, its namespaces and its files.
DEMO_DIR=${DEMO_DIR:-/tmp/eastguard-demo}
BIN=${BIN:-bin}
cd "$(dirname "$0")/../.."
if [ -f "$DEMO_DIR/pids" ]; then
	while read -r pid; do kill "$pid" 2>/dev/null; done < "$DEMO_DIR/pids"
	# --uninstall refuses while the agent still runs: wait for it (10 s).
	for _ in $(seq 100); do
		alive=0
		while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$DEMO_DIR/pids"
		[ $alive = 0 ] && break
		sleep 0.1
	done
fi
[ -x "$BIN/eastguard-agent" ] && "$BIN/eastguard-agent" --uninstall --bpffs-dir /sys/fs/bpf/eastguard-demo --log-level error 2>/dev/null
for ns in $(ip netns list 2>/dev/null | awk '/^egdemo-/ {print $1}'); do ip netns del "$ns"; done
rm -rf "$DEMO_DIR"
echo "demo cleaned up"
