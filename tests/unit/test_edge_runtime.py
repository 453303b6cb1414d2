"""The edge on a real HAProxy in front of two tiny local HTTP backends (no Ray): region
preference and failover, the runtime API (weight, drain, ready, residency) with no
connection dropped, residency refusals, the edge's own JSON errors, outlier ejection."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cluster import edge
from cluster.local import free_port

KEY_EU = "amk_0123456789ab_" + "e" * 32  # restricted to eu-west by the spec
KEY_ANY = "amk_ba9876543210_" + "a" * 32


def wait_until(condition, timeout_s: float = 10.0, what: str = "the condition"):
    """Poll ``condition`` until it is truthy (its value), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} did not hold within {timeout_s} s")


@dataclass
class Backend:
    """A stand-in for one cluster's model API: /healthz, /readyz, and POSTs that echo the
    headers they got, answered from ``region``."""

    region: str
    ready: bool = True
    status: int = 200  # what POSTs answer
    delay_s: float = 0.0
    port: int = 0
    in_flight: int = 0  # POSTs being answered now

    def handler(self):
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Served-Region", backend.region)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server's name)
                ok = self.path == "/healthz" or (self.path.startswith("/readyz") and backend.ready)
                self._answer(200 if ok else 503, {"path": self.path})

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                backend.in_flight += 1
                time.sleep(backend.delay_s)
                backend.in_flight -= 1
                self._answer(backend.status, {"headers": dict(self.headers.items())})

            def log_message(self, *_):
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # health checks close their connections with a reset: not worth a traceback


