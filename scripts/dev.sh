#!/usr/bin/env bash
# dev.sh serves zenspa and rebuilds and restarts it whenever a .go, .sql or
# .env file changes (make dev). A build that fails leaves the running server
# as it is. Ctrl-C, SIGINT or SIGTERM stops the server we started, by its
# PID, and the watcher, then exits: nothing is left running.
set -euo pipefail

GO=${GO:-go}
BINARY=${BINARY:-zenspa}

log() { echo "dev: $*" >&2; }

server=  # the PID of the server we started
watcher= # the PID of inotifywait

# server_running reports whether our server has not exited yet. It asks
# bash's job table, not the PID, which another process may have by now.
server_running() {
	[ -n "$server" ] && jobs -pr | grep -qx "$server"
}

# start_server runs the binary in the background.
start_server() {
	"./$BINARY" &
	server=$!
	log "zenspa started (PID $server)"
}

# stop_server sends SIGTERM, as systemd does, and waits for the graceful
# shutdown to end.
stop_server() {
	if server_running; then
		log "stopping zenspa (PID $server)"
		kill -TERM "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
	fi
	server=
}

build() {
	log "building"
	"$GO" build -o "$BINARY" .
}

cleanup() {
	trap - INT TERM EXIT
	if [ -n "$watcher" ]; then
		kill "$watcher" 2>/dev/null || true
		wait "$watcher" 2>/dev/null || true
	fi
	stop_server
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

if ! command -v inotifywait >/dev/null 2>&1; then
	log "inotifywait is missing: run \`make dev\`, whose services step installs inotify-tools"
	exit 1
fi

# The watch starts before the first build, so that no save is missed. touch
# only changes a file's times (attrib); editors write in place or rename.
exec 3< <(inotifywait -m -r -q --format '%w%f' \
	-e close_write -e attrib -e create -e delete -e moved_to -e moved_from \
	--exclude '^\./(\.git|tools/node_modules|testdata)(/|$)' .)
watcher=$!

if build; then
	start_server
else
	log "the build failed: dev starts the server after the next change"
fi
log "watching .go, .sql and .env files; Ctrl-C stops"

while read -r -u 3 path; do
	case "$path" in
	*.go | *.sql | *.env) ;;
	*) continue ;;
	esac
	# A save or a checkout touches several files at once: let them settle.
	while read -r -t 0.3 -u 3 _; do :; done
	log "$path changed"
	if build; then
		stop_server
		start_server
	elif server_running; then
		log "the build failed: the previous build goes on serving"
	else
		log "the build failed: nothing serves until a change builds"
	fi
done
log "inotifywait stopped watching"
exit 1
