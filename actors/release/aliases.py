"""Which registry aliases a cluster's release controller reads and moves: per region while
a rollout goes region by region, the model's own otherwise.

The registry is shared by every datacenter's cluster (one MLflow tracking server). A
region-by-region rollout (``aimass rollout``) pins each region it will reach with its own
aliases, ``champion-<region>`` (and ``candidate-<region>`` for its release's candidate),
then releases the candidate in one region's cluster at a time. The rule, for a controller
whose cluster's settings name region R (``AIMASS_REGION``):

- the model has a ``champion-R`` alias: R's clusters serve it, and R's releases read and
  move ``champion-R`` / ``candidate-R`` (a ``candidate-R`` missing falls back to
  ``candidate`` when a release is started without ``--candidate``);
- otherwise: ``champion`` and ``candidate``, exactly as a single cluster always did (a
  single cluster's region is ``local``, and nothing makes ``champion-local``).

Regional aliases exist while a rollout runs: once every region is promoted the rollout
moves ``champion`` and removes them; a rollout that stops moves the regions it reached
back and removes them too. So an alias that outlives a rollout is one interrupted midway,
and ``aimass models list`` shows it.
"""

from __future__ import annotations

from models.refs import CANDIDATE, CHAMPION


def regional(alias: str, region: str) -> str:
    """``champion`` in ``eu-west``: ``champion-eu-west``."""
    return f"{alias}-{region}"


def release_region(model_aliases: dict[str, int], region: str | None) -> str | None:
    """The region whose aliases a controller in ``region`` uses for a model that has
    ``model_aliases``: ``region`` when it has ``champion-<region>``, else None (its own)."""
    if region and regional(CHAMPION, region) in model_aliases:
        return region
    return None


def champion_alias(region: str | None) -> str:
    """The champion alias of a release in ``region`` (None: the model's own)."""
    return regional(CHAMPION, region) if region else CHAMPION


def candidate_alias(region: str | None) -> str:
    """The candidate alias of a release in ``region`` (None: the model's own)."""
    return regional(CANDIDATE, region) if region else CANDIDATE


def serving(model_aliases: dict[str, int], region: str | None) -> int | None:
    """The version a cluster in ``region`` serves for a model: the champion by the rule
    above; None when the model has no champion there."""
    return model_aliases.get(champion_alias(release_region(model_aliases, region)))
