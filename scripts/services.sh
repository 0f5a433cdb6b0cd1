#!/usr/bin/env bash
# services.sh makes sure what zenspa needs is here and running: a PostgreSQL
# and a Redis answering on 127.0.0.1, PostgreSQL's server programs (initdb,
# pg_ctl) for the tests' private servers, the zenspa role and database, and
# the zenspa_test role, which is all a plain `go test ./...` needs.
# With --test (make test) also the tools the other tests call: gcc for the
# race detector, pgbouncer, systemd-analyze, logrotate, promtool, node/npm,
# Chromium, HAProxy and PyJWT; with --dev (make dev) inotifywait; with
# --bench (make bench) wrk, the load generator. What already runs is only
# used, never restarted; what is missing is installed from the OS packages
# (Debian's names) and started, through sudo when we are not root.
set -euo pipefail

for_tests=
for_dev=
for_bench=
case "${1:-}" in
--test) for_tests=1 ;;
--dev) for_dev=1 ;;
--bench) for_bench=1 ;;
"") ;;
*)
	echo "usage: services.sh [--test|--dev|--bench]" >&2
	exit 2
	;;
esac
# invocation is how to run this again by hand, for the messages.
invocation="bash scripts/services.sh${1:+ $1}"

PG_PORT=5432
REDIS_PORT=6379
DB_NAME=zenspa
DB_USER=zenspa
DB_PASSWORD=zenspa # a local development password, also in .env.example
# The tests connect as their own role, whose password is a sentinel that the
# tests' secret scan looks for in everything zenspa prints (helpers_test.go).
TEST_USER=zenspa_test
TEST_PASSWORD=zenspa-test-pw-SENTINEL-7c1e9a

log() { echo "services: $*" >&2; }

# as_root runs a command as root: directly when we are root, else through
# sudo, which asks for the password when stdin is a terminal. Without one
# (CI, a pipe) sudo must need no password, or we stop saying what to do.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif ! command -v sudo >/dev/null 2>&1; then
		log "need root to run: $*"
		log "sudo is not installed: run \`$invocation\` once as root"
		exit 1
	elif sudo -n true 2>/dev/null; then
		sudo -n "$@"
	elif [ -t 0 ] && [ -z "${CI:-}" ]; then
		log "need root, through sudo, to run: $*"
		sudo "$@"
	else
		log "need root to run: $*"
		log "sudo wants $(id -un)'s password and there is no terminal to ask on (stdin is not a tty${CI:+, or CI is set}):"
		log "run \`$invocation\` once in a terminal (sudo asks there), or give $(id -un) passwordless sudo"
		exit 1
	fi
}

# have reports whether a program is installed: on PATH, or in /usr/sbin or
# /sbin, which Debian uses for daemons and a normal user's PATH lacks.
have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

