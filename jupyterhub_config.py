# JupyterHub configuration for the MLOps course lab: load the operator's settings, then apply them.
# Everything an operator tunes is in lab.yaml and .env (see README.md), not here.
import sys

from hub.config import GPU_STATE, apply
from hub.settings import SettingsError, load_settings
from hub.spawner import reconcile_gpu_allocations

try:
    settings = load_settings()
except SettingsError as error:
    print(f"[mlops-lab] {error}", file=sys.stderr)
    sys.exit(2)

apply(c, settings)  # noqa: F821  (c is JupyterHub's config object)
reconcile_gpu_allocations(settings, GPU_STATE)  # GPU allocations that outlived a hub restart
