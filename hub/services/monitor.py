"""The operators' view of the lab during a burst: a hub-managed service at ``/services/monitor/``.

It asks the lab's Prometheus (hub/monitoring.py) and draws what an operator wants to see while a
class logs in: logins and server starts per minute, how long starts take (p50, p95), running
servers, what the hub and the proxy cost, the busiest students and, on GPU hosts, who holds
which GPU and how busy it is. Admins and instructors get in (``access:services!service=monitor``);
``?format=json`` gives the same figures.

Ours, not Grafana: Grafana needs a container registry (``docker-compose.grafana.yml`` provisions
it with the same queries where there is one, from ``grafana_dashboard``), and a page in the lab works on every host, behind
the lab's own login, with no second account. The plots are SVG drawn here, so the page keeps the
lab's rule of no scripts (``hub.services.base``); it reloads itself every 30 s.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import sys
import time
from urllib.parse import urlencode

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hub.monitoring import PROMETHEUS_URL
from hub.services.base import ServiceHandler, serve

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
POINTS = 120  # points per line: one per pixel column would be more than a screen shows

# The figures, as PromQL. {w} is the rate window (a few scrapes, or one step when steps are wider).
# JupyterHub 6 labels a login's status "LoginStatus.success" (its enum has no __str__, unlike the
# spawn status's), hence the pattern rather than "success".
CHARTS = [
    ("Logins and server starts per minute", "per minute", [
        ("logins", 'sum(rate(jupyterhub_login_duration_seconds_count{{status=~".*success"}}[{w}])) * 60'),
        ("servers started", 'sum(rate(jupyterhub_server_spawn_duration_seconds_count{{status="success"}}[{w}])) * 60'),
        ("starts failed", 'sum(rate(jupyterhub_server_spawn_duration_seconds_count{{status!="success"}}[{w}])) * 60'),
    ]),
    ("Time to start a server", "seconds", [
        ("p50", 'histogram_quantile(0.5, sum by (le) (rate(jupyterhub_server_spawn_duration_seconds_bucket{{status="success"}}[{w}])))'),
        ("p95", 'histogram_quantile(0.95, sum by (le) (rate(jupyterhub_server_spawn_duration_seconds_bucket{{status="success"}}[{w}])))'),
    ]),
    ("Running servers", "servers", [
        ("running servers", "sum(jupyterhub_running_servers)"),
        ("grading sandboxes", 'sum(lab_containers{{role="autograde-sandbox"}}) or vector(0)'),
    ]),
    ("CPU in use", "cores", [
        ("students' servers", 'sum(rate(lab_container_cpu_seconds_total{{role="student-server"}}[{w}]))'),
        ("hub", 'sum(rate(lab_container_cpu_seconds_total{{role="hub"}}[{w}]))'),
        ("proxy", 'sum(rate(lab_container_cpu_seconds_total{{role="proxy"}}[{w}]))'),
        ("grading", 'sum(rate(lab_container_cpu_seconds_total{{role="autograde-sandbox"}}[{w}])) or vector(0)'),
    ]),
    ("Memory in use", "GiB", [
        ("students' servers", 'sum(lab_container_memory_bytes{{role="student-server"}}) / 2^30'),
        ("hub", 'sum(lab_container_memory_bytes{{role="hub"}}) / 2^30'),
        ("proxy", 'sum(lab_container_memory_bytes{{role="proxy"}}) / 2^30'),
    ]),
]
# Only servers running now (a stopped one's CPU series lingers in the rate window).
BUSIEST_CPU = ('topk(10, sum by (user, profile, node) (rate(lab_container_cpu_seconds_total{role="student-server"}[2m]))'
               ' and on (user) sum by (user) (lab_container_memory_bytes{role="student-server"}))')
STUDENT_MEMORY = 'sum by (user) (lab_container_memory_bytes{role="student-server"})'
GPU_HELD = "lab_gpu_allocated"
GPU_UTIL = "lab_gpu_utilization_ratio"
GPU_MEMORY = "lab_gpu_memory_used_bytes"
NOW = {
    "running servers": "sum(jupyterhub_running_servers)",
    # increase() extrapolates to the window's edges: a count is shown rounded.
    "logins, last 10 minutes": 'round(sum(increase(jupyterhub_login_duration_seconds_count{status=~".*success"}[10m])))',
    "server starts, last 10 minutes": 'round(sum(increase(jupyterhub_server_spawn_duration_seconds_count{status="success"}[10m])))',
    "failed starts, last 10 minutes": 'round(sum(increase(jupyterhub_server_spawn_duration_seconds_count{status!="success"}[10m])) or vector(0))',
    "start time p95, last 10 minutes (s)": 'histogram_quantile(0.95, sum by (le) (rate(jupyterhub_server_spawn_duration_seconds_bucket{status="success"}[10m])))',
}


class PrometheusError(Exception):
    pass


class Prometheus:
    """Prometheus's HTTP API, asked with tornado's client (the service's loop is tornado's)."""

    def __init__(self, url: str = PROMETHEUS_URL):
        self.url = url.rstrip("/")
        self.http = AsyncHTTPClient()

    async def _get(self, path: str, **params) -> list:
        url = f"{self.url}/api/v1/{path}?{urlencode(params)}"
        try:
            response = await self.http.fetch(url, request_timeout=10)
        except HTTPClientError as e:
            body = e.response.body.decode(errors="replace") if e.response is not None else ""
            try:
                reason = json.loads(body).get("error", body)
            except ValueError:
                reason = body or str(e)
            raise PrometheusError(f"Prometheus refused a query ({e.code}): {reason}") from None
        except OSError as e:
            raise PrometheusError(f"Prometheus is not answering at {self.url} ({e}); is the compose profile "
                                  "'monitoring' running (docker compose --profile monitoring ps prometheus)?") from None
        return json.loads(response.body)["data"]["result"]

    async def instant(self, query: str) -> list:
        return await self._get("query", query=query)

    async def range(self, query: str, start: float, end: float, step: int) -> list:
        return await self._get("query_range", query=query, start=f"{start:.0f}", end=f"{end:.0f}", step=f"{step}s")


def _number(value: str) -> float | None:
    x = float(value)
    return None if math.isnan(x) or math.isinf(x) else x


def _scalar(result: list) -> float | None:
    return _number(result[0]["value"][1]) if result else None


def _shown(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 or abs(x) >= 100 else f"{x:.{digits}f}"


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%H:%M")


def svg_chart(title: str, unit: str, series: list[tuple[str, list[tuple[float, float]]]],
              start: float, end: float) -> str:
    """A line chart as inline SVG: one line per series, y from 0, the time axis in UTC, and each
    series' latest value in the legend (what an operator reads first)."""
    width, height, left, right, top, bottom = 720, 210, 56, 12, 14, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = max((v for _, points in series for _, v in points), default=0.0)
    ymax = 1.0 if ymax <= 0 else ymax * 1.1
    span = max(end - start, 1.0)

    def x(t: float) -> float:
        return left + (t - start) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(5):
        v = ymax * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{_shown(v)}</text>')
    for i in range(5):
        t = start + span * i / 4
        parts.append(f'<text x="{x(t):.1f}" y="{height - 10}" font-size="11" text-anchor="middle">{_clock(t)}</text>')
    for n, (_, points) in enumerate(series):
        if not points:
            continue
        colour = COLOURS[n % len(COLOURS)]
        if len(points) == 1:
            t, v = points[0]
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        else:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="key" style="background:{COLOURS[n % len(COLOURS)]}"></span>{html.escape(name)}: '
        f'<b>{_shown(points[-1][1]) if points else "no data"}</b></li>'
        for n, (name, points) in enumerate(series)
    )
    return (f'<figure><figcaption>{html.escape(title)} <small>({html.escape(unit)}, UTC)</small></figcaption>'
            f'{"".join(parts)}<ul class="legend">{legend}</ul></figure>')


