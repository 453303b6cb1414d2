"""Deploy-time checks of the datacenter config (RELIABILITY.md B11), without a cluster."""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path

import pytest
import yaml

from cluster.cli.placement_check import check_placement, cpus_by_datacenter

CONFIG = yaml.safe_load(
    Path(str(importlib.resources.files("serve_apps") / "serve_config.datacenters.yaml")).read_text()
)
CLUSTER = {"us-east": 2.0, "eu-west": 2.0, "ap-south": 2.0, "local": 4.0}


def _changed(edit) -> dict:
    config = copy.deepcopy(CONFIG)
    edit(config["applications"][0])
    return config


def test_the_shipped_datacenter_config_places_on_a_three_datacenter_cluster():
    assert check_placement(CONFIG, CLUSTER) == []


def test_an_unknown_datacenter_is_refused_naming_the_field():
    problems = check_placement(CONFIG, {"us-east": 2.0, "eu-west": 2.0})
    assert problems == [
        "applications[0].args.datacenters[2]: no node is in datacenter 'ap-south' "
        "(datacenters with nodes: eu-west, us-east)"
    ]


def test_residency_naming_no_datacenter_of_the_application_is_refused():
    config = _changed(
        lambda app: app["deployments"][0]["user_config"]["datacenters"].update(
            tenants={"acme": ["eu-west", "mars"]}
        )
    )
    [problem] = check_placement(config, CLUSTER)
    assert problem.startswith(
        "applications[0].deployments[0].user_config.datacenters.tenants.acme[1]"
    )
    assert "'mars' is not one of args.datacenters" in problem


def test_minimums_over_a_datacenters_capacity_are_refused():
    def more(app):
        app["deployments"][2]["autoscaling_config"] = {"min_replicas": 6, "max_replicas": 6}

    [problem] = check_placement(_changed(more), CLUSTER)
    assert "deployments[2].autoscaling_config.min_replicas" in problem
    assert "need 2.4 CPUs; its nodes have 2" in problem


def test_a_predictor_must_be_pinned_to_its_own_datacenter():
    def unpinned(app):
        app["deployments"][1]["ray_actor_options"] = {"num_cpus": 0.4}

    [problem] = check_placement(_changed(unpinned), CLUSTER)
    assert problem.startswith("applications[0].deployments[1].ray_actor_options.label_selector")


def test_a_predictor_without_its_datacenter_in_the_args_is_refused():
    config = _changed(lambda app: app["args"].update(datacenters=["us-east", "eu-west"]))
    [problem] = check_placement(config, CLUSTER)
    assert "'Predictor-ap-south' has no datacenter in args.datacenters" in problem


@pytest.mark.parametrize("alive", [True, False])
def test_cpus_are_counted_per_region_of_live_nodes(alive):
    nodes = [
        {
            "Alive": True,
            "Labels": {"ray.io/availability-region": "eu-west"},
            "Resources": {"CPU": 2},
        },
        {
            "Alive": alive,
            "Labels": {"ray.io/availability-region": "eu-west"},
            "Resources": {"CPU": 1},
        },
        {"Alive": True, "Labels": {}, "Resources": {"CPU": 8}},
    ]
    assert cpus_by_datacenter(nodes) == {"eu-west": 3.0 if alive else 2.0}
