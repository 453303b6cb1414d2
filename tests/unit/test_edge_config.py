"""The HAProxy configuration generated from an edge spec, parsed back: every rule present,
in the order the topology says, and HAProxy itself (`haproxy -c`) accepts it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster import edge

THREE_DCS = {
    "clusters": [
        {"name": "use-1", "datacenter": "us-east", "url": "http://127.0.0.1:9001", "weight": 60},
        {"name": "use-2", "datacenter": "us-east", "url": "http://127.0.0.1:9002"},
        {"name": "use-3", "datacenter": "us-east", "url": "http://127.0.0.1:9003"},
        {"name": "euw-1", "datacenter": "eu-west", "url": "http://127.0.0.1:9101"},
        {"name": "aps-1", "datacenter": "ap-south", "url": "https://aps.example.com:8443"},
    ],
    "frontends": [
        {"datacenter": "eu-west", "bind": 8081},
        {"datacenter": "ap-northeast", "bind": "127.0.0.2:8082"},  # a region with no cluster
    ],
    "global": {"bind": 8088},
    "health": {"ready_model": "digits", "interval_s": 0.5, "fall": 3, "rise": 2},
    "outliers": {"consecutive_5xx": 4},
    "failover": {"healthy_share": 0.6},
    "residency": {"keys": {"0123456789ab": ["eu-west", "ap-south"]}},
}


def sections(text: str) -> dict[str, list[str]]:
    """``{"frontend region_eu-west": [its lines, stripped, comments left out], ...}``."""
    out: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[0] != " ":
            current = line
            out[current] = []
        else:
            out[current].append(line)
    return out


@pytest.fixture
def files(tmp_path: Path) -> edge.ProcessFiles:
    return edge.ProcessFiles(tmp_path / "edge")


@pytest.fixture
def rendered(files) -> tuple[edge.EdgeSpec, dict[str, list[str]], edge.Rendered]:
    spec = edge.EdgeSpec.model_validate(THREE_DCS)
    out = edge.render(spec, files)
    return spec, sections(out.config), out


def _choices(lines: list[str], who: str) -> list[tuple[str, int]]:
    """(datacenter, clusters needed up) of the frontend's choice rules for ``who``."""
    pattern = re.compile(
        rf"http-request set-var\(txn\.dc\) str\(([\w-]+)\) if {re.escape(who)}\b.*"
        r"\{ nbsrv\(dc_([\w-]+)\) ge (\d+) \} !chosen$"
    )
    found = []
    for line in lines:
        if m := pattern.match(line):
            assert m.group(1) == m.group(2)
            found.append((m.group(1), int(m.group(3))))
    return found


def test_haproxy_accepts_it(files, rendered):
    _, _, out = rendered
    edge.write_files(files, out)
    edge.check(files.config)  # raises with HAProxy's messages otherwise


def test_rendering_is_a_pure_function(files):
    spec = edge.EdgeSpec.model_validate(THREE_DCS)
    assert edge.render(spec, files) == edge.render(spec, files)


def test_the_runtime_api_is_a_private_socket_and_no_stats_are_served(files, rendered):
    _, parsed, out = rendered
    assert (
        parsed["global"].count(
            f"stats socket {files.socket} mode 600 level admin expose-fd listeners"
        )
        == 1
    )
    every = [line for lines in parsed.values() for line in lines]
    assert [line for line in every if line.startswith("stats ")] == [
        f"stats socket {files.socket} mode 600 level admin expose-fd listeners",
        "stats timeout 30s",
    ]
    assert not [line for line in every if "prometheus" in line or line.startswith("monitor")]


def test_frontends_bind_loopback_unless_told(rendered):
    _, parsed, _ = rendered
    assert parsed["frontend region_eu-west"][0] == "bind 127.0.0.1:8081"
    assert parsed["frontend region_ap-northeast"][0] == "bind 127.0.0.2:8082"
    assert parsed["frontend global"][0] == "bind 127.0.0.1:8088"


def test_a_region_frontend_overwrites_the_origin_and_fails_over_nearest_first(rendered):
    spec, parsed, _ = rendered
    lines = parsed["frontend region_eu-west"]
    assert "http-request set-header X-Origin-Datacenter eu-west" in lines  # replaces any
    # eu-west > us-east (75 ms) > ap-south (120 ms); us-east has 3 clusters: 60 % is 2.
    assert spec.failover_order("eu-west") == ["eu-west", "us-east", "ap-south"]
    assert _choices(lines, "!restricted") == [
        ("eu-west", 1),
        ("us-east", 2),
        ("ap-south", 1),
        ("us-east", 1),  # below its healthy share, but better than nothing
    ]
    assert lines[-1] == "use_backend dc_%[var(txn.dc)] if chosen"
    # a region without a cluster of its own starts with its nearest datacenter
    ap = _choices(parsed["frontend region_ap-northeast"], "!restricted")
    assert [dc for dc, _ in ap][:3] == spec.failover_order("ap-northeast")


