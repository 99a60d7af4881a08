#!/usr/bin/env bash
# Removes what deploy/demo/demo.sh created: with DEMO_ID, that run's;
# without, every run's (what a crashed or kept demo left). For each run: its
# processes (by the PIDs it recorded), its pins, its namespaces, its files.
BIN=${BIN:-bin}
cd "$(dirname "$0")/../.."
if [ -n "${DEMO_ID:-}" ]; then
	runs=(/tmp/eastguard-demo-"$DEMO_ID")
	prefix=egdemo-$DEMO_ID-
else
	runs=(/tmp/eastguard-demo-*)
	prefix=egdemo-
fi
for dir in "${runs[@]}"; do
	[ -d "$dir" ] || continue
	if [ -f "$dir/pids" ]; then
		while read -r pid; do kill "$pid" 2>/dev/null; done < "$dir/pids"
		# The agent must be gone before --uninstall (it refuses while an
		# agent holds the directory).
		while read -r pid; do
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		done < "$dir/pids"
	fi
	bpffs=$(cat "$dir/bpffs" 2>/dev/null)
	if [ -n "$bpffs" ] && [ -x "$BIN/eastguard-agent" ]; then
		"$BIN/eastguard-agent" --uninstall --bpffs-dir "$bpffs" --log-level error 2>/dev/null
	fi
	rm -rf "$dir"
done
for ns in $(ip netns list 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns"; done
echo "demo cleaned up"
