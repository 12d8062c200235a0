"""OTLP export without a backend: ids, trace joining, encoding, delivery failures, config, the client helper.

The encoded requests are decoded with the same generated protobuf classes a
collector uses; delivery failures are real (a closed port, a real HTTP server
that answers 400 or reports partial success).  The test against a real trace
backend is tests/test_otlp_phoenix.py.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2", reason="opentelemetry-proto is not installed")

from gpuos_hintd.clients import Client, TokenBucket
from gpuos_hintd.config import Config, load
from gpuos_hintd.errors import ConfigError
from gpuos_hintd.export.otlp import OtlpExporter, parse_resource_env, traces_url
from gpuos_hintd.export.tracecontext import parse_traceparent, span_id_for, trace_id_for
from gpuos_hintd.model import ProcKey, SpanRow
from gpuos_hintd.service import HintService
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
POD = "3f2a1b4c-1234-4e5f-8a9b-0123456789ab"
CID = "ab" * 32
CGROUP = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service(tmp: Path) -> HintService:
    return HintService(Config(state_dir=tmp), None)


def _client(svc: HintService, key: ProcKey, cgroup: str = CGROUP) -> None:
    now = time.monotonic_ns()
    svc.clients[key] = Client(
        key, 1000, 1000, "vllm", ["vllm"], cgroup, None, time.time_ns(), now, now, TokenBucket(1e6, 1e6)
    )


def _row(svc: HintService, key: ProcKey, sid: int, parent: int, name: str, depth: int, **kw: Any) -> SpanRow:
    t = time.time_ns()
    return SpanRow(
        svc.boot_id, key.pid, key.start, sid, parent, 7, name, name, depth, "inference.decode",
        kw.pop("attrs", None), 1_000 * sid, 1_000 * sid + 500, t, kw.pop("status", "ok"), **kw,
    )  # fmt: skip


def _decode(body: bytes) -> Any:
    return trace_service_pb2.ExportTraceServiceRequest.FromString(body)


def _attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        v = getattr(kv.value, which)
        out[kv.key] = [getattr(x, x.WhichOneof("value")) for x in v.values] if which == "array_value" else v
    return out


def test_traceparent_is_validated_strictly() -> None:
    r = parse_traceparent(TP)
    assert r is not None and r.trace_id.hex() == TP[3:35] and r.span_id.hex() == TP[36:52] and r.flags == 1
    for bad in (
        TP.upper(),
        "01" + TP[2:],  # another version
        TP[:-1],
        "00-" + "0" * 32 + TP[35:],  # all-zero trace id
        TP[:36] + "0" * 16 + "-01",  # all-zero span id
        TP + "\n",
        None,
        42,
        b"00-" + TP[3:].encode(),
    ):
        assert parse_traceparent(bad) is None, bad


def test_ids_are_deterministic_and_distinct() -> None:
    a = span_id_for("boot", 10, 99, 1)
    assert a == span_id_for("boot", 10, 99, 1) and len(a) == 8
    assert len({a, span_id_for("boot", 10, 99, 2), span_id_for("boot", 10, 100, 1), span_id_for("b2", 10, 99, 1)}) == 4
    t = trace_id_for("boot", 10, 99, 1)
    assert len(t) == 16 and t == trace_id_for("boot", 10, 99, 1) and t[:8] != a


def test_encoding_trace_joining_and_resource(tmp_path: Path) -> None:
    """Children before parents, across batches, through an open parent; a joined and a local tree."""
    svc = _service(tmp_path)
    key = ProcKey(4242, 777)
    _client(svc, key)
    ex = OtlpExporter(svc, "http://127.0.0.1:9", resource={"k8s.node.name": "gpu-node-1"})
    # tree 1: req (traceparent) > prefill > matmul; matmul is finalised while prefill is still open
    ex.on_tick(svc)
    svc.correlator.begin(key, _row(svc, key, 1, 0, "req", 1, status="open", attrs={"traceparent": TP}))
    svc.correlator.begin(key, _row(svc, key, 2, 1, "prefill", 2, status="open"))
    ex.on_spans([_row(svc, key, 3, 2, "matmul", 3, signals={"cpu_user_ns": 1200, "gpu_energy_j": 0.25})])
    svc.correlator.spans[key].clear()
    ex.on_spans(
        [_row(svc, key, 2, 1, "prefill", 2), _row(svc, key, 1, 0, "req", 1, attrs={"traceparent": TP, "batch": 8})]
    )
    # tree 2: no traceparent; a bad one on tree 3
    ex.on_spans([_row(svc, key, 11, 10, "step", 2, status="error"), _row(svc, key, 10, 0, "train", 1)])
    ex.on_spans(
        [_row(svc, key, 20, 0, "evil", 1, attrs={"traceparent": "00-zz"}, dev_start_ns=20_100, dev_end_ns=20_400)]
    )
    assert ex.status()["queued"] == 6 and ex.traceparent_joined == 1 and ex.traceparent_invalid == 1
    req = _decode(ex.encode(ex._take()))
    assert len(req.resource_spans) == 1
    res = _attrs(req.resource_spans[0].resource.attributes)
    assert res["k8s.pod.uid"] == POD and res["container.id"] == CID and res["container.runtime"] == "containerd"
    assert res["gpuos.k8s.qos_class"] == "burstable" and res["k8s.node.name"] == "gpu-node-1"
    assert res["service.name"] == "vllm" and res["process.pid"] == 4242 and res["gpuos.host.boot_id"] == svc.boot_id
    spans = {s.name: s for s in req.resource_spans[0].scope_spans[0].spans}
    remote = parse_traceparent(TP)
    assert remote is not None
    for name in ("req", "prefill", "matmul"):
        assert spans[name].trace_id == remote.trace_id, name
    assert spans["req"].parent_span_id == remote.span_id
    assert spans["req"].flags & 0x300 == 0x300  # the parent is remote
    assert spans["prefill"].parent_span_id == spans["req"].span_id
    assert spans["matmul"].parent_span_id == spans["prefill"].span_id
    assert spans["train"].trace_id == trace_id_for(svc.boot_id, 4242, 777, 10) == spans["step"].trace_id
    assert spans["train"].parent_span_id == b"" and spans["step"].parent_span_id == spans["train"].span_id
    assert spans["evil"].parent_span_id == b"" and spans["evil"].trace_id == trace_id_for(svc.boot_id, 4242, 777, 20)
    assert (
        spans["step"].status.code == spans["step"].status.STATUS_CODE_ERROR and spans["step"].status.message == "error"
    )
    assert spans["req"].status.code == spans["req"].status.STATUS_CODE_OK
    m = _attrs(spans["matmul"].attributes)
    assert m["gpuos.signal.cpu_user_ns"] == 1200 and m["gpuos.signal.gpu_energy_j"] == 0.25
    assert m["gpuos.phase.depth"] == 3 and m["gpuos.workload_class"] == "inference.decode"
    assert spans["matmul"].end_time_unix_nano - spans["matmul"].start_time_unix_nano == 500
    r = _attrs(spans["req"].attributes)
    assert r["gpuos.phase.attr.batch"] == 8 and "gpuos.phase.attr.traceparent" not in r
    e = _attrs(spans["evil"].attributes)
    assert e["gpuos.device.duration_ns"] == 300 and e["gpuos.device.offset_ns"] == 100
    # exporting the same rows again gives the same ids (idempotent re-export)
    ex2 = OtlpExporter(svc, "http://127.0.0.1:9")
    ex2.on_spans([_row(svc, key, 11, 10, "step", 2), _row(svc, key, 10, 0, "train", 1)])
    again = {s.name: s for s in _decode(ex2.encode(ex2._take())).resource_spans[0].scope_spans[0].spans}
    assert again["step"].span_id == spans["step"].span_id and again["step"].trace_id == spans["step"].trace_id


def test_dead_backend_counts_every_span(tmp_path: Path) -> None:
    """A closed port: retried with backoff, then dropped as retries_exhausted; a full queue drops at once."""
    svc = _service(tmp_path)
    key = ProcKey(4243, 1)
    ex = OtlpExporter(
        svc, f"http://127.0.0.1:{_free_port()}", queue_spans=10, batch_spans=4, max_retry_s=0.6, backoff_initial_s=0.05
    ).attach()
    t0 = time.perf_counter()
    ex.on_spans([_row(svc, key, i, 0, "p", 1) for i in range(1, 31)])
    cost = time.perf_counter() - t0
    deadline = time.monotonic() + 20
    while (ex.status()["queued"] or ex.in_flight) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = ex.status()
    ex.close(0.5)
    assert st["offered"] == 30 and st["exported"] == 0
    assert st["dropped"]["queue_full"] == 20 and st["dropped"]["retries_exhausted"] == 10
    assert st["offered"] == st["exported"] + st["dropped_total"] + st["queued"] + st["in_flight"]
    assert st["retries"] >= 3 and st["backend_up"] is False and "Connection" in (st["last_error"] or "")
    assert cost < 0.1  # the sink only queues; 30 spans take well under a millisecond normally


class _Backend(http.server.BaseHTTPRequestHandler):
    mode = "ok"
    bodies: list[bytes] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        if type(self).mode == "400":
            self.send_response(400)
            self.end_headers()
            return
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if type(self).mode == "partial":
            resp.partial_success.rejected_spans = 1
            resp.partial_success.error_message = "one bad span"
        data = resp.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[tuple[str, type[_Backend]]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Backend.bodies = []
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Backend
    srv.shutdown()


def _drain(ex: OtlpExporter) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (ex.status()["queued"] or ex.in_flight) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ex.status()


def test_backend_answers_ok_400_and_partial_success(tmp_path: Path, backend: tuple[str, type[_Backend]]) -> None:
    url, handler = backend
    svc = _service(tmp_path)
    key = ProcKey(4244, 1)
    ex = OtlpExporter(svc, url, batch_spans=100).attach()
    ex.on_spans([_row(svc, key, i, 0, "p", 1) for i in range(1, 4)])
    assert _drain(ex)["exported"] == 3 and handler.bodies and _decode(handler.bodies[0]).resource_spans
    handler.mode = "partial"
    ex.on_spans([_row(svc, key, i, 0, "p", 1) for i in range(4, 6)])
    st = _drain(ex)
    assert st["exported"] == 4 and st["dropped"]["rejected_by_backend"] == 1
    handler.mode = "400"
    ex.on_spans([_row(svc, key, i, 0, "p", 1) for i in range(6, 9)])
    st = _drain(ex)
    ex.close(0.5)
    assert st["exported"] == 4 and st["dropped"]["rejected_by_backend"] == 4 and st["retries"] == 0
    assert st["offered"] == 8 == st["exported"] + st["dropped_total"]
    handler.mode = "ok"


def test_config_section_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('sample_hz = 5\n[otlp]\nendpoint = "http://10.0.0.1:4318"\nqueue_spans = 100\n')
    cfg = load(cfg_file)
    assert cfg.otlp_endpoint == "http://10.0.0.1:4318" and cfg.otlp_queue_spans == 100 and cfg.sample_hz == 5
    assert traces_url(cfg.otlp_endpoint) == "http://10.0.0.1:4318/v1/traces"
    assert traces_url("https://c.example:443/otlp/v1/traces") == "https://c.example:443/otlp/v1/traces"
    assert Config().otlp_endpoint == ""  # off by default
    cfg_file.write_text('[otlp]\nendpoint = "grpc://x"\n')
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load(cfg_file)
    cfg_file.write_text("[otlp]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="otlp_bogus"):
        load(cfg_file)
    monkeypatch.setenv("GPUOS_HINT_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert load(None).otlp_endpoint == "http://127.0.0.1:4318"
    assert parse_resource_env("k8s.node.name=n1, deployment.environment=prod%20eu,bad,=x") == {
        "k8s.node.name": "n1",
        "deployment.environment": "prod eu",
    }


def _py(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_client_traceparent_costs_nothing_without_opentelemetry() -> None:
    out = _py(
        """
        import sys, timeit
        from gpuos_client._otel import current_traceparent
        assert current_traceparent() is None
        assert not any(m.startswith("opentelemetry") for m in sys.modules)
        n = 200_000
        print(min(timeit.repeat(current_traceparent, number=n, repeat=5)) / n * 1e9)
        """
    )
    assert float(out) < 1000  # ns per call: one dict lookup (~50-100 ns on this machine)


def test_client_traceparent_of_the_current_sdk_span() -> None:
    out = _py(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from gpuos_client._otel import current_traceparent
        trace.set_tracer_provider(TracerProvider())
        assert current_traceparent() is None  # no span open
        with trace.get_tracer("t").start_as_current_span("request") as s:
            c = s.get_span_context()
            print(current_traceparent(), f"{c.trace_id:032x}", f"{c.span_id:016x}", f"{int(c.trace_flags):02x}")
        """
    )
    tp, trace_hex, span_hex, flags = out.split()
    assert tp == f"00-{trace_hex}-{span_hex}-{flags}" and int(flags, 16) & 1  # sampled (and maybe W3C "random")
    assert parse_traceparent(tp) is not None


