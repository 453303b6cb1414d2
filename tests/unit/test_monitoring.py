"""The cluster's Prometheus setup: the shipped rules, its config, and promtool's verdict."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.monitoring import alerts, prometheus
from cluster.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool comes with Prometheus: `make prometheus` installs it"
)


def _defaults() -> Settings:
    return Settings.model_construct()  # the fields' defaults, no AIMASS_* variable read


def test_the_shipped_rules_are_the_defaults_rendering():
    d = _defaults()
    rendered = alerts.render(d.alert_window_s, d.alert_for_s, d.alert_p99_ms, d.drift_alert_psi)
    assert alerts.SHIPPED.read_text() == rendered, (
        "cluster/monitoring/alerts.yml is stale: regenerate it with "
        "alerts.render() and the Settings' defaults"
    )


def test_windows_and_holds_come_from_the_settings():
    text = alerts.render(30, 0, 250.0, 0.3)
    rules = {r["alert"]: r for r in yaml.safe_load(text)["groups"][0]["rules"]}
    assert {r["for"] for r in rules.values()} == {"0s"}
    assert "[30s]" in rules["AimassModelErrorRate"]["expr"]
    assert rules["AimassLatencyP99OverBudget"]["expr"].endswith("> 250")
    assert rules["AimassInputDrift"]["expr"].endswith("> 0.3")
    slow = yaml.safe_load(alerts.render(300, 120, 500.0, 0.2))["groups"][0]["rules"]
    held = {r["alert"]: r["for"] for r in slow}
    assert held["AimassModelErrorRate"] == "120s"
    assert held["AimassReleaseRolledBack"] == "0s"  # an event: no condition to hold


@needs_promtool
def test_promtool_accepts_the_rules_and_the_config(tmp_path):
    settings = Settings(home=tmp_path, prometheus_port=19190)
    config = prometheus.write_config(settings)
    for args in (["check", "rules", str(alerts.SHIPPED)], ["check", "config", str(config)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_config_scrapes_rays_discovery_file_and_loads_the_rules(tmp_path):
    # Every field it reads is given: the e2e tests leave the session cluster's AIMASS_* set.
    settings = Settings(
        home=tmp_path, host="127.0.0.1", gcs_port=6399, prometheus_port=9190, prometheus_scrape_s=7
    )
    config = prometheus.config(settings)
    assert config["rule_files"] == [str(tmp_path / "prometheus" / "alerts.yml")]
    sd = config["scrape_configs"][0]["file_sd_configs"][0]
    assert sd["files"] == ["/tmp/aimass-ray-6399/prom_metrics_service_discovery.json"]
    assert config["global"]["scrape_interval"] == sd["refresh_interval"] == "7s"
    assert prometheus.url(settings) == "http://127.0.0.1:9190"  # the cluster's host only
    assert Settings.model_fields["prometheus_port"].default == 9190  # not Debian's 9090


def test_off_means_no_prometheus_and_no_dashboard_pointer(tmp_path):
    off = Settings(home=tmp_path, prometheus="off")
    assert not prometheus.enabled(off)
    assert prometheus.head_env(off) == {}


GRAFANA = sorted((REPO / "cluster" / "monitoring" / "grafana").glob("*.json"))
_OURS = re.compile(r"\bray_(aimass_[a-z_]+?)(?:_bucket|_total|_sum|_count)?\b")


def _declared() -> set[str]:
    """The metric names the code declares (``Counter("aimass_…"``), wherever it does."""
    names = set()
    for folder in ("serve_apps", "actors", "jobs"):
        for path in (REPO / folder).rglob("*.py"):
            names |= set(re.findall(r'"(aimass_[a-z_]+)"', path.read_text()))
    return names


def test_the_dashboards_and_rules_read_only_metrics_the_code_exports():
    declared = _declared()
    exprs = [r.expr for r in alerts.rules(500.0, 0.2)]
    assert len(GRAFANA) == 3
    for path in GRAFANA:
        board = json.loads(path.read_text())
        assert board["uid"].startswith("aimass-") and board["panels"], path.name
        exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in _OURS.findall(e)}
    assert used and used <= declared, f"not exported by any code: {sorted(used - declared)}"
