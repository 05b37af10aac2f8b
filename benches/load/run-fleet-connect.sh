#!/usr/bin/env bash
# Device connections held by one hub (issue 5 budget: >= 10,000), connect rate and memory per
# connection (hub RSS delta / N). fleet-load starts a release reactor-hub with
# `serve --mqtt-listen` (SQLite), connects DEVICES real MQTT clients through the device
# endpoint (RAMP handshakes at once), holds them HOLD seconds and checks the registry shows
# them all online.
# Usage: benches/load/run-fleet-connect.sh   (DEVICES=10000 RAMP=256 HOLD=5)
# Each device costs the hub 1 descriptor (the gateway terminates device sessions) and the
# fleet-load process 1 (its client socket): both raise their soft RLIMIT_NOFILE to the hard
# limit, which must be >= DEVICES + ~600 (20,000 here: fine for 10,000 devices in one
# fleet-load process; see docs/fleet.md, "Connections and scale").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
cargo build --release -p reactor-hub -p reactor-benches --bin reactor-hub --bin fleet-load >/dev/null
echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
uptime
"$CARGO_TARGET_DIR/release/fleet-load" connect "$CARGO_TARGET_DIR/release/reactor-hub" \
  "${DEVICES:-10000}" --ramp "${RAMP:-256}" --hold "${HOLD:-5}"
