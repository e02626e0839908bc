"""The monitoring's own parts: Prometheus's configuration, the cgroup and nvidia-smi readers, the
staff page's plots. (Prometheus scraping the real lab, and the page in Chromium, are in
tests/browser/test_monitor.py.)"""

import os
import stat

import pytest
import yaml

from hub.config import apply
from hub.monitoring import (Cgroups, gpu_holders, parse_nvidia_smi, prometheus_config, service_spec,
                            usage_from_stats, write_prometheus_config)
from hub.services.monitor import range_points, render, svg_chart
from hub.settings import load_settings
from traitlets.config import Config


def test_prometheus_config_scrapes_the_hub_with_its_token_and_the_exporter():
    conf = yaml.safe_load(prometheus_config(5))
    assert conf["global"]["scrape_interval"] == "5s"
    assert conf["global"]["scrape_timeout"] == "4s"  # under the interval, or Prometheus refuses the file
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    assert jobs["hub"]["metrics_path"] == "/hub/metrics"
    assert jobs["hub"]["static_configs"][0]["targets"] == ["hub:8081"]
    assert jobs["hub"]["authorization"] == {"type": "Bearer", "credentials_file": "/run/lab-monitor/metrics-token"}
    assert jobs["containers"]["static_configs"][0]["targets"] == ["metrics:9101"]
    assert yaml.safe_load(prometheus_config(60))["global"]["scrape_timeout"] == "10s"


