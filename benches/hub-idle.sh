#!/usr/bin/env bash
# Idle RSS of a release reactor-hub on SQLite with 8 workflows (http + cron triggers each).
# Usage: benches/hub-idle.sh   (builds the release hub first)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
cargo build --release -p reactor-hub >/dev/null
BIN="$CARGO_TARGET_DIR/release/reactor-hub"
DIR="$(mktemp -d)"
PORT="${PORT:-18092}"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
TOKEN=$("$BIN" token create --role admin --data "$DIR/data" 2>/dev/null | tail -1)
RUST_LOG=warn "$BIN" serve --data "$DIR/data" --listen "127.0.0.1:$PORT" 2>"$DIR/log" &
PID=$!
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do sleep 0.1; done
for i in 1 2 3 4 5 6 7 8; do
  printf 'reactor: 1\nname: idle%s\ntriggers:\n  - http: { path: /hooks/idle%s, auth: none }\n  - cron: { schedule: "0 0 * * * *" }\nsteps:\n  - id: s\n    action: log\n    with: { message: hi }\n' "$i" "$i" |
    curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'content-type: application/yaml' \
      --data-binary @- "http://127.0.0.1:$PORT/api/v1/workflows"
done
sleep 10
echo "binary: $(stat -c %s "$BIN") bytes"
echo "workflows: $(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/workflows" | grep -o '"name"' | wc -l)"
grep -E 'VmRSS|VmHWM' "/proc/$PID/status"
