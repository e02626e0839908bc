# JupyterHub configuration for the MLOps course lab: load the operator's settings, then apply them.
# Everything an operator tunes is in lab.yaml and .env (see README.md), not here.
from hub.config import apply
from hub.monitoring import exporter_service_name, write_prometheus_config
from hub.proxy import ensure_tokens
from hub.settings import load_settings_or_exit
from hub.spawner import reconcile_gpu_allocations

settings = load_settings_or_exit("mlops-lab")

# The proxy's API token and the proxy-sync service's, on the volume the hub shares with the proxy;
# Prometheus's configuration and token, on the volume the hub shares with Prometheus.
metrics_token = None
if settings.get("monitoring.enabled"):
    metrics_token = write_prometheus_config(
        settings.get("monitoring.scrape_seconds"), settings.get("monitoring.retention"),
        # on a swarm, every node's exporter (the global service start_node_services keeps)
        swarm_service=exporter_service_name(settings.instance) if settings.get("swarm.enabled") else "")
apply(c, settings, proxy_tokens=ensure_tokens(), metrics_token=metrics_token)  # noqa: F821  (c: JupyterHub's config)
reconcile_gpu_allocations(settings, str(settings.gpu_state))  # GPU allocations that outlived a hub restart
if settings.get("swarm.enabled"):
    from hub.swarm import start_node_services

    start_node_services(settings)  # students' firewall and the exporter, on every node of the swarm
