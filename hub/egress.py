"""The egress proxy: student servers reach the internet only through it, and only the hosts
the operator allows (``network.allowed_hosts`` in lab.yaml).

It is Debian's tinyproxy with a default-deny host filter; this module only writes its
configuration from the lab's settings and execs it. Student containers get ``HTTP(S)_PROXY``
pointing here; the netguard firewall rejects their direct connections.
"""

from __future__ import annotations

import os

from .settings import load_settings_or_exit

PORT = 3128


def render(allowed_hosts: list[str]) -> tuple[str, str]:
    """Return (tinyproxy.conf, filter file) for the allowed hosts ("x.org" and "*.x.org" forms)."""
    conf = "\n".join([
        f"Port {PORT}",
        "Listen 0.0.0.0",
        "Timeout 600",
        "MaxClients 200",
        "LogLevel Notice",
        "DisableViaHeader Yes",
        "Filter \"/tmp/egress/filter\"",
        "FilterType fnmatch",
        "FilterURLs Off",
        "FilterDefaultDeny Yes",
        "ConnectPort 443",
        "ConnectPort 80",
        "",
    ])
    return conf, "\n".join(allowed_hosts) + "\n"


def main() -> None:
    settings = load_settings_or_exit("egress", secrets=False)  # never given the hub's secrets
    hosts = settings.get("network.allowed_hosts")
    conf, filt = render(hosts)
    os.makedirs("/tmp/egress", exist_ok=True)
    with open("/tmp/egress/tinyproxy.conf", "w") as f:
        f.write(conf)
    with open("/tmp/egress/filter", "w") as f:
        f.write(filt)
    print(f"[egress] student servers may reach: {', '.join(hosts) or '(nothing)'}", flush=True)
    os.execvp("tinyproxy", ["tinyproxy", "-d", "-c", "/tmp/egress/tinyproxy.conf"])


if __name__ == "__main__":
    main()
