# JupyterHub configuration for the MLOps course lab: load the operator's settings, then apply them.
# Everything an operator tunes is in lab.yaml and .env (see README.md), not here.
from hub.config import apply
from hub.settings import load_settings_or_exit
from hub.spawner import reconcile_gpu_allocations

settings = load_settings_or_exit("mlops-lab")

apply(c, settings)  # noqa: F821  (c is JupyterHub's config object)
reconcile_gpu_allocations(settings, str(settings.gpu_state))  # GPU allocations that outlived a hub restart
