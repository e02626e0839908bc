"""The MLOps course lab's hub package: settings, spawner and configuration for JupyterHub."""

__version__ = "0.1.0"
