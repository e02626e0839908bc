"""A student's GPU server on a real GPU host: spawned through the hub, CUDA visible, training runs.

Run with `make test-gpu` on a host with an NVIDIA GPU, its driver and the NVIDIA Container
Toolkit (and the course image built with LAB_TORCH_VARIANT=cuda or auto). Elsewhere every test
here is skipped with a message saying so; a skip is not a pass.
"""

import json

from tests.integration.kernel import execute

CODE = r"""
import json, os, torch
assert torch.cuda.is_available(), "CUDA is not available in the student's server"
device = torch.device("cuda")
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(512, 64, device=device), torch.randn(512, 1, device=device)
losses = []
for _ in range(20):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(json.dumps({"count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
                  "visible": os.environ.get("NVIDIA_VISIBLE_DEVICES"), "first": losses[0], "last": losses[-1]}))
"""


def test_gpu_server_trains_on_its_own_device(lab):
    """Spawn the shared-GPU profile through the hub; inside, CUDA sees exactly the allocated device."""
    name = lab.new_user("gpu")
    server = lab.start(name, profile="gpu-shared")
    assert server["ready"]
    out = execute(lab, name, CODE, timeout=600)
    assert out["error"] is None, out
    result = json.loads(out["stdout"].strip().splitlines()[-1])
    assert result["count"] == 1  # only the allocated device is visible
    assert result["visible"].startswith(("GPU-", "MIG-"))
    assert result["last"] < result["first"]
    usage = lab.session.get(f"{lab.service_url('gpu-usage')}/?format=json", timeout=30).json()
    assert any(p["user"] == name and p["end"] is None for p in usage["periods"])
    lab.stop(name)
    usage = lab.session.get(f"{lab.service_url('gpu-usage')}/?format=json", timeout=30).json()
    assert all(p["end"] is not None for p in usage["periods"] if p["user"] == name)


def test_the_metrics_exporter_reads_this_hosts_gpus():
    """What the monitor page's GPU table is built from: nvidia-smi's figures, one per GPU of `nvidia-smi -L`."""
    import re
    import subprocess

    from hub.monitoring import gpu_holders, read_gpus

    listed = re.findall(r"\(UUID: (GPU-[0-9a-fA-F-]+)\)", subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                                                         text=True, check=True).stdout)
    gpus = read_gpus()
    assert [g["uuid"] for g in gpus] == listed
    for gpu in gpus:
        assert gpu["memory_total"] > 1 << 30 and 0 <= gpu["memory_used"] <= gpu["memory_total"]
        assert "utilization" not in gpu or 0 <= gpu["utilization"] <= 1
    [(user, device, figures)] = gpu_holders({"s230001": listed[0]}, gpus)
    assert figures["uuid"] == listed[0] and figures["index"] == "0"