def test_fleet_metrics_identity_labels_are_bounded(tmp_path: Path) -> None:
    """pod/container/unit series: at most top_k labelled + __other__, and their sum is every span."""
    pc = pytest.importorskip("prometheus_client")
    from gpuos_hintd.export.prom import FleetCollector
    from prometheus_client.parser import text_string_to_metric_families

    svc = _service(tmp_path)
    registry = pc.CollectorRegistry(auto_describe=False)
    fleet = FleetCollector(svc, top_k=2).attach(registry)
    rows = []
    for i in range(5):  # five pods, pod i sends i + 1 spans
        key = ProcKey(5000 + i, 1)
        uid = f"{i:08x}-0000-4000-8000-000000000000"
        _client(svc, key, f"/kubepods/burstable/pod{uid}/{i:064x}")
        rows += [_row(svc, key, s, 0, "p", 1) for s in range(1, i + 2)]
    svc.sinks[0](rows)

    def scrape() -> dict[tuple[str, str, str], float]:
        fleet.on_tick(svc)
        fams = {f.name: f for f in text_string_to_metric_families(pc.generate_latest(registry).decode())}
        assert "gpuos_hintd_otlp_spans_exported" not in fams  # no exporter attached: no OTLP series
        return {
            (s.labels["pod_uid"], s.labels["container"], s.labels["unit"]): s.value
            for s in fams["gpuos_workload_spans"].samples
            if s.name.endswith("_total")
        }

    pod = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(5)]
    short = [f"{i:064x}"[:12] for i in range(5)]
    # At the tick the two busiest pods (4 and 3) take the labels; what was counted so far stays in
    # __other__ (series only ever grow), so the sum is still every span.
    assert scrape() == {(pod[4], short[4], ""): 0, (pod[3], short[3], ""): 0, ("__other__",) * 3: 15}
    svc.sinks[0]([_row(svc, ProcKey(5004, 1), 100, 0, "p", 1), _row(svc, ProcKey(5000, 1), 100, 0, "p", 1)])
    assert scrape() == {(pod[4], short[4], ""): 1, (pod[3], short[3], ""): 0, ("__other__",) * 3: 16}


