#!/usr/bin/env bash
# Installs the Eastguard agent on a systemd host in one command, or
# removes it (--uninstall). Run with --help for the flags and exit codes.
#
# The join token never appears on a command line, neither this script's
# nor any command it runs (/proc/PID/cmdline is readable by every user of
# the host): it is copied from a file or standard input with cat, by
# redirection, into a 0600 file the agent reads with --join-token-file.
#
# DESTDIR (environment) installs into a scratch root instead: nothing
# outside it is touched, systemd is neither told nor asked, and root is not
# needed. The tests run the script that way.
set -euo pipefail
umask 077

readonly UNIT_NAME=eastguard-agent.service
readonly BIN_PATH=/usr/local/bin/eastguard-agent
readonly CONF_DIR=/etc/eastguard
readonly ENV_FILE=$CONF_DIR/agent.env
readonly TOKEN_FILE=$CONF_DIR/join-token
readonly UNIT_PATH=/etc/systemd/system/$UNIT_NAME
readonly STATE_DIR=/var/lib/eastguard
readonly LOG_DIR=/var/log/eastguard
readonly BPFFS_DIR=/sys/fs/bpf/eastguard
readonly DEFAULT_METRICS=127.0.0.1:9790 # the unit's own --metrics-listen

# Exit codes (documented in --help).
readonly EXIT_FAILED=1 EXIT_USAGE=2 EXIT_PRIVILEGE=3 EXIT_NOT_JOINED=4

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
DESTDIR=${DESTDIR:-}

usage() {
	cat <<EOF
Usage:
  install.sh --controller HOST:PORT (--join-token-file FILE | --join-token-stdin) [flags]
  install.sh --uninstall [--purge] [flags]

Installs the Eastguard agent on this systemd host: the binary as
$BIN_PATH, $ENV_FILE (0600) from the flags, the
join token as $TOKEN_FILE (0600), the hardened unit as
$UNIT_PATH; then enables and (re)starts the unit
and waits until the agent has joined the controller (its certificate in
$STATE_DIR).

The join token comes from a file or standard input, never from the
command line (every user of the host can read a process's arguments):
  egctl token create --node NAME --ttl 1h | tail -n1 > NAME.token   # on the admin's machine
  sudo deploy/install.sh --controller ctl.example.com:7443 --join-token-file NAME.token

Flags:
  --controller HOST:PORT     the controller's gRPC address (required to install);
                             several controllers: HOST:PORT,HOST:PORT
  --join-token-file FILE     read the one-time join token from FILE
  --join-token-stdin         read the one-time join token from standard input
                             (one of the two is required unless the node has
                             joined already: $STATE_DIR/node.pem)
  --node NAME                this node's name (default: hostname)
  --binary PATH              the agent binary (default: bin/eastguard-agent of
                             this script's repository, else ./bin/eastguard-agent,
                             else ./eastguard-agent)
  --default-mode MODE        enforce or monitor (the agent's --default-mode)
  --guard-interfaces GLOBS   the agent's --guard-interfaces
  --metrics-listen ADDR      the agent's --metrics-listen (the unit's default:
                             $DEFAULT_METRICS)
  --wait SECONDS             how long to wait for the join (default 60)
  --no-start                 install the files, do not enable or start the unit
  --uninstall                stop and disable the unit, remove enforcement
                             (eastguard-agent --uninstall), remove the installed
                             files; idempotent
  --purge                    with --uninstall: also remove $STATE_DIR
                             (the node's key and certificate) and $LOG_DIR
  --dry-run                  print what would be done, change nothing
  -h, --help                 this help

Environment: DESTDIR=DIR installs into DIR as the root (no root needed;
systemd is not touched; --uninstall does not touch the host's bpffs).

Exit status:
  0  done (installed and joined, or uninstalled)
  1  an installation or removal step failed
  2  bad input: unknown flag, --join-token given, missing or bad
     --controller, unreadable or malformed token, bad flag value, missing
     binary
  3  not root (and no DESTDIR)
  4  installed, but the agent did not join within --wait (the journal's
     last lines are printed)
EOF
}

die() { # die CODE MESSAGE...
	local code=$1
	shift
	printf 'install.sh: %s\n' "$*" >&2
	exit "$code"
}
usage_error() { die "$EXIT_USAGE" "$* (see --help)"; }
say() { printf '%s\n' "$*"; }

dry_run=false
# run CMD ARGS...: runs it, or prints it with --dry-run. Never given the
# token: every argument may be printed.
run() {
	if $dry_run; then
		printf '+ %s\n' "$*"
	else
		"$@"
	fi
}

# need_value FLAG REMAINING_ARGS: the flag has a value.
need_value() {
	[ "$2" -ge 2 ] || usage_error "$1 needs a value"
}

# check_value FLAG VALUE ERE WHAT: the value is one line of the characters
# the env file can hold unquoted (systemd splits EASTGUARD_ARGS at
# whitespace), and matches ERE.
check_value() {
	if ! printf '%s' "$2" | grep -Eqx -- "$3" || [ "$(printf '%s' "$2" | wc -l)" -ne 0 ]; then
		usage_error "$1 '$2': want $4"
	fi
}

mode=install
controller="" node="" binary="" default_mode="" guard="" metrics=""
token_file="" token_stdin=false wait_s=60 start=true purge=false
while [ $# -gt 0 ]; do
	case $1 in
	--join-token | --join-token=*)
		usage_error "--join-token is refused: a command line is readable by every user of the host (/proc/PID/cmdline); use --join-token-file FILE or --join-token-stdin"
		;;
	--controller) need_value "$1" $# && controller=$2 && shift ;;
	--node) need_value "$1" $# && node=$2 && shift ;;
	--binary) need_value "$1" $# && binary=$2 && shift ;;
	--default-mode) need_value "$1" $# && default_mode=$2 && shift ;;
	--guard-interfaces) need_value "$1" $# && guard=$2 && shift ;;
	--metrics-listen) need_value "$1" $# && metrics=$2 && shift ;;
	--join-token-file) need_value "$1" $# && token_file=$2 && shift ;;
	--join-token-stdin) token_stdin=true ;;
	--wait) need_value "$1" $# && wait_s=$2 && shift ;;
	--no-start) start=false ;;
	--uninstall) mode=uninstall ;;
	--purge) purge=true ;;
	--dry-run) dry_run=true ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown flag '$1'" ;;
	esac
	shift
