#!/usr/bin/env bash
# Throughput workload (a) of issue 3: HTTP POST -> rule (temp > 30 and zone == "A") -> JSON
# reply, with durable journaling (every request is one execution committed to redb with
# Durability::Immediate; concurrent requests share group commits).
#
#   cargo build --release -p reactor-agent
#   benches/load/run-http.sh                  # 64 connections, 2 threads, 30 s
#   DURATION=15s CONNECTIONS=64 benches/load/run-http.sh
#   ENROLLED=1 benches/load/run-http.sh       # enrolled in a fleet, offline: summaries to the outbox too
#
# Needs wrk (apt-get install -y wrk) and curl. AGENT overrides the binary
# (default $CARGO_TARGET_DIR/release/reactor-agent, else target/release/reactor-agent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
agent=${AGENT:-${CARGO_TARGET_DIR:-$root/target}/release/reactor-agent}
duration=${DURATION:-30s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
port=${PORT:-18080}
url=http://127.0.0.1:$port

work=$(mktemp -d)
mkdir "$work/workflows"
cp "$here/workflows/rule-http.yaml" "$work/workflows/"
# ENROLLED=1: the agent is enrolled in a fleet whose broker is unreachable (an offline
# device): every finished execution's summary also goes to the outbox, store-and-forward.
if [ "${ENROLLED:-0}" = 1 ]; then
  mkdir -p "$work/data/fleet"
  python3 - "$work/data/fleet/enrollment.json" <<'PY'
import base64, hashlib, json, os, sys
key = os.urandom(32)
device = "bench-offline"
json.dump({
    "protocol_version": 1,
    "device_id": device,
    "broker": {"url": "mqtt://127.0.0.1:1", "client_id": device, "username": device,
               "password": "unused", "topic_prefix": f"reactor/v1/d/{device}/"},
    "bundle_signing_key": {"algorithm": "ed25519", "key_id": hashlib.sha256(key).hexdigest()[:16],
                           "public_key": base64.b64encode(key).decode()},
}, open(sys.argv[1], "w"))
PY
fi
RUST_LOG=${RUST_LOG:-warn} "$agent" run --workflows "$work/workflows" --data "$work/data" \
  --listen "127.0.0.1:$port" 2>"$work/agent.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "$url/healthz" >/dev/null; do
  kill -0 $pid 2>/dev/null || { cat "$work/agent.log"; exit 1; }
  sleep 0.05
done
echo "agent $("$agent" --version 2>/dev/null || true), pid $pid, idle RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
for body in '{"device":"sensor-1","zone":"A","temp":31.5}' '{"device":"sensor-2","zone":"B","temp":22.0}'; do
  echo "POST /rule $body -> $(curl -s -H 'content-type: application/json' -d "$body" "$url/rule")"
done

# The agent's CPU time (user + system, clock ticks) around the run: CPU per request is the
# figure that compares builds on a shared machine, where req/s moves with the other load.
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# Bytes the device holding the data folder wrote during the run (field 7 of the block
# device's stat: 512-byte sectors): the journal's wear on an SD card.
device=$(basename "$(df --output=source "$work" | tail -1)")
sectors() { if [ -r "/sys/class/block/$device/stat" ]; then awk '{print $7}' "/sys/class/block/$device/stat"; else echo 0; fi; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
sectors_before=$(sectors)
cpu_before=$(cpu)
wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$here/rule.lua" "$url" | tee "$work/wrk.out"
cpu_after=$(cpu)
sectors_after=$(sectors)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
ticks=$(getconf CLK_TCK)
awk -v c=$((cpu_after - cpu_before)) -v t="$ticks" -v n="$requests" \
  'BEGIN { printf "agent CPU %.2f s for %d requests = %.1f us per request\n", c / t, n, c / t / n * 1e6 }'
awk -v s=$((sectors_after - sectors_before)) -v n="$requests" -v d="$device" \
  'BEGIN { printf "device %s wrote %.1f MiB = %.0f bytes per request (whole machine)\n", d, s * 512 / 1048576, s * 512 / n }'

echo "RSS now $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status), peak $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
# File-backed RSS is mostly the binary's own code: ~6 MiB for the shipped static release-small
# agent, ~12 MiB for a --release build (the budgets are the shipped agent's).
echo "  of which heap and stacks (RssAnon) $(awk '/RssAnon/ {print $2, $3}' /proc/$pid/status), binary and files (RssFile) $(awk '/RssFile/ {print $2, $3}' /proc/$pid/status)"
echo "journal $(du -h "$work/data/journal.redb" | cut -f1)"
curl -s "$url/metrics" | grep -E '^reactor_(executions_total|http_requests_shed_total|store_commits_total|store_checkpoints_total|store_batches_total)' || true
if [ -s "$work/agent.log" ]; then echo "--- agent log (warnings):"; tail -5 "$work/agent.log"; fi
