"""Where requests are served, without Ray: origin first, nearest next, residency always."""

from __future__ import annotations

import pytest

from cluster.topology import Topology
from serve_apps._private.datacenters import DatacenterHealth, Reach, reach, serving_order
from serve_apps._private.http import ApiError

TOPOLOGY = Topology.of(["us-east", "eu-west", "ap-south"], None)  # eu-west: 75 us, 120 ap


def _reach(header=None, home=None, key=None, tenant=None) -> Reach:
    return reach(TOPOLOGY, header, home, key, tenant, default="us-east", who="key k1")


def test_the_origin_comes_from_the_edge_then_the_key_home_then_the_gateway():
    assert _reach(header="ap-south", home="eu-west").origin == "ap-south"
    assert _reach(home="eu-west").origin == "eu-west"
    assert _reach().origin == "us-east"


def test_an_origin_header_naming_no_datacenter_is_a_400_naming_them():
    with pytest.raises(ApiError) as err:
        _reach(header="mars")
    assert err.value.status == 400 and "us-east, eu-west, ap-south" in err.value.detail


def test_requests_are_served_at_their_origin_first_then_nearest():
    everywhere = lambda dc: True  # noqa: E731
    assert serving_order(_reach(header="eu-west"), TOPOLOGY, everywhere) == (
        "eu-west",
        "us-east",
        "ap-south",
    )
    assert serving_order(_reach(header="ap-south"), TOPOLOGY, everywhere)[:2] == (
        "ap-south",
        "eu-west",
    )


def test_unusable_datacenters_are_skipped():
    order = serving_order(_reach(header="eu-west"), TOPOLOGY, lambda dc: dc != "eu-west")
    assert order == ("us-east", "ap-south")


def test_residency_is_the_intersection_of_key_and_tenant_and_is_never_left():
    request = _reach(header="us-east", key=("eu-west", "ap-south"), tenant=("eu-west",))
    assert request.allowed == {"eu-west"}
    assert serving_order(request, TOPOLOGY, lambda dc: True) == ("eu-west",)
    with pytest.raises(ApiError) as err:  # eu-west down: refused, not served elsewhere
        serving_order(request, TOPOLOGY, lambda dc: dc != "eu-west")
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert "key k1 is restricted to eu-west" in err.value.detail


def test_a_key_and_tenant_with_no_datacenter_in_common_are_never_served():
    request = _reach(key=("us-east",), tenant=("eu-west",))
    with pytest.raises(ApiError, match="share none"):
        serving_order(request, TOPOLOGY, lambda dc: True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_eject_a_datacenter_for_a_while_then_it_is_tried_again():
    clock = Clock()
    health = DatacenterHealth(eject_after=2, eject_for_s=10, clock=clock)
    health.failed("eu-west")
    assert health.usable("eu-west")  # one failure is not a pattern
    health.failed("eu-west")
    assert not health.usable("eu-west") and health.ejected() == ["eu-west"]
    clock.now += 10.5
    assert health.usable("eu-west")  # half-open: one request tries it
    health.succeeded("eu-west")
    health.failed("eu-west")
    assert health.usable("eu-west")  # the count started over


def test_a_datacenter_without_running_replicas_is_not_usable():
    health = DatacenterHealth()
    assert health.usable("eu-west")  # no report yet: everything may be tried
    health.running = {"eu-west": 0, "us-east": 2}
    assert not health.usable("eu-west") and health.usable("us-east")
    assert not health.usable("ap-south")  # not reported: its deployment is gone
