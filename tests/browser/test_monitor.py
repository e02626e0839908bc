"""Operators watch the lab: Prometheus (Debian's, in the lab's image) scrapes the hub's metrics and
every container's CPU and memory; an instructor opens the monitor page from the hub's Services
menu in Chromium and sees the logins, the running servers and the busiest student; students and
TAs are refused."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.test_login import browser, login_dtu, new_page  # noqa: F401  (fixture)
from tests.conftest import ARTIFACTS, docker, wait_for

pytestmark = pytest.mark.browser

BUSY = "s230002"


def prometheus_query(lab, query: str) -> list:
    """Asked inside Prometheus's own container (it is published nowhere)."""
    out = docker("exec", f"{lab.instance}-prometheus-1", "promtool", "query", "instant", "-o", "json",
                 "http://127.0.0.1:9090", query)
    return json.loads(out)



@pytest.fixture
def busy_student(lab, browser):  # noqa: F811
    """A student logs in and starts a CPU server in the browser, then trains: two minutes of one
    busy core in their own server."""
    page = new_page(browser)
    login_dtu(lab, page, BUSY)
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(f"**/user/{BUSY}/lab**", timeout=240_000)
    docker("exec", "-d", f"{lab.instance}-{BUSY}", "python3", "-c",
           "import time\nend = time.time() + 120\nwhile time.time() < end: pass")
    yield BUSY
    page.context.close()
    lab.stop(BUSY)


def test_prometheus_scrapes_the_hub_and_every_container(lab):
    up = wait_for(lambda: (lambda u: u if {"hub", "containers"} <= set(u) else None)(
        {r["metric"]["job"] for r in prometheus_query(lab, "up") if r["value"][1] == "1"}), "hub and containers up")
    assert {"hub", "containers", "prometheus"} <= up
    roles = {r["metric"]["role"] for r in prometheus_query(lab, "lab_containers")}
    assert {"hub", "proxy", "egress", "netguard", "prometheus", "metrics"} <= roles
    hub_memory = prometheus_query(lab, 'lab_container_memory_bytes{role="hub"}')
    assert hub_memory and float(hub_memory[0]["value"][1]) > 50 << 20  # a hub uses well over 50 MiB


def open_monitor(lab, teacher) -> None:
    """The instructor logs in with DTU and opens the monitor page from the hub's Services menu."""
    login_dtu(lab, teacher, "teacher")
    teacher.wait_for_url(f"{lab.url}/hub/**")
    teacher.goto(f"{lab.url}/hub/home")
    teacher.get_by_role("button", name="Services").click()
    teacher.get_by_role("link", name="monitor", exact=True).click()
    teacher.wait_for_url(f"{lab.service_url('monitor')}/**")
    expect(teacher.get_by_role("heading", name="Lab monitor")).to_be_visible()


def test_an_instructor_watches_a_busy_student_and_others_are_refused(lab, browser, busy_student):  # noqa: F811
    teacher = new_page(browser)
    open_monitor(lab, teacher)
    # Five plots, each with its legend.
    expect(teacher.locator("svg[role='img']")).to_have_count(5)
    for title in ("Logins and server starts per minute", "Time to start a server", "Running servers",
                  "CPU in use", "Memory in use"):
        expect(teacher.locator("figcaption", has_text=title)).to_have_count(1)

    def busiest_row():
        teacher.reload()
        row = teacher.locator("tr", has=teacher.locator("td", has_text=BUSY))
        if row.count() != 1:
            return None
        cores = float(row.locator("td").nth(2).inner_text())
        return cores if cores > 0.3 else None

    cores = wait_for(busiest_row, f"{BUSY} among the busiest students with a busy core", timeout=150)
    assert cores <= 1.2  # the profile's limit is one core
    card = teacher.locator(".card", has_text="running servers").locator(".value")
    assert int(card.inner_text()) >= 1
    logins = teacher.locator(".card", has_text="logins, last 10 minutes").locator(".value")
    assert float(logins.inner_text()) >= 1  # the teacher's own, at least
    legend = teacher.locator("figure", has_text="Running servers").locator("li", has_text="running servers")
    assert int(legend.locator("b").inner_text()) >= 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    teacher.screenshot(path=str(ARTIFACTS / "monitor.png"), full_page=True)
    # The page's JSON link: the same figures for scripts.
    teacher.get_by_role("link", name="JSON").click()
    data = json.loads(teacher.locator("body").inner_text())
    assert any(b["user"] == BUSY for b in data["busiest"])
    assert [c["title"] for c in data["charts"]][2] == "Running servers"

    # A student and a TA may not see it, in their own browsers, by the same link.
    for person in ("s230003", "tahe"):
        page = new_page(browser)
        login_dtu(lab, page, person)
        page.wait_for_url(f"{lab.url}/**")
        response = page.goto(f"{lab.service_url('monitor')}/")
        assert response.status == 403, (person, response.status)
        expect(page.get_by_role("heading", name="Lab monitor")).to_have_count(0)
        page.context.close()
    teacher.context.close()


def test_the_grafana_compose_file_adds_grafana_on_loopback_with_the_lab_dashboard(lab):
    """Grafana cannot be pulled here (no registry): its compose file is checked as compose reads it."""
    from tests.conftest import ROOT

    def config(*extra_env: str):
        return subprocess.run(
            ["docker", "compose", "--project-directory", str(ROOT), "--env-file", str(lab.env_file), "-p", lab.instance,
             "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.grafana.yml"),
             "--profile", "monitoring", "config", "--format", "json"],
            capture_output=True, text=True, env={**os.environ, **dict(e.split("=", 1) for e in extra_env)})

    refused = config()
    assert refused.returncode != 0 and "GF_SECURITY_ADMIN_PASSWORD" in refused.stderr  # no password: no start
    got = config("GF_SECURITY_ADMIN_PASSWORD=correct-horse-battery")
    assert got.returncode == 0, got.stderr
    grafana = json.loads(got.stdout)["services"]["grafana"]
    assert [(p["host_ip"], p["target"]) for p in grafana["ports"]] == [("127.0.0.1", 3000)]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    mounts = {v["target"]: v["source"] for v in grafana["volumes"]}
    dashboard = json.loads(Path(mounts["/var/lib/grafana/dashboards"], "lab.json").read_text())
    assert dashboard["uid"] == "mlops-lab"
    # Every query of the dashboard answers in the lab's Prometheus (Grafana's $__rate_interval as 1m).
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            prometheus_query(lab, target["expr"].replace("$__rate_interval", "1m"))
