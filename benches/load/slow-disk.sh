#!/usr/bin/env bash
# Runs the agent as if its journal sat on an SD card: every fdatasync/fsync returns
# SLOW_FSYNC_US microseconds late (default 5000), through strace's fault injection (the
# write itself is unchanged). A drop-in AGENT for the load scripts:
#
#   SLOW_AGENT=$CARGO_TARGET_DIR/release/reactor-agent AGENT=benches/load/slow-disk.sh \
#     SESSIONS=1 COUNT=10000 benches/load/run-mqtt.sh
#
# The CPU and RSS figures the load scripts print are then this wrapper's (its pid is the one
# they see), not the agent's; the messages per second are what this is for. Needs strace (apt-get install strace).
set -euo pipefail
command -v strace >/dev/null || { echo "slow-disk.sh needs strace (apt-get install strace)" >&2; exit 2; }
agent=${SLOW_AGENT:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}/release/reactor-agent}
strace -f -qq --seccomp-bpf -o /dev/null -e trace=fdatasync,fsync \
  -e inject=fdatasync,fsync:delay_exit="${SLOW_FSYNC_US:-5000}" "$agent" "$@" &
tracer=$!
# The load scripts stop their subject with SIGTERM: pass it to the agent, not to strace
# (which would detach and leave the agent running).
trap 'pkill -TERM -P $tracer; wait $tracer' TERM INT
wait $tracer
