#!/bin/sh
# Agent outbox drain after reconnect (issue 5 budget: >= 5,000 events/s).
# Needs Mosquitto on 127.0.0.1:1883. Pre-fills the agent's outbox with REACTOR_DRAIN_EVENTS
# events (default 20000), starts the release agent with the broker down, brings it up and
# prints the drain rate measured at the hub stand-in (first batch received -> last acked).
set -eu
cd "$(dirname "$0")/../.."
REACTOR_DRAIN_EVENTS="${REACTOR_DRAIN_EVENTS:-20000}" \
  cargo test --release -p reactor-agent --test fleet_drain -- --ignored --nocapture 2>&1 |
  grep -E "fleet drain|test result|panicked"
