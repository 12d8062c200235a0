"""OTLP export into a real trace backend: arize-phoenix on loopback, fed by a real daemon and real clients.

Phoenix (installed by scripts/setup-otlp-test.sh into .venv-phoenix, apart from
.venv) receives OTLP/HTTP protobuf on POST /v1/traces and serves the stored
spans from its REST API, so everything checked here is what a backend stored:
names, parent links, the join of a client's OpenTelemetry request span with
the daemon's phases, ``gpuos.*`` attributes, and the resource attribute that
routes spans to a project.  (Phoenix keeps no other resource attribute; those
are checked on the encoded request in tests/test_otlp.py.)  The second test
kills the backend mid-run.  One Phoenix per module: it takes ~15 s to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2", reason="opentelemetry-proto is not installed")

from conftest import REPO
from gpuos_hintd import procfs
from gpuos_hintd.identity import parse_cgroup, short_container_id

PHOENIX = REPO / ".venv-phoenix" / "bin" / "phoenix"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Phoenix:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.grpc_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "phoenix.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(self.workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"phoenix exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise AssertionError(f"phoenix did not come up in {timeout}s:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def spans(self, project: str, trace_id: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            q: dict[str, Any] = {"limit": 1000}
            if trace_id:
                q["trace_id"] = trace_id
            if cursor:
                q["cursor"] = cursor
            url = f"{self.url}/v1/projects/{project}/spans?{urllib.parse.urlencode(q)}"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = json.load(r)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the project does not exist yet: nothing ingested
                    return []
                raise
            out.extend(body["data"])
            cursor = body.get("next_cursor")
            if not cursor:
                return out


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    if not PHOENIX.exists():
        why = (
            (REPO / ".venv-phoenix" / "FAILED").read_text().strip() if (REPO / ".venv-phoenix/FAILED").exists() else ""
        )
        pytest.skip(f"no OTLP backend: {PHOENIX} missing ({why or 'run scripts/setup-otlp-test.sh'})")
    p = Phoenix(tmp_path_factory.mktemp("phoenix"))
    p.start()
    yield p
    p.kill()


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def _otlp_config(phoenix: Phoenix, **extra: Any) -> str:
    lines = [f'endpoint = "{phoenix.url}"'] + [f"{k} = {v!r}" for k, v in extra.items()]
    return "[otlp]\n" + "\n".join(lines) + "\n"


def _metrics_port(d: Any) -> int:
    def find() -> int | None:
        for line in d.log().splitlines():
            if "metrics_listening" in line:
                return int(json.loads(line)["port"])
        return None

    return int(_wait(find, 10, "metrics_listening"))


REQUEST_CLIENT = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
import gpuos_client as h
from gpuos_client._otel import current_traceparent

provider = TracerProvider(resource=Resource.create({{"service.name": "llm-server", "openinference.project.name": {project!r}}}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint={url!r} + "/v1/traces")))
trace.set_tracer_provider(provider)
with trace.get_tracer("test").start_as_current_span("request") as req:
    tp = current_traceparent()
    with h.phase("prefill", traceparent=tp, tokens=512):
        with h.phase("matmul"):
            sum(range(300_000))
    with h.phase("decode", traceparent=tp):
        for i in range(3):
            with h.phase("step", i=i):
                sum(range(30_000))
    ctx = req.get_span_context()
h.flush()
provider.shutdown()
print(json.dumps({{"trace_id": f"{{ctx.trace_id:032x}}", "span_id": f"{{ctx.span_id:016x}}", "pid": os.getpid()}}))
"""

PLAIN_CLIENT = """
import gpuos_client as h
h.workload_class("training.step")
for n in range({n}):
    with h.phase({name!r}):
        with h.phase("step"):
            sum(range(1000))
h.flush()
"""


