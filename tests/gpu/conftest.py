"""On a real GPU host only: the test lab gets the host's own GPUs, found with `nvidia-smi -L`."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import TEST_SETTINGS


def discover() -> list[str]:
    """Device lines for lab.yaml: each MIG slice as mig, each GPU without slices as shared (2 users)."""
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    devices, current_gpu, gpu_has_mig = [], None, {}
    for line in out.splitlines():
        gpu = re.match(r"GPU (\d+): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)", line)
        mig = re.search(r"\(UUID: (MIG-[^)]+)\)", line)
        if gpu:
            current_gpu = gpu.group(2)
            gpu_has_mig[current_gpu] = False
        elif mig and current_gpu:
            gpu_has_mig[current_gpu] = True
            devices.append(f"    - {{id: {mig.group(1)}, mode: mig}}")
    devices += [f"    - {{id: {g}, mode: shared, max_users: 2}}" for g, has in gpu_has_mig.items() if not has]
    return devices


def pytest_collection_modifyitems(config, items):
    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
        skip = pytest.mark.skip(reason="no NVIDIA GPU on this host (nvidia-smi -L fails): "
                                       "tests/gpu runs only on a GPU host with the NVIDIA Container Toolkit")
        for item in items:
            if "tests/gpu" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_settings() -> str:
    settings = TEST_SETTINGS.split("gpus:")[0]
    return settings + "gpus:\n  devices:\n" + "\n".join(discover()) + "\n"
