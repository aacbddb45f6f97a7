#!/usr/bin/env bash
# The GraphQL fuzz run: schemathesis (pinned in requirements.txt, installed
# into tests/fuzz/.venv) sends generated queries and mutations, valid and
# invalid, to a fresh `toolhub serve` for a bounded time, with generators for
# the schema's custom scalars (hooks.py). It passes when no response is a 5xx
# or carries an error coded INTERNAL or without a known code, nothing in the
# server's log panicked, and /health/ready still answers 200 afterwards.
#
# It runs on the embedded SQLite database, and, when DATABASE_URL is set
# (postgres://…, a role that may create databases), on PostgreSQL too, in a
# database made for the run and dropped after it.
#
#   bash tests/fuzz/run.sh                  # 60 s on each backend
#   FUZZ_SECONDS=600 bash tests/fuzz/run.sh # longer
#   FUZZ_SEED=1234 bash tests/fuzz/run.sh   # replay the seed a run printed
#   TOOLHUB_BIN=target/release/toolhub bash tests/fuzz/run.sh  # no build
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
FUZZ=$ROOT/tests/fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
VENV=${FUZZ_VENV:-$FUZZ/.venv}

log() { printf '\n== fuzz: %s\n' "$*"; }
fail() {
  printf '\nfuzz: FAILED: %s\n' "$*" >&2
  exit 1
}

case $FUZZ_SECONDS in
  '' | *[!0-9]* | 0) fail "FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'" ;;
esac
for tool in python3 curl timeout; do
  command -v "$tool" >/dev/null || fail "$tool is needed"
done