apt_updated=
apt_install() {
	log "installing $* from the OS packages"
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq
		apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# port_open reports whether something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for waits up to 30 s for a port to open.
wait_for() {
	for _ in $(seq 1 60); do
		port_open "$1" && return 0
		sleep 0.5
	done
	log "$2 did not start listening on 127.0.0.1:$1"
	exit 1
}

ensure_postgres() {
	if ! port_open "$PG_PORT"; then
		if ! compgen -G "/etc/postgresql/*/main" >/dev/null; then
			apt_install postgresql postgresql-client
		fi
		local version
		version=$(ls /etc/postgresql | sort -V | tail -n 1)
		log "starting PostgreSQL $version"
		as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
			as_root service postgresql start
		wait_for "$PG_PORT" PostgreSQL
	fi
	have psql || apt_install postgresql-client
	# The tests start private servers with initdb and pg_ctl, which only the
	# server package has (in /usr/lib/postgresql/VERSION/bin, off PATH), also
	# where the PostgreSQL on the port runs elsewhere, in a container say.
	compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_install postgresql

	# A server where both already log in needs no superuser of ours (a
	# PostgreSQL in a container, say); otherwise the roles and the database
	# are created. The roles may create databases: every test gets its own.
	if ! can_login "$DB_USER" "$DB_PASSWORD" "$DB_NAME"; then
		ensure_role "$DB_USER" "$DB_PASSWORD"
		if [ "$(psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
			log "creating database $DB_NAME"
			psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
		fi
	fi
	if ! can_login "$TEST_USER" "$TEST_PASSWORD" postgres; then
		ensure_role "$TEST_USER" "$TEST_PASSWORD"
		# The tests' password is a known value: set it even on an old role.
		psql_admin -c "ALTER ROLE $TEST_USER LOGIN CREATEDB PASSWORD '$TEST_PASSWORD'" >/dev/null
	fi
	# A query run as a signed-in user takes Supabase's role authenticated
	# (withUserTx in auth.go). Supabase has it; here it is created, and both
	# roles may take it.
	local member
	member=$(PGPASSWORD="$TEST_PASSWORD" psql -w -X -h 127.0.0.1 -p "$PG_PORT" -U "$TEST_USER" -d postgres -Atc \
		"SELECT pg_has_role('$TEST_USER', 'authenticated', 'MEMBER') AND pg_has_role('$DB_USER', 'authenticated', 'MEMBER')" 2>/dev/null || true)
	if [ "$member" != t ]; then
		log "creating the role authenticated"
		psql_admin -c "DO \$\$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
				CREATE ROLE authenticated NOLOGIN;
			END IF; END \$\$;" >/dev/null
		psql_admin -c "SET client_min_messages = warning; GRANT authenticated TO $DB_USER, $TEST_USER" >/dev/null
	fi
}

# can_login reports whether user/password reaches database over TCP.
can_login() {
	PGPASSWORD="$2" psql -w -X -h 127.0.0.1 -p "$PG_PORT" -U "$1" -d "$3" -Atc "SELECT 1" >/dev/null 2>&1
}

# ensure_role creates a login role that may create databases, if missing.
ensure_role() {
	psql_admin -c "DO \$\$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$1') THEN
			CREATE ROLE $1 LOGIN CREATEDB PASSWORD '$2';
		END IF; END \$\$;" >/dev/null
}

# psql_admin runs psql as a superuser: over TCP where the server trusts
# loopback, else through the socket as the postgres OS user.
psql_admin() {
	if psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT 1" >/dev/null 2>&1; then
		psql -w -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
	else
		as_root runuser -u postgres -- psql -w -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
	fi
}

ensure_redis() {
	have redis-server || apt_install redis-server
	if ! port_open "$REDIS_PORT"; then
		log "starting Redis"
		redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
			--save "" --appendonly no --dir /tmp --logfile /tmp/zenspa-redis.log
		wait_for "$REDIS_PORT" Redis
	fi
}

ensure_tools() {
	local missing=()
	# go test -race needs cgo, so a C compiler.
	have gcc || missing+=(gcc libc6-dev)
	# The deployment tests: PgBouncer in transaction mode, the unit file
	# checked by systemd-analyze, the logrotate rule parsed by logrotate.
	have pgbouncer || missing+=(pgbouncer)
	have systemd-analyze || missing+=(systemd)
	have logrotate || missing+=(logrotate)
	# The docs: npm installs the pinned OpenAPI linter and UI packages
	# (`make tools`); headless Chromium, driven through chromedriver, opens
	# /docs and /redoc.
	have node || missing+=(nodejs)
	have npm || missing+=(npm)
	[ -x /usr/bin/chromium ] || missing+=(chromium)
	have chromedriver || missing+=(chromium-driver)
	# The metrics test lints a /metrics scrape with promtool, which Debian
	# ships in the prometheus package.
	have promtool || missing+=(prometheus)
	# The load-balancer tests put HAProxy in front of zenspa.
	have haproxy || missing+=(haproxy)
	# The token tests run Debian's own interpreter with PyJWT: the python3
	# first on PATH may be another one, without Debian's modules.
	/usr/bin/python3 -c 'import jwt' 2>/dev/null || missing+=(python3-jwt)
	/usr/bin/python3 -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
	if [ ${#missing[@]} -gt 0 ]; then
		apt_install "${missing[@]}"
	fi
}

# ensure_dev_tools installs inotifywait, which scripts/dev.sh waits on.
ensure_dev_tools() {
	have inotifywait || apt_install inotify-tools
}

# ensure_bench_tools installs wrk, which bench/bench.sh drives.
ensure_bench_tools() {
	have wrk || apt_install wrk
}

ensure_postgres
ensure_redis
if [ -n "$for_tests" ]; then
	ensure_tools
fi
if [ -n "$for_dev" ]; then
	ensure_dev_tools
fi
if [ -n "$for_bench" ]; then
	ensure_bench_tools
fi
log "PostgreSQL on 127.0.0.1:$PG_PORT and Redis on 127.0.0.1:$REDIS_PORT are ready"
