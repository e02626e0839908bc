# JupyterHub configuration for the MLOps course lab: load the operator's settings, then apply them.
# Everything an operator tunes is in lab.yaml and .env (see README.md), not here.
from hub.config import apply
from hub.proxy import ensure_tokens
from hub.settings import load_settings_or_exit
from hub.spawner import reconcile_gpu_allocations

settings = load_settings_or_exit("mlops-lab")

# The proxy's API token and the proxy-sync service's, on the volume the hub shares with the proxy.
apply(c, settings, proxy_tokens=ensure_tokens())  # noqa: F821  (c is JupyterHub's config object)
reconcile_gpu_allocations(settings, str(settings.gpu_state))  # GPU allocations that outlived a hub restart
