#!/usr/bin/env bash
# Throughput workload (b) of issue 3: MQTT QoS 1 in -> rule -> mqtt.publish out, through the
# Mosquitto on 127.0.0.1:1883, durable journaling on.
#
#   cargo build --release -p reactor-agent -p reactor-benches --bin reactor-agent --bin mqtt_load
#   benches/load/run-mqtt.sh              # 100,000 messages
#   COUNT=300000 benches/load/run-mqtt.sh
#   SESSIONS=8 benches/load/run-mqtt.sh   # the trigger's `sessions:` (default 4, the fastest on 2 cores; 1 = one session)
#   SUBJECT=echo benches/load/run-mqtt.sh # the reference: a bare relay (`mqtt_load echo`) in the agent's place
#   BROKER_PORT=1884 benches/load/run-mqtt.sh # another broker on 127.0.0.1 (its CPU is whichever process listens there)
#   BROKER=tuned benches/load/run-mqtt.sh # a private Mosquitto with a wider in-flight window (BROKER_INFLIGHT, default 100)
#
# Needs an agent with the mqtt trigger wired in (workflow benches/load/workflows/rule-mqtt.yaml).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
agent=${AGENT:-$target/release/reactor-agent}
load=${LOAD:-$target/release/mqtt_load}
count=${COUNT:-100000}
window=${WINDOW:-500}
port=${PORT:-18081}
# The broker: the machine's Mosquitto by default; BROKER_PORT points the run at another one.
# BROKER=tuned starts a private Mosquitto for the run (port BROKER_PORT, default 1884) with
# deploy/mosquitto/reactor.conf's window: max_inflight_messages BROKER_INFLIGHT (default 100,
# 0 = no limit) instead of the default 20.
broker=${BROKER:-machine}
if [ "$broker" = tuned ]; then broker_port=${BROKER_PORT:-1884}; else broker_port=${BROKER_PORT:-1883}; fi

work=$(mktemp -d)
broker_pid_started=
if [ "$broker" = tuned ]; then
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages %s\nmax_queued_messages 10000\n' \
    "$broker_port" "${BROKER_INFLIGHT:-100}" >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  broker_pid_started=$!
  until ss -ltnH "sport = :$broker_port" | grep -q LISTEN; do
    kill -0 $broker_pid_started 2>/dev/null || { cat "$work/mosquitto.log"; exit 1; }
    sleep 0.05
  done
  echo "private Mosquitto on $broker_port, max_inflight_messages ${BROKER_INFLIGHT:-100}"
fi
stop_broker() {
  if [ -n "$broker_pid_started" ]; then kill $broker_pid_started 2>/dev/null; wait $broker_pid_started 2>/dev/null || true; fi
  return 0
}
mkdir "$work/workflows"
sessions=${SESSIONS:-4}
# The trigger's parallel broker sessions (shared subscription; docs/triggers.md).
sed -e "s|qos: 1, broker:|qos: 1, sessions: $sessions, broker:|" \
  -e "s|mqtt://127.0.0.1:1883|mqtt://127.0.0.1:$broker_port|" "$here/workflows/rule-mqtt.yaml" \
  >"$work/workflows/rule-mqtt.yaml"
grep -q "sessions: $sessions" "$work/workflows/rule-mqtt.yaml" || { echo "could not set sessions" >&2; exit 1; }
echo "${SUBJECT:-agent}, trigger sessions: $sessions"
subject=${SUBJECT:-agent}
if [ "$subject" = echo ]; then
  # The reference: the same rule and reply from a bare relay (no engine, no journal), on the
  # same broker and cores (`mqtt_load echo`).
  "$load" echo 127.0.0.1 "$broker_port" "$sessions" 2>"$work/agent.log" &
  pid=$!
  finish() {
    kill $pid 2>/dev/null
    wait $pid 2>/dev/null || true # killed: not an error
    stop_broker
    rm -rf "$work"
  }
  trap finish EXIT
  sleep 0.5 # its subscriptions
  kill -0 $pid 2>/dev/null || { cat "$work/agent.log"; exit 1; }