def test_a_restricted_key_only_ever_reaches_its_datacenters(rendered):
    _, parsed, _ = rendered
    for name in ("frontend region_eu-west", "frontend region_ap-northeast", "frontend global"):
        lines = parsed[name]
        restricted = [line for line in lines if " if restricted " in line and "set-var" in line]
        for line in restricted:  # each choice tests the key's own map entry
            dc = re.search(r"str\(([\w-]+)\)", line).group(1)
            assert f"{{ var(txn.allowed) -m reg (^|,){dc}(,|$) }}" in line
        refusal = next(line for line in lines if line.startswith("http-request return"))
        assert refusal.startswith("http-request return status 503")
        assert "hdr Retry-After 1" in refusal and refusal.endswith("if restricted !chosen")
        body = re.search(r"lf-string '(.*)'", refusal).group(1)
        assert set(json.loads(body)) == {"error", "detail", "request_id"}
        # the refusal comes before any rule that could pick a datacenter for everyone
        assert lines.index(refusal) < min(
            (i for i, line in enumerate(lines) if "if !restricted" in line), default=len(lines)
        )
    assert (
        "frontend global" in parsed and "default_backend all_clusters" in parsed["frontend global"]
    )
    assert "http-request del-header X-Origin-Datacenter" in parsed["frontend global"]


def test_the_key_is_read_as_the_gateway_reads_it_and_only_it_goes_on(files, rendered):
    _, parsed, _ = rendered
    lines = parsed["frontend region_eu-west"]
    x_api_key = lines.index(
        "http-request set-var(txn.presented) req.fhdr(x-api-key,1)"
        " if { req.fhdr(x-api-key,1) -m len gt 0 }"
    )
    bearer = next(i for i, line in enumerate(lines) if "req.fhdr(authorization,1)" in line)
    assert bearer < x_api_key  # X-API-Key, when given, wins (it is set last)
    assert lines.index("http-request del-header Authorization") > x_api_key
    assert "http-request del-header X-API-Key" in lines
    assert (
        f"http-request set-var(txn.allowed) var(txn.key_id),map({files.residency_map})"
        " if { var(txn.key_id) -m found }"
    ) in lines


def test_every_cluster_is_checked_alive_then_ready_and_ejected_after_5xx(rendered):
    spec, parsed, _ = rendered
    us = parsed["backend dc_us-east"]
    checks = [line for line in us if line.startswith("http-check")]
    assert checks == [
        "http-check connect",
        "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host aimass-edge",
        "http-check expect status 200",
        "http-check connect",
        "http-check send meth GET uri /readyz?model=digits ver HTTP/1.1 hdr Host aimass-edge",
        "http-check expect status 200",
    ]
    assert "option httpchk" in us
    assert (
        "default-server inter 500ms fall 3 rise 2 observe layer7 error-limit 4 on-error mark-down"
    ) in us
    servers = [line for line in us if line.startswith("server ")]
    assert servers == [
        "server use-1 127.0.0.1:9001 check weight 60",
        "server use-2 127.0.0.1:9002 check weight 100",
        "server use-3 127.0.0.1:9003 check weight 100",
    ]
    tls = next(line for line in parsed["backend dc_ap-south"] if line.startswith("server "))
    assert tls == (
        "server aps-1 aps.example.com:8443 check weight 100"
        " ssl verify required ca-file /etc/ssl/certs/ca-certificates.crt"
        " sni str(aps.example.com) check-sni aps.example.com"
    )


def test_the_global_split_tracks_the_checks_by_weight(rendered):
    spec, parsed, _ = rendered
    servers = [line for line in parsed["backend all_clusters"] if line.startswith("server ")]
    assert len(servers) == len(spec.clusters)
    assert servers[0] == "server use-1 127.0.0.1:9001 track dc_us-east/use-1 weight 60"
    # one check per cluster, not two
    assert not [line for line in servers if re.search(r" check( |$)", line)]
    assert "balance roundrobin" in parsed["backend all_clusters"]


def test_the_edges_own_errors_use_the_gateways_json_shape(rendered):
    _, parsed, _ = rendered
    errors = {}
    for line in parsed["defaults"]:
        if m := re.match(r"http-error status (\d+) content-type application/json(.*) "
                         r"lf-string '(.*)'$", line):  # fmt: skip
            body = json.loads(m.group(3))
            errors[int(m.group(1))] = (body, "Retry-After" in m.group(2))
    assert set(errors) >= {502, 503, 504}
    for body, _ in errors.values():
        assert set(body) == {"error", "detail", "request_id"}
        assert body["request_id"] == "%[var(txn.rid)]"
    assert errors[503][0]["error"] == "no_cluster" and errors[503][1]
    assert errors[504][0]["error"] == "upstream_timeout"
    assert "timeout server 35000ms" in parsed["defaults"]


def test_the_residency_map_holds_one_key_per_line(rendered):
    _, _, out = rendered
    assert out.residency == "0123456789ab ap-south,eu-west\n"


def test_a_datacenter_meets_its_share_with_one_cluster_of_one():
    spec = edge.EdgeSpec.model_validate(
        THREE_DCS | {"failover": {"healthy_share": 1.0}, "frontends": [THREE_DCS["frontends"][0]]}
    )
    out = sections(edge.render(spec, edge.ProcessFiles(Path("/tmp/x"))).config)
    choices = _choices(out["frontend region_eu-west"], "!restricted")
    assert choices == [("eu-west", 1), ("us-east", 3), ("ap-south", 1), ("us-east", 1)]
