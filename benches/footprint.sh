#!/usr/bin/env bash
# Footprint of the edge agent (issue 3, "Footprint"): builds the static x86_64 release-small
# reactor-agent and measures
#   - binary size                        budget <= 8 MiB
#   - static linking (file, ldd)
#   - start to GET /healthz 200          budget <= 50 ms (median of N starts)
#   - idle RSS, 10 workflows loaded      budget <= 10 MiB (VmRSS after 2 s idle)
# with the 10 workflows of benches/footprint/workflows (http, cron, file and mqtt triggers).
#
#   benches/footprint.sh                 build, measure, print; exit 1 if a budget is missed
#   FOOTPRINT_STARTS=20                  number of starts for the median (default 10)
#   FOOTPRINT_NO_BUILD=1 FOOTPRINT_BIN=… measure an existing binary
#   FOOTPRINT_RUSTFLAGS="…"              extra rustflags for an experiment (rebuilds)
#
# The shipped x86_64 build:
#   RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static
#              -C link-arg=-Wl,--icf=all"
# - a plain static executable, not a static PIE: a PIE carries ~45,000 relocations
#   (.rela.dyn, 1.09 MB) and applies them at every start; the cost is ASLR of the agent's own
#   image (stack, heap and mmap are still randomised);
# - identical code folding in the linker (rust-lld is the default linker for this target).
# docs/performance.md "Footprint" has the figures.
#
# Needs python3 (the start-time client: it polls /healthz every 0.5 ms with a raw socket, so
# the figure is not dominated by spawning curl). The mqtt fixtures expect Mosquitto on
# 127.0.0.1:1883 (scripts/services starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reactor/target}"
TARGET=x86_64-unknown-linux-gnu
PROFILE=release-small
STARTS="${FOOTPRINT_STARTS:-10}"
BIN="${FOOTPRINT_BIN:-$CARGO_TARGET_DIR/$TARGET/$PROFILE/reactor-agent}"
FLOWS="$REPO/benches/footprint/workflows"
SIZE_BUDGET=$((8 * 1024 * 1024))
RSS_BUDGET_KIB=$((10 * 1024))
START_BUDGET_MS=50

RUSTFLAGS_SMALL="-C target-feature=+crt-static -C relocation-model=static -C link-arg=-Wl,--icf=all ${FOOTPRINT_RUSTFLAGS:-}"
if [ "${FOOTPRINT_NO_BUILD:-0}" != 1 ]; then
    echo "== build: RUSTFLAGS=\"$RUSTFLAGS_SMALL\" cargo build --locked --profile $PROFILE -p reactor-agent --target $TARGET"
    RUSTFLAGS="$RUSTFLAGS_SMALL" \
        cargo build --locked --profile "$PROFILE" -p reactor-agent --target "$TARGET"
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

# The file triggers watch these folders; a missing one keeps /healthz at 503.
mkdir -p /tmp/reactor-footprint/spool /tmp/reactor-footprint/conf
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    echo "warning: nothing listens on 127.0.0.1:1883 (Mosquitto); the mqtt fixtures cannot connect" >&2
fi

"$BIN" validate "$FLOWS" >/dev/null

failed=0
verdict() { # verdict OK? TEXT
    if [ "$1" = 1 ]; then echo "ok    $2"; else echo "MISS  $2"; failed=1; fi
}

echo
echo "== binary: $BIN"
size=$(stat -c %s "$BIN")
file_desc=$(file -b "$BIN")
ldd_out=$(ldd "$BIN" 2>&1 || true)
echo "file: $file_desc"
echo "ldd:  $ldd_out"
static=0
case "$file_desc" in *"statically linked"* | *"static-pie linked"*) static=1 ;; esac

