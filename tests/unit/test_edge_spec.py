"""The edge spec: what a good one means, and bad ones refused by the field's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster import edge
from cluster.exceptions import ClusterError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "cluster" / "edge.example.yaml"


def _spec(**changes) -> dict:
    base = {
        "clusters": [
            {"name": "us-east-1", "datacenter": "us-east", "url": "http://127.0.0.1:8000"},
            {"name": "eu-west-1", "datacenter": "eu-west", "url": "http://127.0.0.1:8100"},
        ],
        "frontends": [{"datacenter": "us-east", "bind": 8080}],
    }
    return base | changes


def _refused(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ClusterError) as err:
        edge.load_spec(path)
    return str(err.value)


def test_the_example_spec_is_valid_and_binds_loopback():
    spec = edge.load_spec(EXAMPLE)
    assert spec.datacenters == ("us-east", "eu-west")
    assert spec.global_frontend is not None
    binds = [edge.bind_address(f.bind, spec.host) for f in spec.frontends]
    assert binds == ["127.0.0.1:8080", "127.0.0.1:8081"]
    assert spec.failover_order("eu-west") == ["eu-west", "us-east"]


def test_defaults_are_safe_and_urls_become_addresses():
    spec = edge.EdgeSpec.model_validate(_spec())
    assert spec.host == "127.0.0.1"
    assert spec.clusters[0].address == "127.0.0.1:8000" and not spec.clusters[0].tls
    tls = edge.ClusterSpec(name="a", datacenter="us-east", url="https://api.example.com")
    assert tls.address == "api.example.com:443" and tls.tls


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"clusters": [{"name": "1bad", "datacenter": "us-east", "url": "http://h:1"}]},
         "clusters.0.name"),
        ({"clusters": [{"name": "a", "datacenter": "us east", "url": "http://h:1"}]},
         "clusters.0.datacenter"),
        ({"clusters": [{"name": "a", "datacenter": "us-east", "url": "ftp://h:1"}]},
         "clusters.0.url"),
        ({"clusters": [{"name": "a", "datacenter": "us-east", "url": "http://h:1/v1"}]},
         "clusters.0.url"),
        ({"clusters": [{"name": "a", "datacenter": "us-east", "url": "http://h:1",
                        "weight": 300}]}, "clusters.0.weight"),
        ({"clusters": [{"name": "a", "datacenter": "us-east", "url": "http://h:1",
                        "wieght": 3}]}, "clusters.0.wieght"),
        ({"clusters": []}, "clusters"),
        ({"frontends": [{"datacenter": "us-east", "bind": "127.0.0.1:http"}]},
         "frontends.0.bind"),
        ({"frontends": [{"datacenter": "us-east", "bind": 8080},
                        {"datacenter": "us-east", "bind": 8081}]}, "datacenter 'us-east'"),
        ({"frontends": [{"datacenter": "us-east", "bind": 8080},
                        {"datacenter": "eu-west", "bind": "127.0.0.1:8080"}]}, "bind"),
        ({"frontends": []}, "frontends"),
        ({"health": {"interval_s": 0}}, "health.interval_s"),
        ({"health": {"ready_model": "../etc"}}, "health.ready_model"),
        ({"outliers": {"on_error": "explode"}}, "outliers.on_error"),
        ({"failover": {"healthy_share": 1.5}}, "failover.healthy_share"),
        ({"residency": {"keys": {"nothex": ["eu-west"]}}}, "residency.keys"),
        ({"residency": {"keys": {"0123456789ab": ["ap-south"]}}}, "ap-south has no cluster"),
        ({"rtt_ms": {"us-east": {"mars": 1}}}, "mars"),
    ],
)  # fmt: skip
def test_a_bad_spec_is_refused_naming_the_field(tmp_path, change, names):
    message = _refused(tmp_path, _spec(**change))
    assert names in message, message


def test_the_refusal_shows_the_value_given(tmp_path):
    message = _refused(tmp_path, _spec(failover={"healthy_share": 1.5}))
    assert "failover.healthy_share" in message and "(got 1.5)" in message


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ClusterError, match="Cannot read the edge spec"):
        edge.load_spec(tmp_path / "missing.yaml")


def test_residency_merges_the_spec_and_the_key_stores_keeping_the_stricter():
    spec = edge.EdgeSpec.model_validate(
        _spec(residency={"keys": {"0123456789ab": ["eu-west", "us-east"]}})
    )
    merged = edge.residency_of(
        spec, {"0123456789ab": ("eu-west",), "ba9876543210": ("us-east", "eu-west")}
    )
    assert merged == {"0123456789ab": "eu-west", "ba9876543210": "eu-west,us-east"}
    # two sources that share no datacenter leave the key nowhere to go, never anywhere
    none = edge.residency_of(spec, {"0123456789ab": ("ap-south",)})
    assert none == {"0123456789ab": "none"}


def test_the_edge_reads_keys_and_request_ids_as_the_gateway_does():
    """The core cannot import serve_apps: its copies of the two patterns must not drift."""
    from serve_apps._private import http
    from serve_apps.keys import _KEY_FORMAT

    without_groups = _KEY_FORMAT.pattern.replace("(", "").replace(")", "")
    assert without_groups == edge.KEY_PATTERN
    assert http._SAFE_REQUEST_ID.pattern == edge.REQUEST_ID_PATTERN


def test_the_origin_header_is_the_one_the_gateway_reads():
    from serve_apps._private.datacenters import ORIGIN_HEADER

    assert edge.ORIGIN_HEADER == ORIGIN_HEADER
