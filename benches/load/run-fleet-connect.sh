#!/usr/bin/env bash
# Device connections held by one hub (issue 5 budget: >= 10,000), connect rate and memory per
# connection (hub RSS delta / N). fleet-load starts a release reactor-hub with
# `serve --mqtt-listen` (SQLite), connects DEVICES real MQTT clients through the device
# endpoint (RAMP handshakes at once), holds them HOLD seconds and checks the registry shows
# them all online.
# Usage: benches/load/run-fleet-connect.sh   (DEVICES=10000 RAMP=256 HOLD=5)
# Each device costs the hub 3 descriptors (device socket, gateway->broker, broker side):
# the hub raises its soft RLIMIT_NOFILE to the hard limit; `ulimit -Hn` must be >= 3 x DEVICES
# + 100, or connections beyond it fail (see docs/fleet.md, "Connections").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
cargo build --release -p reactor-hub -p reactor-benches --bin reactor-hub --bin fleet-load >/dev/null
echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
uptime
"$CARGO_TARGET_DIR/release/fleet-load" connect "$CARGO_TARGET_DIR/release/reactor-hub" \
  "${DEVICES:-10000}" --ramp "${RAMP:-256}" --hold "${HOLD:-5}"
