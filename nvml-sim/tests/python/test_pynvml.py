"""NVIDIA's own Python bindings (pynvml, from the nvidia-ml-py package) against the simulated
library named libnvidia-ml.so.1, as issue 12 asks: an NVML client works against it unchanged.

The library comes from GREENSLICE_BIN_DIR (target/debug: deps/libgreenslice_nvml_sim.so).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pynvml")

SCRIPT = textwrap.dedent(
    """
    import json, pynvml as n
    out = {}
    try:
        n.nvmlDeviceGetCount()
    except n.NVMLError as e:
        out["before_init"] = e.value
    n.nvmlInit()
    out["driver"] = n.nvmlSystemGetDriverVersion()
    out["count"] = n.nvmlDeviceGetCount()
    h = n.nvmlDeviceGetHandleByIndex(0)
    out["name"] = n.nvmlDeviceGetName(h)
    out["uuid"] = n.nvmlDeviceGetUUID(h)
    out["by_uuid_same"] = n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(out["uuid"])) == 0
    out["bus"] = n.nvmlDeviceGetPciInfo(h).busId
    out["mem_gib"] = n.nvmlDeviceGetMemoryInfo(h).total >> 30
    out["power_mw"] = n.nvmlDeviceGetPowerUsage(h)
    out["energy_mj"] = n.nvmlDeviceGetTotalEnergyConsumption(h)
    out["mig"] = list(n.nvmlDeviceGetMigMode(h))
    info = n.nvmlDeviceGetGpuInstanceProfileInfo(h, n.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    out["p3_slices"] = info.sliceCount
    out["p3_mem_mib"] = info.memorySizeMB
    out["procs"] = len(n.nvmlDeviceGetComputeRunningProcesses(h))
    try:
        n.nvmlDeviceGetHandleByIndex(99)
    except n.NVMLError as e:
        out["bad_index"] = e.value
    n.nvmlShutdown()
    print(json.dumps(out))
    """
)


def library() -> Path:
    bin_dir = Path(os.environ.get("GREENSLICE_BIN_DIR", "target/debug"))
    for p in (bin_dir / "libgreenslice_nvml_sim.so", bin_dir / "deps" / "libgreenslice_nvml_sim.so"):
        if p.exists():
            return p
    pytest.fail(f"libgreenslice_nvml_sim.so not found under {bin_dir}: build with cargo test --workspace")


def test_pynvml_reads_the_simulated_machine(tmp_path):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy(library(), libdir / "libnvidia-ml.so.1")
    env = dict(
        os.environ,
        LD_LIBRARY_PATH=str(libdir),
        GREENSLICE_NVML_SIM_STATE=str(tmp_path / "machine.state"),
        GREENSLICE_NVML_SIM_MACHINE="dgx-h100",
        GREENSLICE_NVML_SIM_MIG_GPUS="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["before_init"] == 1  # NVML_ERROR_UNINITIALIZED
    assert got["count"] == 8
    assert "H100" in got["name"]
    assert got["uuid"].startswith("GPU-") and got["by_uuid_same"]
    assert got["bus"].startswith("00000000:")
    assert got["mem_gib"] == 80
    assert got["power_mw"] > 0 and got["energy_mj"] >= 0
    assert got["mig"] == [1, 1]  # GPU 0 starts in MIG mode
    assert got["p3_slices"] == 3 and got["p3_mem_mib"] > 39_000
    assert got["procs"] == 0
    assert got["bad_index"] == 2  # NVML_ERROR_INVALID_ARGUMENT