def test_daemon_exports_interrupted_spans_on_stop(
    tmp_path: Path, backend: tuple[str, type[_Backend]], daemon_factory: Any
) -> None:
    """A real daemon stopped (SIGTERM) with a phase open: the span, closed as interrupted, is delivered."""
    url, handler = backend
    d = daemon_factory(f'[otlp]\nendpoint = "{url}"\n')
    client = d.client(
        "import gpuos_client as h, sys, time\n"
        "with h.phase('done'):\n    pass\n"
        "p = h.phase('serving'); p.__enter__(); h.flush()\n"
        "print('open', flush=True); sys.stdin.readline()\n",
        wait=False,
    )
    assert client.stdout is not None and client.stdout.readline().strip() == b"open"
    d.wait_for(lambda: any(c["open_phases"] for c in d.status()["clients"]), what="the open phase")
    assert d.stop() == 0
    client.kill()
    client.wait()
    spans = {
        s.name: s for b in handler.bodies for rs in _decode(b).resource_spans for ss in rs.scope_spans for s in ss.spans
    }
    assert set(spans) == {"done", "serving"}
    assert (
        spans["serving"].status.message == "interrupted"
        and spans["done"].status.code == spans["done"].status.STATUS_CODE_OK
    )
    assert '"otlp_stopped"' in d.log() and '"exported": 2' in d.log()