@pytest.fixture(scope="module")
def backends():
    servers, made = [], {}
    for region in ("us-east", "eu-west"):
        backend = Backend(region)
        server = _QuietServer(("127.0.0.1", 0), backend.handler())
        backend.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        made[region] = backend
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class RunningEdge:
    spec: edge.EdgeSpec
    folder: Path
    ports: dict[str, int]  # frontend -> port

    def post(self, frontend: str, headers: dict | None = None, conn=None):
        """POST through a frontend; (status, headers, body)."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.ports[frontend], timeout=10)
        try:
            conn.request("POST", "/v1/models/digits/predict", body=b"{}", headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read())
        finally:
            if own:
                conn.close()

    def served_by(self, frontend: str, headers: dict | None = None) -> str | None:
        status, head, _ = self.post(frontend, headers)
        return head.get("x-served-region") if status == 200 else None

    def states(self) -> dict[tuple[str, str], str]:
        return {(r.backend, r.server): r.status for r in edge.runtime(self.folder).servers()}


def _spec(backends, ports, **changes) -> edge.EdgeSpec:
    return edge.EdgeSpec.model_validate(
        {
            "clusters": [
                {"name": f"{dc}-1", "datacenter": dc, "url": f"http://127.0.0.1:{b.port}"}
                for dc, b in backends.items()
            ],
            "frontends": [{"datacenter": dc, "bind": ports[dc]} for dc in ("us-east", "eu-west")],
            "global": {"bind": ports["global"]},
            "health": {"interval_s": 0.25, "fall": 2, "rise": 2, "ready_model": "digits"},
            "outliers": {"consecutive_5xx": 3},
            "timeouts": {"server_s": 1.5},
            "residency": {"keys": {"0123456789ab": ["eu-west"]}},
        }
        | changes
    )


@pytest.fixture
def running(backends, tmp_path):
    for b in backends.values():
        b.ready, b.status, b.delay_s = True, 200, 0.0
    ports = {name: free_port() for name in ("us-east", "eu-west", "global")}
    spec, folder = _spec(backends, ports), tmp_path / "edge"
    started = edge.up(spec, folder)
    assert not started.reloaded
    running = RunningEdge(spec, folder, ports)
    wait_until(lambda: set(running.states().values()) == {"UP"}, what="every server UP")
    try:
        yield running
    finally:
        assert edge.down(folder)
    assert edge.master(edge.ProcessFiles(folder)) is None


def test_each_region_is_served_at_home_and_told_where_it_entered(running):
    status, head, body = running.post(
        "us-east",
        {"X-Origin-Datacenter": "ap-south", "Authorization": f"Bearer {KEY_ANY}",
         "X-Request-ID": "client-id-1"},
    )  # fmt: skip
    got = {k.lower(): v for k, v in body["headers"].items()}
    assert status == 200 and head["x-served-region"] == "us-east"
    assert got["x-origin-datacenter"] == "us-east"  # the client's value overwritten
    assert got["x-api-key"] == KEY_ANY and "authorization" not in got  # one key goes on
    assert got["x-request-id"] == "client-id-1" and head["x-request-id"] == "client-id-1"
    assert running.served_by("eu-west") == "eu-west"
    # an unsafe request id is replaced by the edge's own, which the answer carries
    _, head, body = running.post("eu-west", {"X-Request-ID": "bad id\x7f"})
    got = {k.lower(): v for k, v in body["headers"].items()}
    assert head["x-request-id"] == got["x-request-id"] != "bad id\x7f"


def test_the_runtime_api_is_a_private_socket(running):
    files = edge.ProcessFiles(running.folder)
    assert files.socket.stat().st_mode & 0o777 == 0o600
    assert files.folder.stat().st_mode & 0o777 == 0o700
    assert edge.runtime(running.folder).info()["Name"] == "HAProxy"


def test_weight_drain_and_ready_change_traffic_on_an_open_connection(running):
    conn = http.client.HTTPConnection("127.0.0.1", running.ports["global"], timeout=10)
    conn.connect()
    socket_before = conn.sock

    def split(n: int = 20) -> Counter:
        return Counter(running.post("global", conn=conn)[1]["x-served-region"] for _ in range(n))

    assert split() == {"us-east": 10, "eu-west": 10}  # equal weights, round robin
    rows = edge.set_weight(running.folder, "eu-west-1", 0)
    assert {r.weight for r in rows} == {0} and {r.backend for r in rows} == {
        "dc_eu-west",
        "all_clusters",
    }
    assert split() == {"us-east": 20}
    edge.set_weight(running.folder, "eu-west-1", 100)
    edge.set_weight(running.folder, "us-east-1", 300 // 3)
    assert split() == {"us-east": 10, "eu-west": 10}

    edge.set_state(running.folder, "us-east-1", edge.AdminState.DRAIN)
    assert running.states()[("dc_us-east", "us-east-1")] == "DRAIN"
    assert running.served_by("us-east") == "eu-west"  # its region fails over
    assert split(6) == {"eu-west": 6}
    edge.set_state(running.folder, "us-east-1", edge.AdminState.READY)
    assert running.served_by("us-east") == "us-east"
    assert conn.sock is socket_before  # one connection all along: nothing was dropped
    conn.close()
    with pytest.raises(Exception, match="No cluster 'mars-1'"):
        edge.set_weight(running.folder, "mars-1", 1)


def test_a_reload_keeps_requests_in_flight_and_runtime_changes(running, backends):
    edge.set_state(running.folder, "eu-west-1", edge.AdminState.DRAIN)
    backends["us-east"].delay_s = 1.0
    result = {}
    slow = threading.Thread(target=lambda: result.update(answer=running.post("us-east")))
    slow.start()
    wait_until(lambda: backends["us-east"].in_flight == 1, what="the request at the backend")
    changed = _spec(backends, running.ports, slowstart_s=1)
    again = edge.up(changed, running.folder)
    assert again.reloaded
    slow.join(timeout=10)
    assert result["answer"][0] == 200  # the old worker finished it
    assert running.states()[("dc_eu-west", "eu-west-1")] == "DRAIN"  # kept over the reload


def test_a_restricted_key_is_refused_rather_than_served_elsewhere(running, backends):
    eu_key = {"X-API-Key": KEY_EU}
    assert running.served_by("us-east", eu_key) == "eu-west"  # its only datacenter
    assert running.served_by("global", eu_key) == "eu-west"
    backends["eu-west"].ready = False  # /readyz fails: checks take it out
    wait_until(lambda: running.states()[("dc_eu-west", "eu-west-1")] == "DOWN", what="DOWN")
    for frontend in ("us-east", "eu-west", "global"):
        status, head, body = running.post(frontend, eu_key | {"X-Request-ID": "r-eu"})
        assert status == 503 and head["retry-after"] == "1"
        assert head["content-type"] == "application/json"
        assert body == {
            "error": "no_cluster",
            "detail": "key 0123456789ab is restricted to eu-west, and no cluster there can "
            "answer now.",
            "request_id": "r-eu",
        }
    # the same key in a Bearer header, or with its case bent, is the same key
    status, _, _ = running.post("us-east", {"Authorization": f"bearer {KEY_EU}"})
    assert status == 503
    assert running.served_by("eu-west", {"X-API-Key": KEY_ANY}) == "us-east"  # others go on

    # residency changed at runtime: a second key now restricted to us-east
    changes = edge.sync_residency(
        running.folder, {"0123456789ab": "eu-west", "ba9876543210": "us-east"}
    )
    assert changes == {"added": ["ba9876543210"], "changed": [], "removed": []}
    assert running.served_by("global", {"X-API-Key": KEY_ANY}) == "us-east"
    files = edge.ProcessFiles(running.folder)
    assert "ba9876543210 us-east" in files.residency_map.read_text()


def test_the_edges_own_errors_are_json_with_the_request_id(running, backends):
    backends["us-east"].delay_s = 3.0  # past timeouts.server_s (1.5 s)
    status, head, body = running.post("us-east", {"X-Request-ID": "slow-1"})
    assert status == 504 and body == {
        "error": "upstream_timeout",
        "detail": "The cluster did not answer in time.",
        "request_id": "slow-1",
    }
    backends["us-east"].delay_s = 0.0
    for b in backends.values():
        b.ready = False
    wait_until(lambda: set(running.states().values()) == {"DOWN"}, what="all DOWN")
    status, head, body = running.post("eu-west", {"X-Request-ID": "none-up"})
    assert status == 503 and head["retry-after"] == "1"
    assert body == {
        "error": "no_cluster",
        "detail": "No cluster can answer now.",
        "request_id": "none-up",
    }


def test_consecutive_5xx_eject_a_cluster_before_its_checks_notice(running, backends):
    backends["us-east"].status = 500  # its checks still pass: only answers show it
    seen = [running.post("us-east")[0] for _ in range(3)]
    assert seen == [500, 500, 500]
    # ejected on the third: the region's next requests go to eu-west
    wait_until(lambda: running.served_by("us-east") == "eu-west", what="ejection")
    backends["us-east"].status = 200
    # its checks pass `rise` times: it is back
    wait_until(lambda: running.served_by("us-east") == "us-east", what="return")


def test_status_and_runtime_changes_need_a_running_edge(tmp_path):
    with pytest.raises(Exception, match="No edge runs from"):
        edge.set_weight(tmp_path, "us-east-1", 1)
    assert not edge.down(tmp_path)
