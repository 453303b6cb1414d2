import pytest
from pydantic import ValidationError

from cluster.settings import Settings
from cluster.topology import REGION_LABEL, ZONE_LABEL, Datacenter, datacenter_of


def test_defaults_bind_loopback_and_keep_state_under_home(settings_env):
    s = settings_env
    assert s.host == "127.0.0.1"
    assert s.storage_root == str(s.home / "storage")
    assert s.mlflow_uri == f"sqlite:///{s.home / 'mlflow.db'}"
    assert s.dashboard_url == "http://127.0.0.1:8265"
    assert s.head_cpus >= 4


def test_env_overrides_and_as_env_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path))
    monkeypatch.setenv("AIMASS_DASHBOARD_PORT", "9123")
    monkeypatch.setenv("AIMASS_STORAGE_URI", "s3://bucket/aimass")
    s = Settings()
    assert s.dashboard_port == 9123 and s.storage_root == "s3://bucket/aimass"
    for key, value in s.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings().as_env() == s.as_env()


def test_bad_port_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setenv("AIMASS_GCS_PORT", "80")
    with pytest.raises(ValidationError, match="gcs_port"):
        Settings()


def test_datacenter_labels_and_placement():
    dc = Datacenter(region="eu-west", zone="eu-west-a")
    assert dc.node_env() == {"RAY_NODE_REGION": "eu-west", "RAY_NODE_ZONE": "eu-west-a"}
    assert dc.label_selector() == {REGION_LABEL: "eu-west"}
    assert datacenter_of({REGION_LABEL: "eu-west", ZONE_LABEL: "eu-west-a"}) == "eu-west"
    assert datacenter_of({}) is None


@pytest.mark.parametrize("region", ["", "eu west", "../x", "a/b"])
def test_datacenter_names_must_be_label_safe(region):
    with pytest.raises(ValueError, match="region"):
        Datacenter(region=region, zone="z")


def test_topology_orders_datacenters_nearest_first_with_defaults_and_overrides():
    from cluster.topology import Topology

    topo = Topology.of(["us-east", "eu-west", "ap-south"], None)
    assert topo.nearest_first("eu-west") == ["eu-west", "us-east", "ap-south"]  # 0, 75, 120
    assert topo.nearest_first("ap-south") == ["ap-south", "eu-west", "us-east"]
    assert topo.rtt("us-east", "eu-west") == topo.rtt("eu-west", "us-east") == 75.0
    moved = Topology.of(["us-east", "eu-west", "ap-south"], {"ap-south": {"us-east": 10}})
    assert moved.nearest_first("ap-south") == ["ap-south", "us-east", "eu-west"]
    assert moved.nearest_first("us-east", among=("eu-west", "ap-south")) == [
        "ap-south",
        "eu-west",
    ]


def test_unmeasured_datacenters_come_last_in_name_order():
    from cluster.topology import Topology

    topo = Topology.of(["dc-b", "dc-a", "us-east"], {"us-east": {"dc-b": 30}})
    assert topo.nearest_first("us-east") == ["us-east", "dc-b", "dc-a"]
    assert topo.nearest_first("dc-a") == ["dc-a", "dc-b", "us-east"]  # both unknown: by name


@pytest.mark.parametrize(
    ("datacenters", "rtt", "message"),
    [
        (["us-east", "eu west"], None, "region"),
        (["us-east"], {"us-east": {"mars": 5}}, "mars"),
        (["us-east", "eu-west"], {"us-east": {"eu-west": -1}}, "negative"),
    ],
)
def test_bad_topologies_are_refused_naming_the_problem(datacenters, rtt, message):
    from cluster.topology import Topology

    with pytest.raises(ValueError, match=message):
        Topology.of(datacenters, rtt)


def test_an_unknown_datacenter_is_refused_naming_the_field():
    from cluster.topology import Topology

    topo = Topology.of(["us-east", "eu-west"], None)
    assert topo.check("eu-west", "keys.home") == "eu-west"
    with pytest.raises(ValueError, match=r"residency\[0\]: unknown datacenter 'mars'"):
        topo.check("mars", "residency[0]")
