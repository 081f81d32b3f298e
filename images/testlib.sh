# images/testlib.sh: helpers shared by images/test-tiny and images/test-debian
# (sourced). Boots run QEMU under TCG on a qcow2 overlay of $IMAGE in a temp
# dir; every QEMU started is killed and every temp file removed on exit.
# Set VIRTLET_TEST_KEEP=1 to keep the temp dir.

BOOT_TIMEOUT=${VIRTLET_TEST_BOOT_TIMEOUT:-120}      # seconds to the marker
POWEROFF_TIMEOUT=${VIRTLET_TEST_POWEROFF_TIMEOUT:-20}
QEMU_MEM=${QEMU_MEM:-256}
LOG_TAG=${LOG_TAG:-test}

PASSED=0
FAILED=0
TMP=
QEMU_PID=
SERIAL_FD=

log() { echo "[$LOG_TAG] $*" >&2; }

cleanup() {
	stop_qemu
	if [ -n "$TMP" ]; then
		if [ -n "${VIRTLET_TEST_KEEP:-}" ]; then log "keeping $TMP"; else rm -rf "$TMP"; fi
	fi
	return 0
}
stop_qemu() {
	if [ -n "$SERIAL_FD" ]; then
		eval "exec $SERIAL_FD>&-" 2>/dev/null
		SERIAL_FD=
	fi
	if [ -n "$QEMU_PID" ]; then
		if kill -0 "$QEMU_PID" 2>/dev/null; then
			kill "$QEMU_PID" 2>/dev/null
			local i
			for i in $(seq 1 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$QEMU_PID" 2>/dev/null
		fi
		wait "$QEMU_PID" 2>/dev/null
		QEMU_PID=
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
CUR=        # directory of the current boot
CUR_FAILED=0
check() {   # check DESCRIPTION COMMAND...
	local what="$1"
	shift
	if "$@"; then
		PASSED=$((PASSED + 1))
		log "  ok: $what"
	else
		FAILED=$((FAILED + 1))
		CUR_FAILED=1
		log "  FAIL: $what"
	fi
}
console_has() { grep -qF -- "$1" "$CUR/console.log"; }
console_has_re() { grep -qE -- "$1" "$CUR/console.log"; }

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# make_key DIR: ed25519 key pair; sets PUBKEY
make_key() {
	dropbearkey -t ed25519 -f "$1/id_ed25519" >/dev/null 2>&1 || return 1
	PUBKEY=$(dropbearkey -y -f "$1/id_ed25519" | grep '^ssh-')
	[ -n "$PUBKEY" ]
}

# make_vfat IMG LABEL SRC_DIR: FAT image with the files of SRC_DIR
make_vfat() {
	rm -f "$1"
	mkfs.vfat -C -n "$2" "$1" 4096 >/dev/null || return 1
	mcopy -s -i "$1" "$3"/* ::/
}

# boot NAME QEMU_ARGS...: starts QEMU in the background on an overlay of the
# image; serial console: stdin from a FIFO (fd SERIAL_FD), output to
# $CUR/console.log; monitor on $CUR/monitor.sock
START_NS=
boot() {
	local name="$1"
	shift
	# shellcheck disable=SC2086
	qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE" "$CUR/root.qcow2" ${OVERLAY_SIZE:-} || return 1
	mkfifo "$CUR/serial.in"
	START_NS=$(date +%s%N)
	qemu-system-x86_64 -accel tcg -m "$QEMU_MEM" -nographic -no-reboot \
		-name "virtlet-$LOG_TAG-$name" \
		-monitor "unix:$CUR/monitor.sock,server=on,wait=off" \
		"$@" <"$CUR/serial.in" >"$CUR/console.log" 2>"$CUR/qemu.err" &
	QEMU_PID=$!
	exec {SERIAL_FD}>"$CUR/serial.in"
}

# waits for the marker; sets MARKER and MARKER_SECS
elapsed() {   # seconds since START_NS, with milliseconds
	local ms=$(( ($(date +%s%N) - START_NS) / 1000000 ))
	echo "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}
wait_marker() {
	local deadline=$(($(date +%s) + BOOT_TIMEOUT))
	MARKER=
	while [ "$(date +%s)" -lt "$deadline" ]; do
		MARKER=$(grep -a -m 1 '^VIRTLET-GUEST-READY ' "$CUR/console.log" | tr -d '\r')
		if [ -n "$MARKER" ]; then
			MARKER_SECS=$(elapsed)
			return 0
		fi
		kill -0 "$QEMU_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# types a line on the serial console
type_line() { printf '%s\n' "$1" >&"$SERIAL_FD"; }

# waits until the console shows TEXT (after the marker), up to SECS
wait_console() {
	local text="$1" secs="${2:-15}" i
	for i in $(seq 1 $((secs * 10))); do
		grep -aqF -- "$text" "$CUR/console.log" && return 0
		sleep 0.1
	done
	return 1
}

monitor_cmd() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "monitor: $!\n";
		print $s "$ARGV[1]\n";
		select(undef, undef, undef, 0.5);
		close $s;' "$CUR/monitor.sock" "$1"
}

# waits for QEMU to exit by itself (counting from POWEROFF_NS, set when the
# power-off was requested); sets EXIT_SECS and QEMU_RC
POWEROFF_NS=
wait_qemu_exit() {
	local secs="$1" i start=${POWEROFF_NS:-$(date +%s%N)}
	for i in $(seq 1 $((secs * 10))); do
		if ! kill -0 "$QEMU_PID" 2>/dev/null; then
			wait "$QEMU_PID"
			QEMU_RC=$?
			QEMU_PID=
			EXIT_SECS=$(( ($(date +%s%N) - start) / 10000000 ))
			EXIT_SECS="$((EXIT_SECS / 100)).$(printf '%02d' $((EXIT_SECS % 100)))"
			return 0
		fi
		sleep 0.1
	done
	return 1
}

ssh_guest() {   # ssh_guest PORT COMMAND
	HOME="$CUR" timeout 60 dbclient -y -y -i "$CUR/id_ed25519" -p "$1" root@127.0.0.1 "$2" 2>"$CUR/ssh.err" | tr -d '\r'
}

finish_boot() {
	local name="$1"
	stop_qemu
	if [ "$CUR_FAILED" != 0 ]; then
		echo "===== console log of boot '$name' =====" >&2
		sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$CUR/console.log" >&2
		echo "===== end of console log ($name); qemu stderr: =====" >&2
		cat "$CUR/qemu.err" >&2
		[ -s "$CUR/ssh.err" ] && { echo "===== ssh stderr =====" >&2; cat "$CUR/ssh.err" >&2; }
	fi
	CUR_FAILED=0
}

TIMINGS=()
common_checks() {   # common_checks NAME HOSTNAME PORT
	local name="$1" host="$2" port="$3" out
	if wait_marker; then
		check "$name: marker line within ${BOOT_TIMEOUT}s (${MARKER_SECS}s)" true
		TIMINGS+=("$name: ${MARKER_SECS}s to marker")
		log "  marker: $MARKER"
	else
		check "$name: marker line within ${BOOT_TIMEOUT}s" false
		return 1
	fi
	check "$name: marker hostname=$host" test "${MARKER#* hostname=}" != "$MARKER" -a "$(echo "$MARKER" | sed -n 's/.* hostname=\([^ ]*\).*/\1/p')" = "$host"
	check "$name: marker has an IPv4 address" console_has_re '^VIRTLET-GUEST-READY hostname=[^ ]+ ip=[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+'
	check "$name: authorized key on the console" console_has "AUTHKEY: $PUBKEY"
	out=$(ssh_guest "$port" 'echo "$(hostname) $(id -u)"')
	check "$name: ssh login with the generated key (got '$out')" test "$out" = "$host 0"
}