def range_points(result: list) -> list[tuple[float, float]]:
    """One series' points from a range query (the sum of all series it returned, at each time)."""
    totals: dict[float, float] = {}
    for item in result:
        for t, value in item["values"]:
            v = _number(value)
            if v is not None:
                totals[float(t)] = totals.get(float(t), 0.0) + v
    return sorted(totals.items())


class MonitorHandler(ServiceHandler):
    def initialize(self, prometheus: Prometheus, scrape_seconds: int):
        self.prometheus = prometheus
        self.scrape_seconds = scrape_seconds

    async def figures(self, span: int) -> dict:
        end = time.time()
        start = end - span
        step = max(self.scrape_seconds, int(span / POINTS))
        window = f"{max(4 * self.scrape_seconds, 2 * step)}s"
        charts = []
        for title, unit, queries in CHARTS:
            series = []
            for name, query in queries:
                result = await self.prometheus.range(query.format(w=window), start, end, step)
                series.append((name, range_points(result)))
            charts.append({"title": title, "unit": unit, "series": series})
        now = {label: _scalar(await self.prometheus.instant(q)) for label, q in NOW.items()}
        memory = {r["metric"].get("user", ""): _number(r["value"][1])
                  for r in await self.prometheus.instant(STUDENT_MEMORY)}
        busiest = [{"user": r["metric"].get("user", ""), "profile": r["metric"].get("profile", ""),
                    "node": r["metric"].get("node", ""),
                    "cpu_cores": _number(r["value"][1]), "memory_bytes": memory.get(r["metric"].get("user", ""))}
                   for r in await self.prometheus.instant(BUSIEST_CPU)]
        busiest.sort(key=lambda row: -(row["cpu_cores"] or 0))
        util = {(r["metric"].get("device"), r["metric"].get("user")): _number(r["value"][1])
                for r in await self.prometheus.instant(GPU_UTIL)}
        gmem = {(r["metric"].get("device"), r["metric"].get("user")): _number(r["value"][1])
                for r in await self.prometheus.instant(GPU_MEMORY)}
        gpus = sorted(({"user": r["metric"].get("user", ""), "device": r["metric"].get("device", ""),
                        "profile": r["metric"].get("profile", ""),
                        "utilization": util.get((r["metric"].get("device"), r["metric"].get("user"))),
                        "memory_used_bytes": gmem.get((r["metric"].get("device"), r["metric"].get("user")))}
                       for r in await self.prometheus.instant(GPU_HELD)), key=lambda g: (g["device"], g["user"]))
        return {"start": start, "end": end, "step": step, "now": now, "charts": charts,
                "busiest": busiest, "gpus": gpus}

    @web.authenticated
    async def get(self):
        name = self.get_argument("range", "1h")
        if name not in RANGES:
            raise web.HTTPError(400, f"range={name!r}: expected one of {', '.join(RANGES)}")
        try:
            data = await self.figures(RANGES[name])
        except PrometheusError as e:
            self.set_status(503)
            if self.get_argument("format", "") == "json":
                return self.write_json({"error": str(e), "status": 503}, 503)
            return self.finish(page("Lab monitor", f"<p class='error'>{html.escape(str(e))}</p>"))
        if self.get_argument("format", "") == "json":
            return self.write_json(data)
        self.finish(page("Lab monitor", render(data, name), refresh=30))


