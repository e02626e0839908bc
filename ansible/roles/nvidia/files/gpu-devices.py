#!/usr/bin/env python3
"""Read `nvidia-smi -L` on stdin; print the lab's gpus.devices as JSON. A GPU split into MIG
slices is listed by its slices; a whole GPU gets the mode and max_users given as arguments."""
import json
import re
import sys

mode, max_users = sys.argv[1], int(sys.argv[2])
gpus, current = {}, None
for line in sys.stdin:
    gpu = re.match(r"GPU \d+: .*\(UUID: (GPU-[0-9a-fA-F-]+)\)", line)
    mig = re.match(r"\s+MIG .*\(UUID: (MIG-[0-9A-Za-z/-]+)\)", line)
    if gpu:
        current = gpu.group(1)
        gpus[current] = []
    elif mig and current:
        gpus[current].append(mig.group(1))
devices = []
for uuid, slices in gpus.items():
    if slices:
        devices += [{"id": s, "mode": "mig"} for s in slices]
    elif mode == "shared":
        devices.append({"id": uuid, "mode": "shared", "max_users": max_users})
    else:
        devices.append({"id": uuid, "mode": "exclusive"})
print(json.dumps(devices))
