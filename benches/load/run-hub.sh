#!/usr/bin/env bash
# POST /run of a 3-step pure workflow against a release reactor-hub (issue 4 budget:
# >= 5,000 executions/s on SQLite and on PostgreSQL, with p50/p99 API latency).
# Usage: benches/load/run-hub.sh [postgres://URL]   (DURATION=10s CONNECTIONS=64)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
cargo build --release -p reactor-hub >/dev/null
BIN="$CARGO_TARGET_DIR/release/reactor-hub"
DIR="$(mktemp -d)"
PORT="${PORT:-18093}"
DB=()
FRESH=""
if [ -n "${1:-}" ]; then
    # A database of its own per run: a hub's sealed secrets (the fleet signing key) only open
    # with the secret key of the data folder that created them.
    FRESH="reactor_bench_$$"
    psql "$1" -qc "CREATE DATABASE $FRESH" >/dev/null
    DB=(--database "${1%/*}/$FRESH")
fi
PID=""
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"; [ -z "$FRESH" ] || psql "$1" -qc "DROP DATABASE IF EXISTS $FRESH" >/dev/null' EXIT
export HUB_TOKEN
HUB_TOKEN=$("$BIN" token create --role admin --data "$DIR/data" "${DB[@]}" 2>/dev/null | tail -1)
RUST_LOG=warn "$BIN" serve --data "$DIR/data" "${DB[@]}" --listen "127.0.0.1:$PORT" 2>"$DIR/log" &
PID=$!
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do
    kill -0 "$PID" 2>/dev/null || { echo "reactor-hub exited:" >&2; cat "$DIR/log" >&2; exit 1; }
    sleep 0.1
done
export HUB_WORKFLOW="pure3-$$"
printf 'reactor: 1\nname: %s\nsteps:\n  - id: hot\n    set: { hot: "${{ event.data.temp > 30 && event.data.zone == \\"A\\" }}" }\n  - id: label\n    set: { label: "${{ event.data.zone }}" }\n  - id: n\n    set: { n: "${{ event.data.n }}" }\noutput:\n  hot: "${{ vars.hot }}"\n' "$HUB_WORKFLOW" |
  curl -sf -o /dev/null -H "Authorization: Bearer $HUB_TOKEN" -H 'content-type: application/yaml' \
    --data-binary @- "http://127.0.0.1:$PORT/api/v1/workflows"
wrk -t2 -c"${CONNECTIONS:-64}" -d"${DURATION:-10s}" --latency -s "$here/hub-run.lua" "http://127.0.0.1:$PORT"
grep -E 'VmRSS|VmHWM' "/proc/$PID/status"