def render(data: dict, current: str) -> str:
    links = " · ".join(f"<b>{r}</b>" if r == current else f"<a href='?range={r}'>{r}</a>" for r in RANGES)
    now = "".join(f"<div class='card'><div class='value'>{_shown(v)}</div><div>{html.escape(k)}</div></div>"
                  for k, v in data["now"].items())
    charts = "".join(svg_chart(c["title"], c["unit"], c["series"], data["start"], data["end"]) for c in data["charts"])
    # On a swarm each server's machine (the node its exporter reads); one host has one.
    nodes = any(b.get("node") for b in data["busiest"])
    rows = "".join(
        f"<tr><td>{html.escape(b['user'])}</td><td>{html.escape(b['profile'])}</td><td>{_shown(b['cpu_cores'], 2)}</td>"
        f"<td>{_shown(None if b['memory_bytes'] is None else b['memory_bytes'] / 2**20, 0)}</td>"
        + (f"<td>{html.escape(b.get('node', ''))}</td>" if nodes else "") + "</tr>"
        for b in data["busiest"]) or "<tr><td colspan='4'>No student's server is running.</td></tr>"
    gpus = "".join(
        f"<tr><td>{html.escape(g['device'])}</td><td>{html.escape(g['user'])}</td><td>{html.escape(g['profile'])}</td>"
        f"<td>{_shown(None if g['utilization'] is None else 100 * g['utilization'], 0)}</td>"
        f"<td>{_shown(None if g['memory_used_bytes'] is None else g['memory_used_bytes'] / 2**30, 1)}</td></tr>"
        for g in data["gpus"]) or "<tr><td colspan='5'>No student holds a GPU.</td></tr>"
    return (f"<p>Range: {links} · <a href='?range={current}&amp;format=json'>JSON</a> · this page reloads every 30 s</p>"
            f"<section class='cards'>{now}</section>{charts}"
            "<h2>Busiest students (CPU, last 2 minutes)</h2><table><tr><th>Student</th><th>Profile</th>"
            f"<th>CPU cores</th><th>Memory (MiB)</th>{'<th>Machine</th>' if nodes else ''}</tr>{rows}</table>"
            "<h2>GPUs</h2><table><tr><th>Device</th><th>Student</th><th>Profile</th><th>Busy (%)</th>"
            f"<th>Memory (GiB)</th></tr>{gpus}</table>")