done

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ] && ! $dry_run; then
	die "$EXIT_PRIVILEGE" "must run as root (or with DESTDIR=DIR to install into a scratch root)"
fi
if [ -n "$DESTDIR" ]; then
	case $DESTDIR in
	/*) ;;
	*) usage_error "DESTDIR '$DESTDIR': want an absolute path" ;;
	esac
	DESTDIR=${DESTDIR%/}
fi

# systemd is told only about the real root, and only where it runs.
systemd_runs() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# put SRC DEST MODE: installs SRC as $DESTDIR/DEST with MODE, replacing it
# by a rename (a running binary cannot be overwritten in place, and a
# reader never sees half a file).
put() {
	local dest=$DESTDIR$2
	if $dry_run; then
		say "+ install -m $3 $1 $dest"
		return
	fi
	# Directories as a package makes them (0755; the umask is 077 for
	# the files): the secrets are protected by their own mode.
	(umask 022 && mkdir -p "$(dirname "$dest")")
	local tmp
	tmp=$(mktemp "$dest.XXXXXX")
	if ! cat <"$1" >"$tmp" || ! chmod "$3" "$tmp" || ! mv -f "$tmp" "$dest"; then
		rm -f "$tmp"
		die "$EXIT_FAILED" "cannot install $dest"
	fi
}

uninstall() {
	if systemd_runs; then
		run systemctl disable --now "$UNIT_NAME" 2>/dev/null || true
	elif [ -n "$DESTDIR" ]; then
		say "DESTDIR set: systemd not told"
	else
		say "systemd is not running here: no unit to stop"
	fi
	local bin=$DESTDIR$BIN_PATH
	if [ -n "$DESTDIR" ]; then
		say "DESTDIR set: enforcement on this host left as it is (eastguard-agent --uninstall not run)"
	elif [ -x "$bin" ]; then
		# Refused (exit 1) while an agent still runs on the directory: then
		# the files stay and the caller sees why.
		run "$bin" --uninstall --bpffs-dir "$BPFFS_DIR" ||
			die "$EXIT_FAILED" "$bin --uninstall failed (above); nothing removed, fix it and run --uninstall again"
	elif [ -d "$BPFFS_DIR" ]; then
		say "warning: $BIN_PATH is gone but $BPFFS_DIR exists: remove enforcement with another eastguard-agent --uninstall --bpffs-dir $BPFFS_DIR" >&2
	fi
	local f
	for f in "$UNIT_PATH" "$ENV_FILE" "$TOKEN_FILE" "$BIN_PATH"; do
		if [ -e "$DESTDIR$f" ]; then
			run rm -f "$DESTDIR$f"
		fi
	done
	# /etc/eastguard may hold what others put there (a policy, the
	# controller's env file): removed only if empty.
	if [ -d "$DESTDIR$CONF_DIR" ]; then
		run rmdir --ignore-fail-on-non-empty "$DESTDIR$CONF_DIR"
	fi
	if $purge; then
		for f in "$STATE_DIR" "$LOG_DIR"; do
			if [ -e "$DESTDIR$f" ]; then
				run rm -rf "$DESTDIR$f"
			fi
		done
	fi
	if systemd_runs; then
		run systemctl daemon-reload
	fi
	say "eastguard-agent uninstalled"
}

if [ "$mode" = uninstall ]; then
	for v in "$controller" "$node" "$binary" "$default_mode" "$guard" "$metrics" "$token_file"; do
		[ -z "$v" ] || usage_error "--uninstall takes only --purge, --dry-run"
	done
	$token_stdin && usage_error "--uninstall takes only --purge, --dry-run"
	uninstall
	exit 0
fi
$purge && usage_error "--purge goes with --uninstall"

# Check every input before anything changes.
[ -n "$controller" ] || usage_error "--controller HOST:PORT is required"
check_value --controller "$controller" '(([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})(,([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})*' "HOST:PORT, or several separated by commas"
if [ -z "$node" ]; then
	node=$(hostname)
fi
check_value --node "$node" '[A-Za-z0-9][A-Za-z0-9._-]{0,252}' "1 to 253 letters, digits, '-', '_' and '.', starting with a letter or digit"
if [ -n "$default_mode" ]; then
	check_value --default-mode "$default_mode" 'enforce|monitor' "enforce or monitor"
fi
if [ -n "$guard" ]; then
	check_value --guard-interfaces "$guard" '[][A-Za-z0-9_.*?!,^-]+' "comma-separated interface name globs"
fi
if [ -n "$metrics" ]; then
	check_value --metrics-listen "$metrics" '([A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}' "HOST:PORT"
fi
check_value --wait "$wait_s" '[0-9]{1,5}' "a number of seconds"

if [ -z "$binary" ]; then
	for b in "$repo_dir/bin/eastguard-agent" ./bin/eastguard-agent ./eastguard-agent; do
		if [ -f "$b" ]; then
			binary=$b
			break
		fi
	done
	[ -n "$binary" ] || usage_error "no agent binary at $repo_dir/bin/eastguard-agent, ./bin/eastguard-agent or ./eastguard-agent: build it (make build) or give --binary PATH"
fi
if [ ! -f "$binary" ] || [ ! -r "$binary" ]; then
	usage_error "--binary $binary: not a readable file"
fi
version=$("$binary" --version 2>/dev/null) || usage_error "--binary $binary: not an eastguard-agent ('$binary --version' failed)"

if [ -n "$token_file" ] && $token_stdin; then
	usage_error "give one of --join-token-file and --join-token-stdin, not both"
fi
if [ -n "$token_file" ]; then
	if [ ! -f "$token_file" ] || [ ! -r "$token_file" ]; then
		usage_error "--join-token-file $token_file: not a readable file"
	fi
elif ! $token_stdin && [ ! -f "$DESTDIR$STATE_DIR/node.pem" ]; then
	usage_error "a join token is required (--join-token-file FILE or --join-token-stdin; create one with: egctl token create --node $node --ttl 1h)"
fi

# The token, copied into a private temporary file and checked there: it is
# only ever redirected, never an argument. With --dry-run stdin is not read.
token_tmp=""
cleanup() { [ -z "$token_tmp" ] || rm -f "$token_tmp"; }
trap cleanup EXIT
if [ -n "$token_file" ] || { $token_stdin && ! $dry_run; }; then
	token_tmp=$(mktemp)
	if [ -n "$token_file" ]; then
		cat <"$token_file" >"$token_tmp" || usage_error "--join-token-file $token_file: cannot read it"
	else
		[ -t 0 ] && printf 'join token (egctl token create --node %s): ' "$node" >&2
		cat >"$token_tmp" || usage_error "--join-token-stdin: cannot read standard input"
	fi
	# One line: eg1.<id>.<secret>.<ca-sha256>, hex parts (pki.ParseJoinToken);
	# the message never shows the token.
	if [ "$(grep -c . "$token_tmp")" -ne 1 ] ||
		! grep -Eq '^[[:space:]]*eg1\.[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]{64}[[:space:]]*$' "$token_tmp"; then
		usage_error "the join token (${token_file:-standard input}) is not one line of the form eg1.<id>.<secret>.<ca-sha256> (egctl token create prints it alone on its last line)"
	fi
fi

args="--controller $controller"
if [ -n "$token_tmp" ] || $token_stdin; then
	args="$args --join-token-file $TOKEN_FILE"
fi
[ -z "$default_mode" ] || args="$args --default-mode $default_mode"
[ -z "$guard" ] || args="$args --guard-interfaces $guard"
# Later than the unit's own --metrics-listen on the command line: it wins.
[ -z "$metrics" ] || args="$args --metrics-listen $metrics"

env_tmp=$(mktemp)
trap 'cleanup; rm -f "$env_tmp"' EXIT
cat >"$env_tmp" <<EOF
# Written by deploy/install.sh ($version); read by $UNIT_NAME.
# The join token is in $TOKEN_FILE (0600), never here.
EASTGUARD_NODE=$node
EASTGUARD_ARGS=$args
EOF

unit_src=$script_dir/systemd/$UNIT_NAME
[ -r "$unit_src" ] || die "$EXIT_FAILED" "$unit_src is missing (run the script from the repository)"

if $dry_run; then
	say "dry run: nothing is changed"
	say "+ write $DESTDIR$ENV_FILE (0600):"
	sed 's/^/    /' "$env_tmp"
	if [ -n "$token_tmp" ] || $token_stdin; then
		say "+ write $DESTDIR$TOKEN_FILE (0600) from ${token_file:-standard input}"
	fi
fi
put "$binary" "$BIN_PATH" 0755
if [ -n "$token_tmp" ]; then
	put "$token_tmp" "$TOKEN_FILE" 0600
fi
put "$env_tmp" "$ENV_FILE" 0600
put "$unit_src" "$UNIT_PATH" 0644
say "installed $version: $DESTDIR$BIN_PATH, $DESTDIR$ENV_FILE, $DESTDIR$UNIT_PATH"

if [ -n "$DESTDIR" ]; then
	say "DESTDIR set: systemd not told; on the host: systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
	exit 0
fi
if ! $start; then
	say "not started (--no-start): systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
	exit 0
fi
if ! systemd_runs; then
	say "systemd is not running here: start the agent yourself, or the unit on a systemd host"
	exit 0
fi
run systemctl daemon-reload || die "$EXIT_FAILED" "systemctl daemon-reload failed"
run systemctl enable "$UNIT_NAME" || die "$EXIT_FAILED" "systemctl enable $UNIT_NAME failed"
# restart, not start: an upgrade takes the new binary and env file
# (enforcement stays pinned across the restart).
run systemctl restart "$UNIT_NAME" || die "$EXIT_FAILED" "systemctl restart $UNIT_NAME failed"
if $dry_run; then
	say "+ wait up to ${wait_s}s for $STATE_DIR/node.pem"
	exit 0
fi

# Joined = the certificate is in the state dir. A refused join makes the
# agent exit 1 (the unit then fails): no need to wait the whole time.
deadline=$((SECONDS + wait_s))
until [ -s "$STATE_DIR/node.pem" ]; do
	if [ "$SECONDS" -ge "$deadline" ] || systemctl is-failed --quiet "$UNIT_NAME"; then
		printf 'install.sh: the agent did not join within %ss (%s: %s); its last log lines:\n' \
			"$wait_s" "$UNIT_NAME" "$(systemctl is-active "$UNIT_NAME" || true)" >&2
		journalctl -u "$UNIT_NAME" -n 30 --no-pager >&2 || true
		exit "$EXIT_NOT_JOINED"
	fi
	sleep 1
done
say "joined: $STATE_DIR/node.pem present; $UNIT_NAME $(systemctl is-active "$UNIT_NAME" || true)"
addr=${metrics:-$DEFAULT_METRICS}
case $addr in :*) addr=127.0.0.1$addr ;; esac
if command -v curl >/dev/null; then
	if curl -fsS --max-time 5 "http://$addr/status"; then
		echo
	else
		say "(no /status on $addr yet)"
	fi
fi