echo
echo "== start to /healthz 200 and idle RSS ($STARTS starts, $(ls "$FLOWS" | wc -l) workflows)"
results=$(python3 - "$BIN" "$FLOWS" "$STARTS" <<'PY'
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

binary, flows, starts = sys.argv[1], sys.argv[2], int(sys.argv[3])

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def healthz(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False

def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields

def start(data):
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "run", "--workflows", flows, "--data", data, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not healthz(port):
        if proc.poll() is not None:
            sys.exit("agent exited: " + proc.stderr.read().decode())
        if time.perf_counter() - t0 > 10:
            proc.kill()
            sys.exit("no /healthz 200 within 10 s")
        time.sleep(0.0005)
    return proc, (time.perf_counter() - t0) * 1000

def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)

root = tempfile.mkdtemp(prefix="reactor-footprint-")
try:
    cold, warm = [], []
    warm_data = os.path.join(root, "warm")
    for i in range(starts):
        proc, ms = start(os.path.join(root, f"cold-{i}"))   # a new data folder: journal created
        cold.append(ms)
        stop(proc)
        proc, ms = start(warm_data)                          # restart on an existing journal
        warm.append(ms)
        stop(proc)
    proc, _ = start(warm_data)
    time.sleep(2)
    st = status(proc.pid)
    # The idle RSS counts with the mqtt triggers connected: count the agent's broker links.
    try:
        ss = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :1883 )"],
                            capture_output=True, text=True).stdout
        mqtt_links = sum(1 for line in ss.splitlines() if f"pid={proc.pid}," in line)
    except OSError:
        mqtt_links = -1
    stop(proc)
    print(json.dumps({
        "cold_median_ms": statistics.median(cold), "cold_max_ms": max(cold),
        "warm_median_ms": statistics.median(warm), "warm_max_ms": max(warm),
        "vmrss_kib": int(st["VmRSS"].split()[0]), "vmhwm_kib": int(st["VmHWM"].split()[0]),
        "threads": int(st["Threads"]), "mqtt_links": mqtt_links,
    }))
finally:
    shutil.rmtree(root, ignore_errors=True)
PY
)
field() { printf '%s' "$results" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
cold=$(field cold_median_ms); cold_max=$(field cold_max_ms)
warm=$(field warm_median_ms); warm_max=$(field warm_max_ms)
rss=$(field vmrss_kib); hwm=$(field vmhwm_kib); threads=$(field threads)
mqtt_links=$(field mqtt_links)

# Start costs: durable syncs of one start on an existing data folder (each is a disk flush).
syncs="strace not installed"
if command -v strace >/dev/null; then
    sdata=$(mktemp -d)
    sport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    for round in cold warm; do
        strace -f -qq -c -e trace=fsync,fdatasync,sync_file_range -o "$sdata/strace-$round" \
            "$BIN" run --workflows "$FLOWS" --data "$sdata/data" --listen "127.0.0.1:$sport" 2>/dev/null &
        spid=$!
        for _ in $(seq 1 400); do
            curl -fs "http://127.0.0.1:$sport/healthz" >/dev/null 2>&1 && break
            sleep 0.025
        done
        # SIGTERM the agent (strace's child), then strace ends with it.
        for child in $(pgrep -P "$spid"); do kill -TERM "$child"; done
        wait "$spid" 2>/dev/null || true
    done
    count() { awk '$NF ~ /^(fsync|fdatasync|sync_file_range)$/ { n += $4 } END { print n + 0 }' "$1"; }
    syncs="$(count "$sdata/strace-cold") on a new data folder, $(count "$sdata/strace-warm") on an existing one (start to SIGTERM, strace -c)"
    rm -rf "$sdata"
fi

echo
echo "== Footprint ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m))"
mib() { awk -v k="$1" -v d="$2" 'BEGIN { printf "%.2f MiB", k / d }'; }
verdict "$([ "$size" -le "$SIZE_BUDGET" ] && echo 1)" \
    "binary size: $size bytes ($(mib "$size" 1048576)), budget 8 MiB"
verdict "$static" "statically linked"
verdict "$(awk -v a="$warm" -v b="$cold" -v m="$START_BUDGET_MS" 'BEGIN { print (a <= m && b <= m) ? 1 : 0 }')" \
    "start to /healthz 200: median $(printf '%.1f' "$warm") ms (max $(printf '%.1f' "$warm_max")) on an existing data folder, $(printf '%.1f' "$cold") ms (max $(printf '%.1f' "$cold_max")) on a new one; budget $START_BUDGET_MS ms"
verdict "$([ "$rss" -le "$RSS_BUDGET_KIB" ] && echo 1)" \
    "idle RSS, 10 workflows, 2 s idle: VmRSS $rss KiB ($(mib "$rss" 1024)), peak VmHWM $hwm KiB, $threads threads, $mqtt_links MQTT connections up; budget 10 MiB"
echo "      journal syncs per start: $syncs"
exit "$failed"