else
# A new device id per run: the trigger's persistent session (client id from the device id)
# would otherwise receive what an earlier run left queued at the broker.
# The trigger logs its client ids at info; after the run they are cleared at the broker
# (`mqtt_load clear`), so runs do not leave persistent sessions behind.
REACTOR_DEVICE__ID=bench-$$ RUST_LOG=${RUST_LOG:-warn,reactor_core::mqtt::trigger=info} "$agent" run --workflows "$work/workflows" --data "$work/data" \
  --listen "127.0.0.1:$port" 2>"$work/agent.log" &
pid=$!
finish() {
  kill $pid 2>/dev/null
  wait $pid 2>/dev/null || true
  mapfile -t ids < <(grep -o 'client_id=[^ ]*' "$work/agent.log" | cut -d= -f2 | tr -d '"' | sort -u)
  if [ ${#ids[@]} -gt 0 ]; then
    "$load" clear 127.0.0.1 "$broker_port" "${ids[@]}" || echo "could not clear the trigger's sessions: ${ids[*]}" >&2
  fi
  stop_broker
  rm -rf "$work"
}
trap finish EXIT
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
  kill -0 $pid 2>/dev/null || { cat "$work/agent.log"; exit 1; }
  sleep 0.05
done
fi
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# The broker's process: whichever listens on the broker port.
broker_pid=$(ss -ltnpH "sport = :$broker_port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
broker_cpu() { awk '{print $14 + $15}' "/proc/$broker_pid/stat" 2>/dev/null || echo 0; }
# CPU ticks per thread name (tokio workers, reactor-store, …) summed over threads of a name.
threads() {
  for t in /proc/$pid/task/*; do
    echo "$(tr ' ' _ <"$t/comm" 2>/dev/null) $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null)"
  done | awk 'NF == 2 { a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_before=$(cpu); broker_before=$(broker_cpu); threads >"$work/threads-before"
# The load generator's own CPU (user + system seconds), from bash's `time`.
TIMEFORMAT='%U %S'
{ time "$load" "$count" 127.0.0.1 "$broker_port" "$window" 2>&1; } 2>"$work/load-time"
cpu_after=$(cpu); broker_after=$(broker_cpu); threads >"$work/threads-after"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
ticks=$(getconf CLK_TCK)
load_cpu=$(awk 'NF == 2 { print $1 + $2 }' "$work/load-time" | tail -1)
awk -v c=$((cpu_after - cpu_before)) -v b=$((broker_after - broker_before)) -v l="$load_cpu" -v t="$ticks" -v n="$count" \
  'BEGIN { printf "CPU per message: '"$subject"' %.1f us, mosquitto %.1f us, load generator %.1f us ('"$subject"' %.2f s, broker %.2f s, incl. the quiet wait)\n", c / t / n * 1e6, b / t / n * 1e6, l / n * 1e6, c / t, b / t
           printf "  all three: %.1f us per message, so 2 cores top out near %.0f msg/s\n", (c / t + b / t + l) / n * 1e6, 2 * n / (c / t + b / t + l) }'
echo "agent CPU by thread (us per message):"
join -a 2 "$work/threads-before" "$work/threads-after" | awk -v t="$ticks" -v n="$count" \
  'NF == 3 { d = $3 - $2 } NF == 2 { d = $2 } d > 0 { printf "  %-18s %.1f\n", $1, d / t / n * 1e6 }'
[ "$subject" = echo ] && exit 0
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^reactor_(executions_total|trigger_events_total|trigger_errors_total|store_commits_total|store_batches_total)' || true
echo "agent RSS now $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status), peak $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
# File-backed RSS is mostly the binary's own code: ~6 MiB for the shipped static release-small
# agent, ~12 MiB for a --release build (the budgets are the shipped agent's).
echo "  of which heap and stacks (RssAnon) $(awk '/RssAnon/ {print $2, $3}' /proc/$pid/status), binary and files (RssFile) $(awk '/RssFile/ {print $2, $3}' /proc/$pid/status)"
if grep -qv ' INFO ' "$work/agent.log" 2>/dev/null; then echo "--- agent log:"; grep -v ' INFO ' "$work/agent.log" | tail -5; fi