def test_gpu_uuids_from_the_nvml_sampler_reach_the_resource(tmp_path: Path) -> None:
    """The real NVML sampler on replayed readings (tests/data/nvml, a flagged synthetic fixture)."""
    pytest.importorskip("pynvml")
    from gpuos_hintd.samplers.nvml import NVMLSampler
    from gpuos_hintd.samplers.nvml_replay import ReplayNVML

    replay = ReplayNVML(Path(__file__).parent / "data" / "nvml" / "synthetic_two_gpus.json")
    svc = HintService(Config(state_dir=tmp_path), None, [NVMLSampler(backend=replay)])
    want = sorted(d["uuid"] for st in svc.samplers if st.available for d in st.sampler.devices())
    assert len(want) == 2
    key = ProcKey(4245, 1)
    _client(svc, key, "/system.slice/vllm.service")
    ex = OtlpExporter(svc, "http://127.0.0.1:9")
    ex.on_tick(svc)
    ex.on_spans([_row(svc, key, 1, 0, "p", 1)])
    res = _attrs(_decode(ex.encode(ex._take())).resource_spans[0].resource.attributes)
    assert res["gpuos.gpu.uuids"] == want and res["gpuos.systemd.unit"] == "vllm.service"
    assert "k8s.pod.uid" not in res and "container.id" not in res