def test_the_token_is_made_once_and_kept_and_files_are_replaced_whole(tmp_path):
    token = write_prometheus_config(15, "30d", tmp_path)
    assert len(token) == 64
    assert write_prometheus_config(30, "7d", tmp_path) == token  # a hub restart keeps it
    assert (tmp_path / "retention").read_text() == "7d"
    assert "scrape_interval: 30s" in (tmp_path / "prometheus.yml").read_text()
    # Prometheus runs as its own user: it must read them; nothing else is left behind.
    assert stat.S_IMODE(os.stat(tmp_path / "metrics-token").st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics-token", "prometheus.yml", "retention"]
    (tmp_path / "metrics-token").write_text("\n")  # an emptied token is made again
    assert write_prometheus_config(15, "30d", tmp_path) not in ("", token)


def test_the_hub_config_gives_prometheus_read_metrics_only_and_instructors_the_page(tmp_path):
    settings = load_settings(None, environ={"LAB_ADMIN_API_TOKEN": "x" * 32})
    c = Config()
    apply(c, settings, metrics_token="t" * 64)
    services = {s["name"]: s for s in c.JupyterHub.services}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert services["prometheus"] == {"name": "prometheus", "api_token": "t" * 64}
    assert roles["prometheus"]["scopes"] == ["read:metrics"]
    assert services["monitor"]["command"][-1] == "hub.services.monitor"
    assert "access:services!service=monitor" in roles["course-instructor"]["scopes"]
    assert not any("monitor" in s for s in roles["course-ta"]["scopes"] + roles["course-member"]["scopes"])
    # Off: neither the token's service nor the page.
    off = tmp_path / "lab.yaml"
    off.write_text("monitoring:\n  enabled: false\n")
    c = Config()
    apply(c, load_settings(off, environ={}), metrics_token="t" * 64)
    assert not {"prometheus", "monitor"} & {s["name"] for s in c.JupyterHub.services}


def test_bad_monitoring_settings_name_the_line(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("monitoring:\n  retention: 30 days\n  scrape_seconds: 1\n")
    with pytest.raises(ValueError) as e:
        load_settings(path, environ={})
    text = str(e.value)
    assert "lab.yaml:2: monitoring.retention" in text and "lab.yaml:3: monitoring.scrape_seconds" in text


def _files(root, files: dict):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_cgroup_v1_cgroupfs_driver(tmp_path):
    cid = "a" * 64
    _files(tmp_path, {
        f"cpuacct/docker/{cid}/cpuacct.usage": "2500000000\n",
        f"memory/docker/{cid}/memory.usage_in_bytes": str(300 << 20),
        f"memory/docker/{cid}/memory.stat": f"cache 1\ntotal_inactive_file {100 << 20}\n",
        f"memory/docker/{cid}/memory.limit_in_bytes": "9223372036854771712",
    })
    u = Cgroups(tmp_path).usage(cid)
    assert (u.cpu_seconds, u.memory_bytes, u.memory_limit) == (2.5, 200 << 20, None)
    assert Cgroups(tmp_path).usage("b" * 64) is None  # not found: the stats API is asked instead


def test_cgroup_v2_systemd_and_cgroupfs_drivers(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    one, two = "1" * 64, "2" * 64
    _files(tmp_path, {
        f"system.slice/docker-{one}.scope/cpu.stat": "usage_usec 1500000\nuser_usec 1\n",
        f"system.slice/docker-{one}.scope/memory.current": str(64 << 20),
        f"system.slice/docker-{one}.scope/memory.stat": f"anon 1\ninactive_file {16 << 20}\n",
        f"system.slice/docker-{one}.scope/memory.max": str(2 << 30),
        f"docker/{two}/cpu.stat": "usage_usec 250000\n",
        f"docker/{two}/memory.current": "4096\n",
        f"docker/{two}/memory.max": "max\n",
    })
    cg = Cgroups(tmp_path)
    assert cg.v2
    a, b = cg.usage(one), cg.usage(two)
    assert (a.cpu_seconds, a.memory_bytes, a.memory_limit) == (1.5, 48 << 20, 2 << 30)
    assert (b.cpu_seconds, b.memory_bytes, b.memory_limit) == (0.25, 4096, None)


def test_usage_from_docker_stats():
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
             "memory_stats": {"usage": 500, "limit": 1000, "stats": {"inactive_file": 100}}}
    u = usage_from_stats(stats)
    assert (u.cpu_seconds, u.memory_bytes, u.memory_limit) == (3.0, 400, 1000)
    assert usage_from_stats({"cpu_stats": {}, "memory_stats": {}}) is None  # a container that just stopped


NVIDIA_SMI = """\
0, GPU-5d3c6a1e-0c4b-3f2e-9a51-1d6f2c0b7e11, 87, 30512, 81559
1, GPU-9b2f44c0-77aa-4e1d-8f0e-44a1b2c3d4e5, [N/A], 1024, 81559
garbage line
"""


def test_nvidia_smi_figures_and_who_holds_each_gpu():
    gpus = parse_nvidia_smi(NVIDIA_SMI)
    assert len(gpus) == 2
    assert gpus[0]["utilization"] == pytest.approx(0.87)
    assert gpus[0]["memory_used"] == 30512 << 20
    assert "utilization" not in gpus[1]  # MIG mode: no whole-GPU figure, not a made-up zero
    held = gpu_holders({"s230001": "GPU-5d3c6a1e-0c4b-3f2e-9a51-1d6f2c0b7e11", "s230002": "1",
                        "s230003": "MIG-00000000-0000-0000-0000-0000000000b1"}, gpus)
    assert [(u, d, f and f["index"]) for u, d, f in held] == [
        ("s230001", "GPU-5d3c6a1e-0c4b-3f2e-9a51-1d6f2c0b7e11", "0"), ("s230002", "1", "1"),
        ("s230003", "MIG-00000000-0000-0000-0000-0000000000b1", None)]


def test_range_points_add_up_series_and_drop_gaps():
    result = [{"metric": {"status": "a"}, "values": [[10, "1"], [20, "NaN"], [30, "2"]]},
              {"metric": {"status": "b"}, "values": [[10, "0.5"], [30, "+Inf"]]}]
    assert range_points(result) == [(10.0, 1.5), (30.0, 2.0)]


def test_svg_chart_shows_the_latest_values_and_escapes_names():
    svg = svg_chart("Running servers", "servers", [("running", [(0, 1), (60, 3)]), ("<b>x</b>", [])], 0, 60)
    assert "running: <b>3</b>" in svg
    assert "&lt;b&gt;x&lt;/b&gt;: <b>no data</b>" in svg
    assert svg.count("<polyline") == 1
    assert "<script" not in svg


def test_the_grafana_dashboard_is_written_from_the_monitor_pages_queries():
    import json
    from pathlib import Path

    from hub.services.monitor import CHARTS, grafana_dashboard

    root = Path(__file__).resolve().parents[2]
    committed = json.loads((root / "images/grafana/dashboards/lab.json").read_text())
    assert committed == grafana_dashboard(), "run: python -m hub.services.monitor grafana > images/grafana/dashboards/lab.json"
    exprs = [t["expr"] for panel in committed["panels"] for t in panel["targets"]]
    assert len(exprs) == sum(len(q) for _, _, q in CHARTS) + 1
    assert all("{w}" not in e and "{{" not in e for e in exprs)
    assert any("$__rate_interval" in e for e in exprs)
    provisioning = yaml.safe_load((root / "images/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert provisioning["datasources"][0]["uid"] == committed["panels"][0]["datasource"]["uid"]


def test_on_a_swarm_prometheus_finds_every_nodes_exporter_by_dns():
    jobs = {job["job_name"]: job for job in yaml.safe_load(prometheus_config(15, swarm_service="lab-metrics"))["scrape_configs"]}
    # One address per task of the global service: a node that joins is scraped after the next lookup.
    assert jobs["containers"]["dns_sd_configs"] == [
        {"names": ["tasks.lab-metrics"], "type": "A", "port": 9101, "refresh_interval": "15s"}]
    assert "static_configs" not in jobs["containers"]
    assert jobs["hub"]["static_configs"][0]["targets"] == ["hub:8081"]


def test_the_exporter_service_reads_each_nodes_containers_on_the_lab_network():
    spec = service_spec("lab", "mlops-lab/hub:1", "lab-net")
    assert spec["name"] == "lab-metrics" and spec["mode"] == {"global": {}}
    task = spec["task_template"]
    container = task["ContainerSpec"]
    assert container["Command"] == ["python3", "-m", "hub.monitoring"]
    # Each task names its node: Swarm fills the template in.
    assert "LAB_NODE={{.Node.Hostname}}" in container["Env"] and "LAB_INSTANCE=lab" in container["Env"]
    mounts = {m["Target"]: m for m in container["Mounts"]}
    assert mounts["/host/cgroup"]["Source"] == "/sys/fs/cgroup" and mounts["/host/cgroup"]["ReadOnly"]
    assert mounts["/var/run/docker.sock"]["Source"] == "/var/run/docker.sock"
    assert task["Networks"] == [{"Target": "lab-net"}]
    assert spec["endpoint_spec"]["Mode"] == "dnsrr"
    assert container["Labels"]["mlops-lab.role"] == "metrics"
    # Its own health check (the hub image's asks the hub's port: Swarm would replace every task).
    assert "9101" in " ".join(container["Healthcheck"]["Test"]) and "8081" not in " ".join(container["Healthcheck"]["Test"])


def test_the_busiest_students_show_their_machine_on_a_swarm_only():
    row = {"user": "s230001", "profile": "cpu", "cpu_cores": 0.9, "memory_bytes": 2**28}
    data = {"now": {}, "charts": [], "gpus": [], "start": 0, "end": 60}
    one_host = render({**data, "busiest": [{**row, "node": ""}]}, "1h")
    assert "Machine" not in one_host and "<td>s230001</td><td>cpu</td><td>0.90</td><td>256</td></tr>" in one_host
    swarm = render({**data, "busiest": [{**row, "node": "node-<a>"}]}, "1h")
    assert "<th>Machine</th>" in swarm and "<td>256</td><td>node-&lt;a&gt;</td></tr>" in swarm