def page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px}td,th{padding:.2em 1em;text-align:left}"
            "figure{display:inline-block;margin:0 1em 1.5em 0;vertical-align:top}figcaption{font-weight:bold}"
            ".legend{list-style:none;padding:0;margin:.3em 0}.legend li{display:inline-block;margin-right:1.2em}"
            ".key{display:inline-block;width:.8em;height:.8em;margin-right:.3em}"
            ".cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}.card{border:1px solid #ccc;padding:.5em 1em}"
            ".value{font-size:1.6em;font-weight:bold}.error{color:#a00;font-weight:bold}"
            f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def make_app(prefix: str, prometheus_url: str = PROMETHEUS_URL, scrape_seconds: int = 15) -> web.Application:
    prometheus = Prometheus(prometheus_url)
    return web.Application(
        [
            (prefix, MonitorHandler, {"prometheus": prometheus, "scrape_seconds": scrape_seconds}),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        cookie_secret=os.urandom(32),
    )


def grafana_dashboard() -> dict:
    """The same plots as a Grafana dashboard (images/grafana/dashboards/lab.json is written from
    this: ``python -m hub.services.monitor grafana``), so the two never say different things."""
    panels = []
    for n, (title, unit, queries) in enumerate(CHARTS):
        panels.append({
            "id": n + 1, "type": "timeseries", "title": title,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "datasource": {"type": "prometheus", "uid": "lab-prometheus"},
            "fieldConfig": {"defaults": {"min": 0, "custom": {"axisLabel": unit}}, "overrides": []},
            "targets": [{"refId": chr(65 + i), "expr": query.format(w="$__rate_interval"), "legendFormat": name}
                        for i, (name, query) in enumerate(queries)],
        })
    panels.append({
        "id": len(CHARTS) + 1, "type": "table", "title": "Busiest students (CPU cores, last 2 minutes)",
        "gridPos": {"h": 8, "w": 12, "x": 12 * (len(CHARTS) % 2), "y": 8 * (len(CHARTS) // 2)},
        "datasource": {"type": "prometheus", "uid": "lab-prometheus"},
        "targets": [{"refId": "A", "expr": BUSIEST_CPU, "format": "table", "instant": True}],
    })
    return {"uid": "mlops-lab", "title": "MLOps lab", "schemaVersion": 39, "version": 1, "editable": True,
            "refresh": "30s", "time": {"from": "now-1h", "to": "now"}, "timezone": "utc", "panels": panels}


def main() -> None:
    if sys.argv[1:] == ["grafana"]:
        print(json.dumps(grafana_dashboard(), indent=1))
        return
    from hub.settings import current

    settings = current("monitor")
    serve(make_app(os.environ["JUPYTERHUB_SERVICE_PREFIX"], PROMETHEUS_URL, settings.get("monitoring.scrape_seconds")))


if __name__ == "__main__":
    main()
