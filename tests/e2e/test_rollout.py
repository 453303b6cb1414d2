"""Region by region: two real clusters, us-east and eu-west, on one shared registry (a real
MLflow tracking server with a SQLite database), and `aimass rollout` between them.

- A good candidate goes to us-east's cluster first (its release controller's canary, with
  its gates) and to eu-west's only once us-east promoted it: meanwhile eu-west still
  serves the old champion, as the answers' X-Served-Region and version show. Then it
  follows, and `champion` moves; no regional alias is left.
- A candidate that fails its gates in us-east is rolled back there; eu-west never sees it.
- Not one client request fails during either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from multicluster import (  # tests/e2e's own module
    REGIONS,
    Fleet,
    Ledger,
    Stream,
    diagnosis,
    register,
)

from cluster.cli.deploy import wait_for_version
from models.registry import Registry

# Short canaries: two steps of at least 2 s and 20 candidate answers each (no fewer than
# the thresholds' min_samples, 20: a step must not end before its gates can judge it).
RELEASE = ["--steps", "50,100", "--min-step-s", "2", "--min-requests", "20"]
# A version's first answers wait for its load (its package fetched from the tracking
# server, its ONNX session opened: 0.5-1 s here, two clusters and MLflow on two cores). The
# Predictor marks them cold and the latency gate leaves them out, so the default gates judge
# these rollouts (they once needed --latency-slack-ms 2000).


def _load(fleet: Fleet) -> Ledger:
    """Each cluster's own clients, a new end user per request (the canary splits users)."""
    return Ledger(
        {
            dc: Stream(
                f"{c.settings.serve_url}/v1/models/digits/predict",
                fleet.keys["any"],
                2,
                new_users=True,
            )
            for dc, c in fleet.clusters.items()
        },
        retries=0,  # a release costs no failed request: nothing to retry
    )


def _rollout(fleet: Fleet, candidate: int, *flags: str) -> subprocess.CompletedProcess:
    """`aimass rollout` from an operator's shell: the shared registry in its settings, each
    cluster's Jobs API with that cluster's own token."""
    argv = [str(Path(sys.executable).with_name("aimass")), "rollout", "--model", "digits"]
    argv += ["--candidate", str(candidate), *RELEASE, *flags]
    for dc, c in fleet.clusters.items():
        argv += ["--cluster", f"{dc}={c.settings.dashboard_url}"]
        argv += ["--token", f"{dc}={c.settings.token_path}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMASS_", "RAY_"))}
    env |= {"AIMASS_TRACKING_URI": fleet.tracking_uri, "AIMASS_HOME": str(fleet.root / "operator")}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def _failed(fleet: Fleet, proc: subprocess.CompletedProcess) -> str:
    """What an unexpected exit of `aimass rollout` printed, and the state of each cluster."""
    return "\n".join([proc.stdout[-3000:], proc.stderr[-1000:], diagnosis(fleet.clusters.values())])


def _copy_of_champion(registry: Registry) -> int:
    """A new version with the champion's very package: it agrees with the champion."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.fetch(registry.resolve("digits@champion"), Path(tmp))
        return register(registry, folder, alias=None)


def _regional_aliases(registry: Registry) -> dict[str, int]:
    aliases = registry.all_aliases()["digits"]
    return {a: v for a, v in aliases.items() if a.endswith(REGIONS)}


def test_a_candidate_failing_its_gates_in_the_first_region_never_reaches_the_next(
    fleet, make_package
):
    registry = fleet.registry
    champion = registry.resolve("digits@champion").version
    bad = register(registry, make_package("untrained"), alias=None)  # disagrees with v1
    with _load(fleet) as load:
        load.wait_for(20)
        proc = _rollout(fleet, bad)
        load.wait_for(10)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, _failed(fleet, proc)
    assert "The release in us-east failed" in out and "not started in eu-west" in out, out
    assert "[eu-west] release" not in out
    answered = {(e.stream, e.version) for e in load.entries}
    assert ("us-east", bad) in answered  # its canary really served there ...
    assert ("eu-west", bad) not in answered  # ... and never in eu-west
    assert [e for e in load.entries if e.status != 200] == []
    assert registry.resolve("digits@champion").version == champion
    assert _regional_aliases(registry) == {}
    tags = registry.client.get_model_version("digits", str(bad)).tags
    assert tags["aimass.release"].startswith("rolled_back")


def test_a_good_candidate_goes_region_by_region(fleet):
    registry = fleet.registry
    before = registry.resolve("digits@champion").version
    good = _copy_of_champion(registry)
    with _load(fleet) as load:
        load.wait_for(20)
        proc = _rollout(fleet, good)
        load.wait_for(20)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failed(fleet, proc)
    assert out.index("[us-east] promoted") < out.index("[eu-west] release"), out

    us, eu = load.of("us-east"), load.of("eu-west")
    assert [e for e in load.entries if e.status != 200] == []
    # every answer came from the cluster asked (the label of its head's node)
    assert {e.region for e in us} == {"us-east"} and {e.region for e in eu} == {"eu-west"}
    us_last_old = max(e.answered for e in us if e.version == before)
    eu_first_new = min(e.sent for e in eu if e.version == good)
    assert us_last_old < eu_first_new  # us-east promoted before eu-west's canary began
    between = [e for e in eu if us_last_old < e.sent < eu_first_new]
    assert between and {e.version for e in between} == {before}  # eu-west: still the old
    assert {e.version for e in us if e.sent > us_last_old} == {good}
    print(
        f"\n[rollout] us-east served only v{good} from +{us_last_old - us[0].sent:.1f} s; "
        f"eu-west kept v{before} for {eu_first_new - us_last_old:.1f} s more "
        f"({len(between)} answers), then its canary; {len(load.entries)} requests, 0 failed"
    )
    assert registry.resolve("digits@champion").version == good
    assert _regional_aliases(registry) == {}
    history = [
        (e.from_version, e.to_version) for e in registry.alias_history("digits", "champion-us-east")
    ]
    assert (before, good) in history  # the registry recorded the regional promotion
    for c in fleet.clusters.values():
        wait_for_version(c.settings, fleet.keys["any"], "digits", good, timeout_s=60)