def test_phases_join_the_request_trace_in_phoenix(
    phoenix: Phoenix, daemon_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = "gpuos-join"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project},k8s.node.name=test-node")
    d = daemon_factory(_otlp_config(phoenix), args=["--metrics-port", "0"])
    out = json.loads(d.client(REQUEST_CLIENT.format(url=phoenix.url, project=project)).stdout)
    d.client(PLAIN_CLIENT.format(n=2, name="train"))
    d.wait_for(lambda: d.status()["counters"].get("spans_closed", 0) >= 10, what="10 spans closed")
    st = _wait(
        lambda: (s := d.status()["otlp"])["exported"] >= 10 and s["queued"] == 0 and s["in_flight"] == 0 and s,
        20,
        "10 spans exported",
    )
    assert st["dropped_total"] == 0 and st["backend_up"] and st["traceparent_joined"] == 2
    assert st["offered"] == st["exported"] == d.status()["counters"]["spans_closed"]

    spans = _wait(lambda: len(s := phoenix.spans(project, out["trace_id"])) >= 7 and s, 30, "the request's trace")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    assert sorted((n, len(v)) for n, v in by_name.items()) == [
        ("decode", 1),
        ("matmul", 1),
        ("prefill", 1),
        ("request", 1),
        ("step", 3),
    ]
    [req], [prefill], [matmul], [decode] = by_name["request"], by_name["prefill"], by_name["matmul"], by_name["decode"]
    # One trace: the client's request span, the daemon's phases as its children.
    assert req["context"]["span_id"] == out["span_id"] and not req.get("parent_id")
    assert prefill["parent_id"] == decode["parent_id"] == out["span_id"]
    assert matmul["parent_id"] == prefill["context"]["span_id"]
    assert {s["parent_id"] for s in by_name["step"]} == {decode["context"]["span_id"]}
    assert sorted(s["attributes"]["gpuos.phase.attr.i"] for s in by_name["step"]) == [0, 1, 2]
    a = matmul["attributes"]
    assert a["gpuos.phase.path"] == "prefill/matmul" and a["gpuos.phase.depth"] == 2
    assert a["gpuos.phase.status"] == "ok" and matmul["status_code"] == "OK"
    assert a["gpuos.host.duration_ns"] > 0 and isinstance(a["gpuos.span.samples"], int)
    assert any(k.startswith("gpuos.signal.cpu_") for k in a), a  # sampled CPU time reached the backend
    assert prefill["attributes"]["gpuos.phase.attr.tokens"] == 512
    assert "gpuos.phase.attr.traceparent" not in prefill["attributes"]
    # the phase's host interval sits inside the request span's
    assert req["start_time"] <= prefill["start_time"] and matmul["end_time"] <= req["end_time"]

    # The plain client: its own traces, one per top-level phase, routed by the resource attribute.
    every = _wait(lambda: len(s := phoenix.spans(project)) >= 11 and s, 30, "the plain client's spans")
    trains = [s for s in every if s["name"] == "train"]
    assert len(trains) == 2 and all(not s.get("parent_id") for s in trains)
    for t in trains:
        kids = [s for s in every if s.get("parent_id") == t["context"]["span_id"]]
        assert [k["name"] for k in kids] == ["step"] and kids[0]["context"]["trace_id"] == t["context"]["trace_id"]
    assert len({t["context"]["trace_id"] for t in trains}) == 2

    # /metrics: the exporter's counters and the identity-labelled series
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{_metrics_port(d)}/metrics", timeout=5) as r:
        fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    exported = next(s.value for s in fams["gpuos_hintd_otlp_spans_exported"].samples if s.name.endswith("_total"))
    assert exported >= 10
    dropped = {s.labels["reason"]: s.value for s in fams["gpuos_hintd_otlp_spans_dropped"].samples}
    assert set(dropped) >= {"queue_full", "retries_exhausted"} and sum(dropped.values()) == 0
    ident = parse_cgroup(procfs.read_cgroup(Path("/proc"), os.getpid()))  # the clients are our children
    series = {
        (s.labels["pod_uid"], s.labels["container"], s.labels["unit"]): s.value
        for s in fams["gpuos_workload_spans"].samples
        if s.name.endswith("_total")
    }
    want = (ident.pod_uid or "", short_container_id(ident.container_id), ident.systemd_unit or "")
    assert series[want] >= 10 and series[("__other__",) * 3] == 0


def test_backend_killed_mid_run(phoenix: Phoenix, daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend down: ingest goes on, the bounded queue drops (counted); the backend back: delivery resumes."""
    project = "gpuos-outage"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}")
    d = daemon_factory(
        _otlp_config(phoenix, queue_spans=40, batch_spans=20, max_retry_s=300.0, timeout_s=2.0, backoff_max_s=0.5)
    )
    d.client(PLAIN_CLIENT.format(n=5, name="before"))
    _wait(lambda: d.status()["otlp"]["exported"] >= 10, 20, "10 spans exported")
    _wait(lambda: len(phoenix.spans(project)) >= 10, 30, "10 spans stored in phoenix")

    phoenix.kill()
    closed0 = d.status()["counters"]["spans_closed"]
    t0 = time.monotonic()
    d.client(PLAIN_CLIENT.format(n=150, name="during"))
    d.wait_for(lambda: d.status()["counters"]["spans_closed"] >= closed0 + 300, what="300 spans closed, backend down")
    ingest_s = time.monotonic() - t0
    d.wait_for(
        lambda: d.query("SELECT count(*) FROM spans WHERE name IN ('during', 'step')")[0][0] >= 305, what="store"
    )
    st = _wait(lambda: (s := d.status()["otlp"])["failed_attempts"] >= 1 and s, 20, "a failed export")
    assert st["backend_up"] is False and st["last_error"]
    assert st["dropped"]["queue_full"] >= 300 - 40 - 20  # only the queue and one batch in flight are kept
    assert st["queued"] <= 40 and st["in_flight"] <= 20
    assert st["offered"] == st["exported"] + st["dropped_total"] + st["queued"] + st["in_flight"]
    assert d.status()["rejected"] == {} and ingest_s < 30

    t_down = time.monotonic() - t0
    phoenix.start()
    t_up = time.monotonic()
    st = _wait(
        lambda: (s := d.status()["otlp"])["queued"] == 0 and s["in_flight"] == 0 and s["backend_up"] and s, 60, "resume"
    )
    resume_s = time.monotonic() - t_up
    print(
        f"outage {t_down:.1f} s, ingest of 300 spans {ingest_s:.2f} s, delivery resumed {resume_s:.1f} s after restart"
    )
    d.client(PLAIN_CLIENT.format(n=5, name="after"))
    st = _wait(
        lambda: (s := d.status()["otlp"])["offered"] >= 320 and s["queued"] == 0 and s["in_flight"] == 0 and s,
        30,
        "the last spans exported",
    )
    assert st["offered"] == st["exported"] + st["dropped_total"] == d.status()["counters"]["spans_closed"]
    assert st["dropped"]["retries_exhausted"] == 0 and st["dropped"]["shutdown"] == 0
    # Every span the daemon says it delivered is in the backend; the rest are the counted drops.
    stored = _wait(lambda: len(s := phoenix.spans(project)) >= st["exported"] and s, 30, "all exported spans stored")
    assert len(stored) == st["exported"]
    names = [s["name"] for s in stored]
    assert names.count("after") == 5 and names.count("before") == 5
    assert 0 < names.count("during") < 150  # the queued ones survived the outage, the rest were dropped
