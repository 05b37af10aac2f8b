#!/bin/sh
# Rollout to connected devices (issue 5 budget: 1,000 devices in <= 10 s when healthy).
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth). Starts the real `reactor-hub serve
# --mqtt-listen` on a fresh database, enrolls REACTOR_ROLLOUT_DEVICES (default 1000)
# simulated agents through POST /api/v1/enroll, connects them through the hub's device
# endpoint, posts a rollout (canary 10, 50 %, 100 %; gate observe REACTOR_ROLLOUT_OBSERVE,
# default 0s) and prints the time from the POST to `completed` (every device applied).
# PROFILE=release (default) or debug.
set -eu
cd "$(dirname "$0")/../.."
PROFILE="${PROFILE:-release}"
FLAG=""
[ "$PROFILE" = "release" ] && FLAG="--release"
uptime
REACTOR_ROLLOUT_DEVICES="${REACTOR_ROLLOUT_DEVICES:-1000}" \
REACTOR_ROLLOUT_OBSERVE="${REACTOR_ROLLOUT_OBSERVE:-0s}" \
  cargo test $FLAG -p reactor-hub --test fleet_rollout rollout_bench -- --ignored --nocapture 2>&1 |
  grep -E "fleet rollout|last device|test result|panicked"
