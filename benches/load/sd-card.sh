#!/usr/bin/env bash
# Runs the agent as if its data folder sat on an SD card: the block device under the data
# folder accepts at most SD_WRITE_IOPS writes per second (default 200, the random-write class
# of an A1 card) from the agent, through the kernel's block I/O throttle (a cgroup: v2 io.max,
# or v1 blkio.throttle.write_iops_device). Unlike slow-disk.sh, which delays each sync by a
# fixed time, a commit then costs in proportion to the writes it makes: the number that
# separates a journal that writes scattered pages from one that appends. A drop-in AGENT:
#
#   SD_AGENT=$CARGO_TARGET_DIR/release/reactor-agent AGENT=benches/load/sd-card.sh \
#     CONNECTIONS=8 DURATION=8s benches/load/run-http.sh
#
# Needs root (it creates the cgroup /reactor-sd-card and moves the agent into it). The CPU and
# RSS figures the load scripts print are this wrapper's, not the agent's; requests per second
# and latency are what this is for.
set -euo pipefail
agent=${SD_AGENT:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}/release/reactor-agent}
iops=${SD_WRITE_IOPS:-200}

# The data folder is the argument after --data.
data=
previous=
for arg in "$@"; do
  if [ "$previous" = --data ]; then data=$arg; fi
  previous=$arg
done
[ -n "$data" ] || { echo "sd-card.sh: no --data argument" >&2; exit 2; }
mkdir -p "$data"
source=$(df --output=source "$data" | tail -1)
# A partition's throttle is set on its disk: the device whose slaves include it, else itself.
name=$(basename "$(readlink -f "$source")")
if [ -e "/sys/class/block/$name/partition" ]; then
  name=$(basename "$(dirname "$(readlink -f "/sys/class/block/$name")")")
fi
device=$(cat "/sys/class/block/$name/dev")

if [ -d /sys/fs/cgroup/blkio ]; then
  group=/sys/fs/cgroup/blkio/reactor-sd-card
  mkdir -p "$group"
  echo "$device $iops" >"$group/blkio.throttle.write_iops_device"
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  group=/sys/fs/cgroup/reactor-sd-card
  grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io >/sys/fs/cgroup/cgroup.subtree_control
  mkdir -p "$group"
  echo "$device wiops=$iops" >"$group/io.max"
else
  echo "sd-card.sh: no block I/O cgroup controller here" >&2
  exit 2
fi
echo "sd-card.sh: device $device ($name), at most $iops writes/s for the agent" >&2
# Move this shell into the group; the agent, started next, inherits it.
echo $$ >"$group/cgroup.procs"
"$agent" "$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child' TERM INT
wait $child