# Everything the run makes, and how to undo it, whichever way it ends.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/toolhub-fuzz.XXXXXX")
SERVER_PID=
PG_ADMIN_URL=
PG_DATABASE=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
drop_database() {
  if [ -n "$PG_DATABASE" ]; then
    psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$PG_DATABASE\" WITH (FORCE)" >/dev/null || true
    PG_DATABASE=
  fi
}
cleanup() {
  stop_server
  drop_database
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the tools ---------------------------------------------------------------

# The virtual environment is made again whenever requirements.txt changes.
if ! cmp -s "$FUZZ/requirements.txt" "$VENV/requirements.installed" 2>/dev/null; then
  log "installing schemathesis into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$FUZZ/requirements.txt"
  "$VENV/bin/pip" check --disable-pip-version-check >/dev/null
  cp "$FUZZ/requirements.txt" "$VENV/requirements.installed"
fi
"$VENV/bin/schemathesis" --version

if [ -z "${TOOLHUB_BIN:-}" ]; then
  log "cargo build --bin toolhub"
  cargo build --quiet --bin toolhub
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  TOOLHUB_BIN=$TARGET_DIR/debug/toolhub
fi
[ -x "$TOOLHUB_BIN" ] || fail "no toolhub binary at $TOOLHUB_BIN"
TOOLHUB_BIN=$(cd "$(dirname "$TOOLHUB_BIN")" && pwd)/$(basename "$TOOLHUB_BIN")

# --- one run -----------------------------------------------------------------

# The server's settings for the run: its own secret and data directory, no
# rate limits (the fuzzer is one very busy caller), and no periodic MCP
# health check, which would start the stdio servers the fuzzer registers.
export TOOLHUB_JWT_SECRET
TOOLHUB_JWT_SECRET=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')
export TOOLHUB_ENV=development
export TOOLHUB_RATE_LIMIT_SUBJECT=off
export TOOLHUB_RATE_LIMIT_ADDRESS=off
export TOOLHUB_MCP_HEALTH_INTERVAL=30d
export TOOLHUB_LISTEN=127.0.0.1:0
export TOOLHUB_LOG=${TOOLHUB_LOG:-info}
export NO_COLOR=1
unset TOOLHUB_GRAPHQL_INTROSPECTION TOOLHUB_HTTP_ALLOW

# fuzz NAME DATABASE_URL: serve on that database (empty: the embedded SQLite
# file), fuzz it, then check the log and readiness.
fuzz() {
  local name=$1 database_url=$2
  local dir=$WORK/$name
  local server_log=$dir/server.log
  mkdir -p "$dir/data"
  log "$name: starting toolhub serve"
  # The server runs in its own directory: nothing it does lands in the
  # repository.
  (
    cd "$dir"
    export TOOLHUB_DATA_DIR=$dir/data
    if [ -n "$database_url" ]; then export DATABASE_URL=$database_url; else unset DATABASE_URL; fi
    exec "$TOOLHUB_BIN" serve
  ) >"$server_log" 2>&1 &
  SERVER_PID=$!

  local addr=
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening.*addr=\([0-9.:]*\).*/\1/p' "$server_log" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || {
      cat "$server_log" >&2
      fail "$name: toolhub serve exited before listening"
    }
    sleep 0.1
  done
  [ -n "$addr" ] || {
    cat "$server_log" >&2
    fail "$name: toolhub serve did not listen within 60 s"
  }
  local base=http://$addr
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$base/health/ready" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "$base/health/ready" || fail "$name: $base/health/ready never answered 200"

  local token
  token=$(TOOLHUB_DATA_DIR=$dir/data "$TOOLHUB_BIN" token --sub fuzz --org fuzz --role admin --ttl 1h)

  # The schema as this binary prints it: the standard introspection query
  # (type depth 9) is deeper than the service's depth limit.
  "$TOOLHUB_BIN" schema >"$dir/schema.graphql"

  log "$name: schemathesis on $base/graphql for ${FUZZ_SECONDS}s"
  local seed=()
  [ -n "${FUZZ_SEED:-}" ] && seed=(--seed "$FUZZ_SEED")
  local status=0
  # Only the checks in hooks.py: schemathesis's own GraphQL checks count
  # every error with a `path` (NOT_FOUND, VALIDATION, …) as a server fault.
  # The outer timeout bounds a run that hangs; --max-time is the budget.
  (
    cd "$dir"
    SCHEMATHESIS_HOOKS=$FUZZ/hooks.py timeout --kill-after=15 $((FUZZ_SECONDS * 2 + 120)) \
      "$VENV/bin/schemathesis" run "$dir/schema.graphql" --url "$base/graphql" \
      --header "Authorization: Bearer $token" \
      --checks no_server_error,no_internal_error,every_error_has_a_known_code \
      --mode all \
      --phases fuzzing \
      --max-time "$FUZZ_SECONDS" \
      --workers 2 \
      --request-timeout 60 \
      --suppress-health-check all \
      --generation-database none \
      --output-sanitize false \
      --no-color \
      "${seed[@]}"
  ) || status=$?

  local problems=()
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    problems+=("schemathesis did not finish within $((FUZZ_SECONDS * 2 + 120)) s")
  elif [ "$status" -ne 0 ]; then
    problems+=("schemathesis found failures (exit status $status): the reproducing requests are above")
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    problems+=("toolhub serve is no longer running")
  elif ! curl -fsS -o /dev/null "$base/health/ready"; then
    problems+=("$base/health/ready does not answer 200 after the run: $(curl -sS "$base/health/ready" || true)")
  fi
  local crash='panicked|overflowed its stack|fatal runtime error'
  if grep -Eq "$crash" "$server_log"; then
    problems+=("the server's log has a panic or a crash")
    grep -En -B2 -A10 "$crash" "$server_log" | head -n 80 >&2
  fi
  if grep -q 'internal error' "$server_log"; then
    # What an INTERNAL answer hid from the client, by its request id.
    echo "-- internal errors in the server's log ($name):" >&2
    grep 'internal error' "$server_log" | head -n 20 >&2
  fi
  stop_server
  if [ "${#problems[@]}" -gt 0 ]; then
    echo "-- the last lines of the server's log ($name):" >&2
    tail -n 40 "$server_log" >&2
    local problem
    for problem in "${problems[@]}"; do printf 'fuzz: %s: %s\n' "$name" "$problem" >&2; done
    fail "$name"
  fi
  log "$name: passed"
}

fuzz sqlite ""

if [ -n "${DATABASE_URL:-}" ]; then
  command -v psql >/dev/null || fail "psql is needed for the PostgreSQL run (DATABASE_URL is set)"
  PG_ADMIN_URL=$DATABASE_URL
  PG_DATABASE=toolhub_fuzz_$$_$RANDOM
  psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null ||
    fail "could not create a database through DATABASE_URL (is PostgreSQL running? see README)"
  fuzz postgres "$("$VENV/bin/python" - "$PG_ADMIN_URL" "$PG_DATABASE" <<'EOF'
import sys
from urllib.parse import urlsplit, urlunsplit
url, database = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
print(urlunsplit(parts._replace(path="/" + database)))
EOF
)"
  drop_database
fi

log "passed"
