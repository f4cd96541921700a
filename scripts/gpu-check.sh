#!/usr/bin/env bash
# Checks greenslice's real NVML path on a machine with an NVIDIA GPU, in one command:
# builds the node agent (release), runs it read-only against NVML for about DURATION seconds and
# prints the inventory, the driver's MIG placements and one sample per interval as JSON lines
# (also saved to OUT), then a short summary. Nothing on the GPU is changed: MIG management is off.
#
# Usage: scripts/gpu-check.sh            (DURATION=30 INTERVAL_MS=1000 OUT=gpu-check.jsonl)
#        AGENT_BIN=path/to/greenslice-agent scripts/gpu-check.sh   (skip the build)
# Exit codes: 0 checked; 2 no NVIDIA driver/GPU here; 3 the agent could not load NVML;
#             other: build or run failure.
set -euo pipefail

DURATION="${DURATION:-30}"
INTERVAL_MS="${INTERVAL_MS:-1000}"
OUT="${OUT:-gpu-check.jsonl}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    local code="$1"
    shift
    echo "gpu-check: $*" >&2
    exit "$code"
}

case "$DURATION$INTERVAL_MS" in
*[!0-9]*) die 64 "DURATION and INTERVAL_MS must be whole numbers" ;;
esac
[ "$INTERVAL_MS" -gt 0 ] || die 64 "INTERVAL_MS must be positive"

# 1. Is there a driver at all? Fail before a long build when clearly not.
have_lib=no
if ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1'; then
    have_lib=yes
fi
for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }}; do
    [ -e "$d/libnvidia-ml.so.1" ] && have_lib=yes
done
if [ "$have_lib" = no ] && [ ! -e /dev/nvidiactl ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    die 2 "no NVIDIA GPU driver found on $(hostname): libnvidia-ml.so.1 is not in the linker \
cache or LD_LIBRARY_PATH, there is no /dev/nvidiactl and no nvidia-smi.
This check needs a machine with an NVIDIA GPU and its driver. Elsewhere, look at the simulator:
  cargo run -p greenslice-agent -- --backend sim --machine dgx-h100 --dump"
fi

# 2. Build.
if [ -z "${AGENT_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || die 1 "cargo not found (install Rust, or set AGENT_BIN)"
    echo "gpu-check: building greenslice-agent (release)..." >&2
    (cd "$ROOT" && cargo build --release -p greenslice-agent --quiet)
    AGENT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/greenslice-agent"
fi
[ -x "$AGENT_BIN" ] || die 1 "agent binary $AGENT_BIN not found"

# 3. Run read-only: an explicit config with MIG management off, whatever the defaults become.
CONFIG="$(mktemp)"
trap 'rm -f "$CONFIG"' EXIT
# MPS supervision off too: a read-only check starts no daemon and leaves compute modes alone.
printf 'backend = "nvml"\n[mig]\nmanage = false\n[mps]\nsupervise = false\n' >"$CONFIG"
SAMPLES=$((DURATION * 1000 / INTERVAL_MS + 1))
echo "gpu-check: sampling NVML for ${DURATION}s (${SAMPLES} samples) into $OUT" >&2
set +e
RUST_LOG="${RUST_LOG:-info}" "$AGENT_BIN" --config "$CONFIG" --dump \
    --samples "$SAMPLES" --interval-ms "$INTERVAL_MS" | tee "$OUT"
rc="${PIPESTATUS[0]}"
set -e
if [ "$rc" -eq 3 ]; then
    die 3 "the agent could not load NVML (see the error above); is the NVIDIA driver loaded?"
fi
[ "$rc" -eq 0 ] || die "$rc" "the agent failed (exit $rc)"

# 4. Summary: per GPU, what was unsupported, power range, and the energy counter against the
#    integral of the power samples (they should agree within a few percent over 30 s).
if command -v python3 >/dev/null 2>&1; then
    python3 - "$OUT" "$INTERVAL_MS" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dt = int(sys.argv[2]) / 1000.0
inv = next(l for l in lines if l["type"] == "inventory")
samples = [l["sample"] for l in lines if l["type"] == "sample"]
print(f"\ngpu-check summary: {len(inv['gpus'])} GPU(s), {len(samples)} samples", file=sys.stderr)
for i, g in enumerate(inv["gpus"]):
    per = [s["gpus"][i] for s in samples if i < len(s["gpus"])]
    power = [p["power_mw"] for p in per if p.get("power_mw") is not None]
    energy = [p["energy_mj"] for p in per if p.get("energy_mj") is not None]
    unsupported = sorted({f for p in per for f in p["unsupported"]})
    line = f"  GPU {g['index']} {g['model']} {g['uuid']} mig={g['mig_enabled']} unsupported={unsupported}"
    if power:
        line += f" power {min(power)/1000:.1f}..{max(power)/1000:.1f} W"
    if len(energy) > 1 and len(power) > 1:
        counted = energy[-1] - energy[0]
        integral = sum(power[1:]) * dt  # mW x s = mJ
        if counted > 0:
            line += f" energy {counted/1000:.1f} J vs power integral {integral/1000:.1f} J ({(integral-counted)/counted:+.1%})"
        else:
            line += " energy counter did not advance (or was reset)"
    print(line, file=sys.stderr)
PY
fi
