"""aimass status's datacenter view, from what the cluster reports (no cluster here)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from actors.pipeline import DEFAULT_NAMESPACE as STAGES
from cluster.cli import status
from cluster.monitoring import prometheus

PAGE = """# HELP ray_aimass_datacenter_answers_total Model answers by ...
# TYPE ray_aimass_datacenter_answers_total counter
ray_aimass_datacenter_answers_total{Component="core_worker",origin="eu-west",served="eu-west"} 90.0
ray_aimass_datacenter_answers_total{Component="core_worker",origin="eu-west",served="us-east"} 10.0
ray_aimass_datacenter_answers_total{Component="core_worker",origin="us-east",served="us-east"} 50.0
ray_aimass_requests_total{model="digits"} 150.0
"""


def test_answers_are_summed_per_origin_and_shown_with_their_spillover():
    answers = status.answers_by_origin([PAGE, PAGE])  # two gateway replicas' pages
    assert answers == {("eu-west", "eu-west"): 180.0, ("eu-west", "us-east"): 20.0,
                       ("us-east", "us-east"): 100.0}  # fmt: skip
    assert status.routing_rows(answers) == [
        ("eu-west", "200", "90.0%", "us-east 10%"),
        ("us-east", "100", "100.0%", "-"),
    ]


def test_replicas_are_counted_per_datacenter_of_their_node():
    nodes = [
        SimpleNamespace(node_id="n1", labels={"ray.io/availability-region": "eu-west"}),
        SimpleNamespace(node_id="n2", labels={"ray.io/availability-region": "us-east"}),
    ]
    details = {
        "applications": {
            "models": {
                "deployments": {
                    "Predictor-eu-west": {
                        "replicas": [
                            {"node_id": "n1", "state": "RUNNING"},
                            {"node_id": "n1", "state": "STARTING"},
                        ]
                    },
                    "Gateway": {"replicas": [{"node_id": "n2", "state": "RUNNING"}]},
                }
            }
        }
    }
    found = status.replicas_by_datacenter(details, status.region_of_nodes(nodes))
    assert found == {"Predictor-eu-west": {"eu-west": 1}, "Gateway": {"us-east": 1}}


def test_metric_targets_come_from_rays_service_discovery_file(tmp_path):
    assert prometheus.node_targets(tmp_path) == []
    sd = [{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1", "127.0.0.2:2"]}]
    (tmp_path / "prom_metrics_service_discovery.json").write_text(json.dumps(sd))
    assert prometheus.node_targets(tmp_path) == ["127.0.0.1:1", "127.0.0.2:2"]


def test_sharding_actors_are_listed_by_name_with_their_datacenter():
    regions = {"n1abcdefgh": "eu-west", "n2abcdefgh": ""}
    actor = lambda name, node, ns="aimass-shards", state="ALIVE": SimpleNamespace(  # noqa: E731
        name=name, node_id=node, ray_namespace=ns, state=state
    )
    actors = [
        actor("shards:digits:replica:eu-west:n1abcdef", "n1abcdefgh"),
        actor("shards:digits:coordinator", "n2abcdefgh"),
        actor("shards:digits:replica:eu-west:n9", "n9", state="DEAD"),  # gone: not shown
        actor("Gateway", "n1abcdefgh", ns="serve"),  # another namespace: not shown
        actor("", "n1abcdefgh"),  # unnamed: not shown
        actor("stage:gpt:3:1of2", "n1abcdefgh", ns=f"{STAGES}.r7x2"),  # a replica's group
        actor("stage:gpt:3:2of2", "n2abcdefgh", ns=STAGES),
        actor("stage:gpt:3:1of2", "n2abcdefgh", ns=f"{STAGES}x"),  # not under it: not shown
    ]
    assert status.sharding_rows(actors, regions, ("aimass-shards", STAGES)) == [
        ("shards:digits:coordinator", "-", "n2abcdef", "ALIVE"),
        ("shards:digits:replica:eu-west:n1abcdef", "eu-west", "n1abcdef", "ALIVE"),
        ("stage:gpt:3:1of2", "eu-west", "n1abcdef", "ALIVE"),
        ("stage:gpt:3:2of2", "-", "n2abcdef", "ALIVE"),
    ]
