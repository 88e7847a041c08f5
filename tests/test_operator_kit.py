"""The operator kit in k8s/monitoring: alert rules checked and unit-tested by promtool, and a
Grafana dashboard whose every query is checked against a real Prometheus scraping a real
`semlayout serve` under traffic (then drawn by a headless browser when Grafana is not here).

promtool and prometheus come from Debian's `prometheus` package (installed with
--no-install-recommends when missing; nothing is started by the package)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from helpers_debian import ensure_binaries
from helpers_serving import (
    alignable_pair,
    aligned_arrays,
    cached_reference,
    free_port,
    make_checkpoint,
    png_bytes,
    running_server,
)

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "k8s" / "monitoring"
DASHBOARD = KIT / "grafana-dashboard.json"
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}


def ensure_prometheus() -> tuple[str, ...]:
    """(promtool, prometheus), from Debian's `prometheus` package (installed when missing)."""
    return ensure_binaries(("promtool", "prometheus"), ("prometheus",))


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ensure_prometheus()[0], *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def rendered() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    r = subprocess.run(
        ["kubectl", "kustomize", str(KIT)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def rule_groups() -> list[dict[str, Any]]:
    rule = yaml.safe_load((KIT / "prometheusrule.yaml").read_text())
    return rule["spec"]["groups"]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(panel, PromQL with Grafana's variables filled in) for every query of the dashboard."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((panel, expr))
    return out


# ---------------------------------------------------------------- manifests and rules
def test_the_kit_renders_and_points_at_the_serving_service() -> None:
    import kubernetes_validate

    docs = {d["kind"]: d for d in rendered()}
    assert set(docs) == {"ConfigMap", "ServiceMonitor", "PrometheusRule"}
    cm = docs["ConfigMap"]
    kubernetes_validate.validate(cm, "1.32", strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["semlayout-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    base = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "k8s" / "base")],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    service = next(
        d
        for d in yaml.safe_load_all(base)
        if d and d["kind"] == "Service" and d["metadata"]["name"] == "semlayout-serve"
    )
    sm = docs["ServiceMonitor"]["spec"]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["selector"]["matchLabels"].items())
    assert sm["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert all(d["metadata"]["namespace"] == "semlayout" for d in docs.values())


def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(KIT / "rules-test.yaml", tmp_path / "rules-test.yaml")
    check = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = promtool("test", "rules", "rules-test.yaml", cwd=tmp_path)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    assert {
        "SemlayoutDriftRateHigh",
        "SemlayoutErrorRateHigh",
        "SemlayoutLatencyP95High",
        "SemlayoutModelReloadFailing",
        "SemlayoutLowConfidenceRate",  # issue 17
    } <= alerts
    # every alert is exercised by the unit tests
    tested = {
        t["alertname"]
        for t in yaml.safe_load((KIT / "rules-test.yaml").read_text())["tests"][0][
            "alert_rule_test"
        ]
    }
    assert alerts <= tested


# ---------------------------------------------------------------- the dashboard JSON
def test_the_dashboard_json_is_well_formed(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel '{p['title']}' overlaps another"
        cells |= mine
        assert p["type"] in {"row", "timeseries", "stat", "table", "text"}, p["type"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"]
    assert any(
        p["type"] == "text" and "semlayout:low_confidence:ratio_rate30m" in p["options"]["content"]
        for p in dash["panels"]
    )
    # every query is valid PromQL: promtool checks them as recording rules
    rules = [{"record": f"panel:q{i}", "expr": e} for i, (_, e) in enumerate(panel_queries(dash))]
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    r = promtool("check", "rules", "q.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- against real servers
@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from semlayout.serving.app import create_app
    from semlayout.serving.settings import ServeSettings

    ref = cached_reference(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("kit")
    settings = ServeSettings(
        model=str(make_checkpoint(tmp / "ckpt")),
        monitor_db=tmp / "monitor.db",
        feedback_dir=tmp / "fb",
        reference=ref["shards"] / "reference_stats.json",
        poll_interval_s=0,
        api_token="t-api",
        admin_token="t-admin",
    )
    with running_server(create_app(settings)) as url:
        yield url, ref


@contextlib.contextmanager
def prometheus_scraping(target: str, workdir: Path):  # type: ignore[no-untyped-def]
    _, binary = ensure_prometheus()
    port = free_port()
    host = target.split("//", 1)[1]
    (workdir / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "semlayout-serve", "static_configs": [{"targets": [host]}]}
                ],
            }
        )
    )
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        log.close()


def _traffic(url: str, ref: dict[str, Path], rounds: int) -> None:
    """Translate (in-distribution and low-dose images), a refused upload, a feedback pair,
    a ground truth and an admin reload: every series the dashboard draws gets samples."""
    fresh, layouts, _ = aligned_arrays(ref["fresh"])
    lowdose, _, _ = aligned_arrays(ref["lowdose"])
    with httpx.Client(base_url=url, timeout=60) as c:
        pred_id = None
        for i in range(rounds):
            img = (lowdose if i % 2 else fresh)[i % 10]
            r = c.post("/v1/translate/sem2layout", files={"image": ("x.png", png_bytes(img))})
            assert r.status_code == 200, r.text
            pred_id = pred_id or r.headers["X-Prediction-Id"]
            r = c.post(
                "/v1/translate/layout2sem", files={"image": ("l.png", png_bytes(layouts[i % 10]))}
            )
            assert r.status_code == 200, r.text
            c.post("/v1/translate/sem2layout", files={"image": ("bad.png", b"not a png")})
            time.sleep(0.25)
        sem, layout = alignable_pair(3)
        r = c.post(
            "/v1/feedback",
            headers={"Authorization": "Bearer t-api"},
            files={"sem": ("s.png", png_bytes(sem)), "layout": ("l.png", png_bytes(layout))},
            data={"pattern_type": "random_routing"},
        )
        assert r.status_code in (200, 201), r.text
        r = c.post(
            f"/v1/ground-truth/{pred_id}",
            headers={"Authorization": "Bearer t-api"},
            files={"image": ("t.png", png_bytes(layouts[0]))},
        )
        assert r.status_code == 200, r.text
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer t-admin"})
        assert r.status_code == 200, r.text


def test_every_dashboard_query_has_data_from_a_real_prometheus(serving, tmp_path: Path) -> None:
    from helpers_browser import browser, screenshot, wait_for

    url, ref = serving
    dash = json.loads(DASHBOARD.read_text())
    with prometheus_scraping(url, tmp_path) as prom:
        _traffic(url, ref, rounds=30)
        time.sleep(4)  # a few more scrapes after the last request
        # the sample names /metrics exposes now (labelled series appear once they have counts)
        exported = set(re.findall(r"^(semlayout_\w+)", httpx.get(url + "/metrics").text, re.M))
        results = {}
        for panel, expr in panel_queries(dash):
            names = set(re.findall(r"\b(semlayout_\w+)", expr))
            assert names, expr
            for name in names:
                assert name in exported, f"panel '{panel['title']}' queries {name}, not exported"
            r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}).json()
            assert r["status"] == "success", (expr, r)
            results.setdefault(panel["title"], []).append((expr, r["data"]["result"]))
            assert r["data"]["result"], f"panel '{panel['title']}': no data for {expr}"
        series = _ranges(prom, dash)
    page = tmp_path / "dashboard.html"
    page.write_text(render_dashboard(dash, results, series))
    with browser(1400, 1400) as driver:
        driver.get(page.as_uri())
        n = wait_for(driver, "document.querySelectorAll('.panel').length")
        screenshot(driver, "dashboard")
    assert n == sum(1 for p in dash["panels"] if p["type"] != "row")


def _ranges(prom: str, dash: dict[str, Any]) -> dict[str, list[tuple[str, list[float]]]]:
    """The last two minutes of every timeseries panel's queries, for the drawing."""
    end = time.time()
    out: dict[str, list[tuple[str, list[float]]]] = {}
    for panel, expr in panel_queries(dash):
        if panel["type"] != "timeseries":
            continue
        r = httpx.get(
            f"{prom}/api/v1/query_range",
            params={"query": expr, "start": end - 120, "end": end, "step": 2},
        ).json()
        for s in r["data"]["result"]:
            label = ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())) or expr[:40]
            vals = [float(v) for _, v in s["values"] if np.isfinite(float(v))]
            out.setdefault(panel["title"], []).append((label, vals))
    return out


