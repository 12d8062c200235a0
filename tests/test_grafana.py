"""The Grafana dashboard (packaging/grafana/gpuos-hintd.json): Grafana's dashboard schema, a
layout Grafana can place, and every PromQL query run by a real Prometheus scraping a real daemon.

No Grafana server can be installed here (not in Debian's main archive, not on PyPI, only
libraries on npm), so the dashboard is validated against Grafana's dashboard model transcribed as
JSON Schema (tests/data/grafana/dashboard.schema.json), and its queries against the real thing
they depend on: a Prometheus that scrapes gpuos-hintd's /metrics.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gpuos_hintd import metrics
from test_metrics import CLIENT, Prometheus, _metrics_port, prometheus  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "packaging" / "grafana" / "gpuos-hintd.json"
SCHEMA = REPO / "tests" / "data" / "grafana" / "dashboard.schema.json"
METRIC = re.compile(r"\b(gpuos_[a-z0-9_]+)\b")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", []) if "expr" in t]


def test_dashboard_matches_grafanas_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(load())


def test_the_schema_rejects_what_grafana_rejects() -> None:
    """The validator is not a rubber stamp: broken dashboards fail it."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    d = load()
    bad_grid = json.loads(json.dumps(d))
    bad_grid["panels"][1]["gridPos"]["w"] = 30
    no_refid = json.loads(json.dumps(d))
    del no_refid["panels"][1]["targets"][0]["refId"]
    bad_var = json.loads(json.dumps(d))
    bad_var["templating"]["list"][0]["type"] = "bogus"
    for broken in (bad_grid, no_refid, bad_var, {**d, "schemaVersion": "39"}):
        assert not validator.is_valid(broken)


def test_layout_ids_and_datasource() -> None:
    d = load()
    ps = panels(d)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("targets"), f"{p['title']} has no query"
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "instance"]
    # The four views are there.
    exprs = " ".join(e for _t, e in queries(d))
    for family in ("gpuos_phase_spans_total", "gpuos_phase_gpu_energy_joules_total", "gpuos_hintd_clients"):
        assert family in exprs
    assert "gpuos_hintd_rejected_total" in exprs


def _scraped_names(port: int) -> set[str]:
    """Every sample name the daemon's /metrics serves (with _total/_bucket/_sum/_count/_info)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _gpu_names() -> set[str]:
    """The GPU families, which this GPU-less host cannot serve: from metrics.GPU_FIELDS."""
    return {name for _field, name, _help, _scale in metrics.GPU_FIELDS} | {"gpuos_gpu_lost"}


@pytest.mark.slow
def test_every_query_runs_on_prometheus_against_the_daemon(daemon_factory: Any, prometheus: Prometheus) -> None:  # noqa: F811
    d = daemon_factory(args=["--metrics-port", "0"])
    port = _metrics_port(d)
    d.client(CLIENT.format(cls="inference.prefill", n=3, name="prefill", inner="time.sleep(0.02)"))
    d.client(CLIENT.format(cls="inference.decode", n=20, name="decode", inner="time.sleep(0.002)"))
    d.client(  # one malformed message: the rejects panels have something to show
        "import zmq, os, time\n"
        "s = zmq.Context().socket(zmq.DEALER)\n"
        "s.connect(os.environ['GPUOS_HINT_ENDPOINT'])\n"
        "s.send(b'not msgpack at all'); time.sleep(0.3)\n",
        env={"GPUOS_HINT_DISABLE": "1"},
    )
    d.wait_for(lambda: d.status()["counters"].get("spans_closed", 0) >= 23, what="23 spans")
    d.wait_for(lambda: d.status()["rejected"], what="a rejection")
    served = _scraped_names(port)
    gpu = _gpu_names()
    dash = load()
    for title, expr in queries(dash):
        for name in METRIC.findall(expr):
            assert name in served or name in gpu, f"{title}: {name} is not a metric gpuos-hintd serves"
    prometheus.scrape(port, "grafana")
    inst = f"127.0.0.1:{port}"
    prometheus.wait(f'gpuos_phase_spans_total{{instance="{inst}"}}', bool)
    # Grafana's variables, as Grafana would substitute them for this one daemon.
    subst = {'instance=~"$instance"': f'instance=~"{inst}"', "$__rate_interval": "30s", "$__range": "5m"}
    for title, expr in queries(dash):
        q = expr
        for k, v in subst.items():
            q = q.replace(k, v)
        assert "$" not in q, f"{title}: unsubstituted variable in {q}"
        try:
            if any(n in gpu for n in METRIC.findall(expr)):
                prometheus.query(q)  # valid PromQL (Prometheus parses it); no GPU here, so no data
                continue
            got = prometheus.wait(q, bool, timeout=20)  # valid, and the daemon's data answers it
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{title}: Prometheus refused {q}: {exc.read().decode(errors='replace')}") from None
        assert got, f"{title}: {q}"
    # The variable's own query finds this daemon.
    label = prometheus.query(f'gpuos_hintd_build_info{{instance="{inst}"}}')
    assert label and label[0]["metric"]["version"]
