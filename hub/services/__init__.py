"""Hub-managed services of the lab (started and proxied by JupyterHub)."""
