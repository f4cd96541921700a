#!/usr/bin/env bash
# Measures the node agent's footprint: a controller and one agent with 8 simulated GPUs (4 in MIG
# mode) sampling at 1 Hz and sending batches every 5 s, for SECONDS (default 600). Reports the agent's
# resident memory (VmRSS at the end, VmHWM peak) and its CPU time over the window as % of one core.
# Usage: scripts/measure-agent.sh [SECONDS]   (builds release binaries first)
set -euo pipefail
secs="${1:-600}"
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p greenslice-controller -p greenslice-agent
"$target/release/greenslice-controller" --listen 127.0.0.1:0 > /tmp/gs-measure-ctl.out 2>/dev/null &
ctl=$!
trap 'kill $ctl ${agent:-} 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" /tmp/gs-measure-ctl.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' /tmp/gs-measure-ctl.out)
"$target/release/greenslice-agent" --controller "http://$addr" --node measure --backend sim \
  --machine dgx-h100 --mig-gpus 4 2>/dev/null &
agent=$!
sleep 5 # registered, first batch sent
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep "$secs"
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tick="$tick" -v rss="$rss" -v hwm="$hwm" 'BEGIN {
  wall = t1 - t0; cpu = (c1 - c0) / tick;
  printf "agent, 8 simulated GPUs at 1 Hz, %.0f s: RSS %.1f MiB (peak %.1f MiB), CPU %.2f s = %.3f%% of one core\n",
    wall, rss / 1024, hwm / 1024, cpu, 100 * cpu / wall }'
