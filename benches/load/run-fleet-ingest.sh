#!/usr/bin/env bash
# Fleet ingest rate (issue 5 budget: >= 20,000 device events/s stored by the hub).
# Simulated devices (real MQTT clients) send EventBatch frames through the hub's device
# endpoint (`serve --mqtt-listen`) of a release reactor-hub that fleet-load starts; the rate is
# events stored and acked per second, first publish -> last ack, and the database must hold
# every event exactly once afterwards.
# Usage: benches/load/run-fleet-ingest.sh [postgres://URL]
#   DEVICES=100 BATCHES=20 SIZE=100 WINDOW=4 (events = DEVICES x BATCHES x SIZE)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
cargo build --release -p reactor-hub -p reactor-benches --bin reactor-hub --bin fleet-load >/dev/null
DB=()
if [ -n "${1:-}" ]; then DB=(--database "$1"); fi
uptime
"$CARGO_TARGET_DIR/release/fleet-load" ingest "$CARGO_TARGET_DIR/release/reactor-hub" \
  "${DEVICES:-100}" "${BATCHES:-20}" "${SIZE:-100}" --window "${WINDOW:-4}" "${DB[@]}"
