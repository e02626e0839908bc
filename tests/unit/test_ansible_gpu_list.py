"""The Ansible nvidia role's reader of `nvidia-smi -L`: what it writes into gpus.devices."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from hub.settings import SCHEMA


SCRIPT = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "nvidia" / "files" / "gpu-devices.py"

NVIDIA_SMI_L = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5f3c2a1e-0000-1111-2222-333344445555)
  MIG 3g.40gb     Device  0: (UUID: MIG-7a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff)
  MIG 3g.40gb     Device  1: (UUID: MIG-8b2c3d4e-aaaa-bbbb-cccc-ddddeeeeffff)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-6a4d3b2f-0000-1111-2222-333344445555)
"""


def devices(mode, max_users=4, text=NVIDIA_SMI_L):
    out = subprocess.run([sys.executable, str(SCRIPT), mode, str(max_users)], input=text, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_mig_slices_replace_their_gpu_and_whole_gpus_are_shared():
    assert devices("shared", 3) == [
        {"id": "MIG-7a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff", "mode": "mig"},
        {"id": "MIG-8b2c3d4e-aaaa-bbbb-cccc-ddddeeeeffff", "mode": "mig"},
        {"id": "GPU-6a4d3b2f-0000-1111-2222-333344445555", "mode": "shared", "max_users": 3},
    ]


def test_exclusive_mode_and_the_lab_settings_schema_accepts_the_list():
    found = devices("exclusive")
    assert found[-1] == {"id": "GPU-6a4d3b2f-0000-1111-2222-333344445555", "mode": "exclusive"}
    jsonschema.validate({"gpus": {"devices": found}}, SCHEMA)


def test_no_gpu_gives_an_empty_list():
    assert devices("shared", text="") == []
