#!/usr/bin/env bash
# Measures the node agent's footprint: a controller and one agent with 8 simulated GPUs (4 in MIG
# mode) sampling at 1 Hz and sending batches every 5 s, for SECONDS (default 600). Reports the agent's
# resident memory (VmRSS at the end, VmHWM peak) and its CPU time over the window as % of one core.
# Usage: scripts/measure-agent.sh [SECONDS] [sim|nvml]   (builds the binaries first)
#   sim:  the in-process simulator backend (default).
#   nvml: the NVML backend on the simulated machine's library (libgreenslice_nvml_sim.so), its
#         state in a temporary file: the real NVML code path, many NVML calls per sample.
# PROFILE=debug measures debug builds (default release).
set -euo pipefail
secs="${1:-600}"
backend="${2:-sim}"
profile="${PROFILE:-release}"
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
flag=(--release); [ "$profile" = debug ] && flag=()
case "$backend" in
  sim) cargo build "${flag[@]}" -q -p greenslice-controller -p greenslice-agent ;;
  nvml) cargo build "${flag[@]}" -q -p greenslice-controller -p greenslice-agent -p nvml-sim -p gpu-sim ;;
  *) echo "backend must be sim or nvml, got $backend" >&2; exit 2 ;;
esac
bin="$target/$profile"
tmp=$(mktemp -d)
"$bin/greenslice-controller" --listen 127.0.0.1:0 --insecure --data-dir "$tmp/ctl" > "$tmp/ctl.out" 2>/dev/null &
ctl=$!
trap 'kill $ctl ${agent:-} 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$tmp/ctl.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$tmp/ctl.out")
if [ "$backend" = nvml ]; then
  "$bin/greenslice-gpu-sim" --state "$tmp/machine.json" --machine dgx-h100 --gpus 8 --mig-gpus 4 state > /dev/null
  GREENSLICE_NVML_SIM_STATE="$tmp/machine.json" "$bin/greenslice-agent" --controller "http://$addr" \
    --node measure --backend nvml --nvml-library "$bin/libgreenslice_nvml_sim.so" 2>/dev/null &
else
  "$bin/greenslice-agent" --controller "http://$addr" --node measure --backend sim \
    --machine dgx-h100 --mig-gpus 4 2>/dev/null &
fi
agent=$!
sleep 5 # registered, first batch sent
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep "$secs"
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tick="$tick" -v rss="$rss" -v hwm="$hwm" \
    -v backend="$backend" -v profile="$profile" 'BEGIN {
  wall = t1 - t0; cpu = (c1 - c0) / tick;
  printf "agent (%s backend, %s build), 8 simulated GPUs at 1 Hz, %.0f s: RSS %.1f MiB (peak %.1f MiB), CPU %.2f s = %.3f%% of one core\n",
    backend, profile, wall, rss / 1024, hwm / 1024, cpu, 100 * cpu / wall }'