def render_dashboard(dash: dict[str, Any], results: dict, series: dict) -> str:
    """The dashboard laid out as its gridPos says (24 columns, 30 px a row unit), each panel
    with its title, a line per series (timeseries) or its current values (stat, table)."""
    import html

    cells = []
    for p in dash["panels"]:
        g = p["gridPos"]
        style = (
            f"left:{g['x'] * 100 / 24:.3f}%;top:{g['y'] * 30}px;"
            f"width:calc({g['w'] * 100 / 24:.3f}% - 8px);height:{g['h'] * 30 - 8}px"
        )
        if p["type"] == "row":
            cells.append(f'<div class="row" style="{style}">{html.escape(p["title"])}</div>')
            continue
        body = ""
        if p["type"] == "timeseries":
            body = _sparklines(series.get(p["title"], []))
        elif p["type"] == "text":
            body = f'<p class="txt">{html.escape(p["options"]["content"])}</p>'
        else:
            rows = [
                f"{html.escape(','.join(f'{k}={v}' for k, v in s['metric'].items()) or 'value')}"
                f": <b>{float(s['value'][1]):.4g}</b>"
                for _, res in results.get(p["title"], [])
                for s in res
            ]
            body = "<br>".join(rows[:6])
        cells.append(
            f'<div class="panel" style="{style}"><h3>{html.escape(p["title"])}</h3>'
            f'<span class="type">{p["type"]}</span>{body}</div>'
        )
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"]) * 30
    css = (
        "body{background:#111217;color:#ccc;font-family:sans-serif;margin:12px}"
        f".grid{{position:relative;height:{height}px}}"
        ".panel,.row{position:absolute;box-sizing:border-box}"
        ".panel{background:#181b1f;border:1px solid #2c3235;border-radius:3px;padding:6px;"
        "overflow:hidden}.row{color:#fff;font-weight:bold;padding-top:6px}"
        "h3{font-size:13px;margin:0 0 4px;color:#e6e6e6}.type{position:absolute;right:6px;"
        "top:6px;font-size:10px;color:#777}.txt{font-size:12px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(dash['title'])}"
        f"</title><style>{css}</style></head><body><h2>{html.escape(dash['title'])} "
        "<small>(drawn from the dashboard JSON and a real Prometheus; no Grafana here)</small>"
        f"</h2><div class='grid'>{''.join(cells)}</div></body></html>"
    )


def _sparklines(lines: list[tuple[str, list[float]]]) -> str:
    colours = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9")
    vals = [v for _, vs in lines for v in vs]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    parts = ['<svg width="100%" height="70%" viewBox="0 0 300 100" preserveAspectRatio="none">']
    legend = []
    for i, (label, vs) in enumerate(lines[:6]):
        pts = " ".join(
            f"{j * 300 / max(len(vs) - 1, 1):.1f},{100 - (v - lo) * 95 / (hi - lo):.1f}"
            for j, v in enumerate(vs)
        )
        c = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        legend.append(f'<span style="color:{c};font-size:10px">&#9632; {label[:40]}</span>')
    return "".join(parts) + "</svg><div>" + " ".join(legend) + f" <small>max {hi:.3g}</small></div>"
