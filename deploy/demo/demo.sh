#!/usr/bin/env bash
# Eastguard demo: one simulated node (a network namespace) with three
# workloads (web, db, client), each in its own namespace behind a veth, a
# standalone agent enforcing the shop policy, and traffic that is allowed
# or denied as the policy says. Each run has its own id (DEMO_ID, default
# the shell's PID), so two demos never collide: namespaces egdemo-ID-*,
# pins under /sys/fs/bpf/eastguard-demo-ID, files in /tmp/eastguard-demo-ID.
# `make demo-clean` removes whatever any run left. Run as root from the
# repository.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-bin}
DEMO_ID=${DEMO_ID:-$$}
DEMO_DIR=/tmp/eastguard-demo-$DEMO_ID
BPFFS=/sys/fs/bpf/eastguard-demo-$DEMO_ID
NS=egdemo-$DEMO_ID
NODE=$NS-node
say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok()   { printf '   \033[32mallowed\033[0m  %s\n' "$*"; }
no()   { printf '   \033[31mdenied\033[0m   %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, eBPF): sudo make demo"; exit 1; }
DEMO_ID=$DEMO_ID deploy/demo/clean.sh >/dev/null 2>&1 || true
mkdir -p "$DEMO_DIR/policy" "$DEMO_DIR/state"
echo "$BPFFS" > "$DEMO_DIR/bpffs"
# A failed step cleans this run up (DEMO_KEEP=1 keeps it for a look).
trap 'status=$?; if [ $status != 0 ] && [ "${DEMO_KEEP:-}" != 1 ]; then DEMO_ID=$DEMO_ID deploy/demo/clean.sh >/dev/null 2>&1; fi' EXIT

say "A node and three workloads, each in its own network namespace"
ip netns add $NODE
ip netns exec $NODE sysctl -q -w net.ipv4.ip_forward=1
i=0
for w in web db client; do
	i=$((i + 1))
	ip netns add $NS-$w
	ip link add eg-$w netns $NODE type veth peer name eth0 netns $NS-$w
	ip -n $NODE addr add 10.250.$i.1/24 dev eg-$w
	ip -n $NODE link set eg-$w up
	ip -n $NS-$w addr add 10.250.$i.2/24 dev eth0
	ip -n $NS-$w link set eth0 up
	ip -n $NS-$w link set lo up
	ip -n $NS-$w route add default via 10.250.$i.1
	echo "   $w: 10.250.$i.2 (host side eg-$w on node $NODE)"
done

cat > "$DEMO_DIR/policy/shop.yaml" <<'EOF'
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web, labels: {app: shop, role: web}}
spec: {node: demo-node, interface: eg-web, addresses: [10.250.1.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db, labels: {app: shop, role: db}}
spec: {node: demo-node, interface: eg-db, addresses: [10.250.2.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: client, labels: {app: shop, role: client}}
spec: {node: demo-node, interface: eg-client, addresses: [10.250.3.2]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - name: client-to-web
      from: [{selector: {role: client}}]
      to:   [{selector: {role: web}}]
      ports: [{protocol: TCP, port: 8080}]
    - name: web-to-db
      from: [{selector: {role: web}}]
      to:   [{selector: {role: db}}]
      ports: [{protocol: TCP, port: 5432}]
    - name: no-ssh
      action: deny
      from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
      to:   [{selector: {}}]
      ports: [{protocol: TCP, port: 22}]
EOF
say "The policy ($DEMO_DIR/policy/shop.yaml) is valid:"
$BIN/egctl validate "$DEMO_DIR/policy"

# Servers: web on 8080 and 22, db on 5432 and 22 (Python-free: nc). Each
# must be listening before any probe: a probe to a port nobody listens on
# is refused, which is not what a drop looks like.
for spec in web:8080 web:22 db:5432 db:22; do
	w=${spec%%:*}; p=${spec##*:}
	ip netns exec $NS-$w nc -lk -p "$p" >/dev/null 2>&1 &
	echo $! >> "$DEMO_DIR/pids"
done
for spec in web:8080 web:22 db:5432 db:22; do
	w=${spec%%:*}; p=${spec##*:}
	for _ in $(seq 100); do
		ip netns exec $NS-$w ss -Hltn "sport = :$p" | grep -q LISTEN && break
		sleep 0.05
	done
	ip netns exec $NS-$w ss -Hltn "sport = :$p" | grep -q LISTEN || { echo "   $w did not start listening on $p"; exit 1; }
done

try() { # try FROM TO_ADDR PORT LABEL
	# A dropped SYN times out (exit 124); anything else that fails (a
	# reset, no route) is not the policy's doing, and is said as such.
	local rc=0
	ip netns exec $NS-$1 timeout 1 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null || rc=$?
	case $rc in
	0) ok "$4" ;;
	124) no "$4" ;;
	*) printf '   \033[33mfailed\033[0m   %s (not a drop: connection refused or unreachable, exit %s)\n' "$4" "$rc" ;;
	esac
}
matrix() {
	try client 10.250.1.2 8080 "client -> web:8080"
	try client 10.250.1.2 22   "client -> web:22   (ssh)"
	try web    10.250.2.2 5432 "web    -> db:5432"
	try client 10.250.2.2 5432 "client -> db:5432"
	try web    10.250.2.2 22   "web    -> db:22    (ssh)"
}

say "Without Eastguard, everything is reachable"
matrix

start_agent() { # sets AGENT; returns once the agent has applied the policy
	local before
	before=$(grep -c "rule set applied" "$DEMO_DIR/agent.log" 2>/dev/null || true)
	nsenter --net=/run/netns/$NODE -- $BIN/eastguard-agent --node demo-node \
		--policy-dir "$DEMO_DIR/policy" --state-dir "$DEMO_DIR/state" --bpffs-dir $BPFFS \
		--flow-log "$DEMO_DIR/flows.jsonl" --log-format console >> "$DEMO_DIR/agent.log" 2>&1 &
	AGENT=$!
	echo $AGENT >> "$DEMO_DIR/pids"
	for _ in $(seq 100); do
		[ "$(grep -c "rule set applied" "$DEMO_DIR/agent.log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
		kill -0 $AGENT 2>/dev/null || break
		sleep 0.1
	done
	echo "   the agent did not apply the policy; its log:"; sed 's/^/   /' "$DEMO_DIR/agent.log"; exit 1
}

say "Start the agent on the node (standalone mode: it compiles the policy itself)"
start_agent
grep "rule set applied" "$DEMO_DIR/agent.log" | sed 's/^/   /'

say "With Eastguard: default deny, the policy's edges allowed"
matrix

say "Why? egctl explain asks the compiled rule sets"
$BIN/egctl explain --from client --to web --port 22/tcp "$DEMO_DIR/policy" || true
$BIN/egctl explain --from web --to db --port 5432/tcp "$DEMO_DIR/policy" || true

say "Every new flow and every denied attempt is a flow record ($DEMO_DIR/flows.jsonl)"
sleep 0.5
grep -E '"dstPort":(22|5432|8080)' "$DEMO_DIR/flows.jsonl" | head -n 6 | sed 's/^/   /'

say "Kill the agent with SIGKILL: enforcement stays (programs and maps are pinned)"
kill -9 $AGENT; wait $AGENT 2>/dev/null || true
matrix

say "Remove enforcement: eastguard-agent --uninstall"
$BIN/eastguard-agent --uninstall --bpffs-dir $BPFFS --log-format console 2>&1 | sed 's/^/   /'
matrix

if [ "${DEMO_KEEP:-}" = 1 ]; then
	say "DEMO_KEEP=1: the agent enforces again and is left running"
	start_agent
	matrix
	echo "   agent PID $AGENT (log $DEMO_DIR/agent.log, flows $DEMO_DIR/flows.jsonl)"
	echo "   probe it:  sudo ip netns exec $NS-client nc -z -w 1 10.250.1.2 8080"
	echo "   stop it and remove everything:  sudo make demo-clean"
else
	DEMO_ID=$DEMO_ID deploy/demo/clean.sh
	say "Cleaned up. Run the tests with: sudo make test"
fi
