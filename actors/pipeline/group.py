"""A group of stage actors in one placement group: start, pipelined forward, restart, placement.

Pipelining without a scheduler of our own: ``submit`` sends every micro-batch through every
stage at once, each stage call taking the previous stage's ObjectRef as its argument. Ray
resolves an argument before the call runs and moves it stage to stage (through the object
store, never through the caller), and a stage actor runs its calls one at a time in the
order they were sent: so stage k works on micro-batch i while stage k+1 works on i-1.

Cached decoding (``submit_cached``) sends a batch as one micro-batch: each stage keeps one
cache per key, and a decode step is one token per row, too little to pipeline. A restart
loses every cache: the group's ``generation`` tells a caller whose caches are gone.

A stage that dies takes the whole group down and back up (``restart``): every stage actor is
killed and created again in the same placement group, and each reloads its slice, checked
against the manifest's SHA-256. Stage actors have ``max_restarts=0``: Ray restarting one stage
alone would leave its neighbours' calls of the old generation half done.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum

import torch

from actors.exceptions import PipelineUnavailable
from actors.pipeline.config import DEFAULT_NAMESPACE, PipelineConfig, in_namespace
from actors.pipeline.plan import StageSpec
from actors.pipeline.stage import PackageSource, PipelineStage
from cluster.topology import REGION_LABEL
from models.gpt import GPTConfig

STAGE_PREFIX = "stage:"
_NAME_FREE_POLL_S = 0.05


def stage_name(model: str, version: int, spec: StageSpec, datacenter: str | None = None) -> str:
    """``stage:<model>:<version>:<k>of<p>[:<datacenter>]``, k counted from 1."""
    name = f"{STAGE_PREFIX}{model}:{version}:{spec.index + 1}of{spec.count}"
    return f"{name}:{datacenter}" if datacenter else name


@dataclass(frozen=True, slots=True)
class StagePlacement:
    """Where one stage runs and what it holds (a row of ``aimass status``)."""

    name: str
    node_id: str
    datacenter: str | None
    layers: tuple[int, int]
    """Blocks held, ``(first, end)``."""
    param_bytes: int


class GroupState(Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"


class StageGroup:
    """The stage actors of one model version.

    Args:
        source: The version the stages load.
        cfg: The model's shape.
        plan: The stages (``actors.pipeline.plan.plan_stages``).
        config: Placement, resources, budget, timeouts.
    """

    def __init__(
        self,
        source: PackageSource,
        cfg: GPTConfig,
        plan: tuple[StageSpec, ...],
        config: PipelineConfig,
    ) -> None:
        self.source, self.cfg, self.plan, self.config = source, cfg, plan, config
        self.state = GroupState.STOPPED
        self.generation = 0
        """Counts (re)starts: a caller that saw generation g fail restarts only g."""
        self._lock = threading.Lock()
        self._pg = None
        self._actors: list = []

    @property
    def names(self) -> list[str]:
        dcs = self.config.datacenters or (None,) * len(self.plan)
        return [
            stage_name(self.source.name, self.source.version, spec, dc)
            for spec, dc in zip(self.plan, dcs, strict=True)
        ]

    def start(self) -> None:
        """Place the group and load every stage; returns once all are ready.

        Raises:
            PipelineUnavailable: The placement group could not be placed in time.
            StageOverBudget, ArtifactIntegrityError: From a stage's load.
        """
        with self._lock:
            self._start()

    def submit(self, idx: torch.Tensor, micro_batches: int | None = None) -> tuple[list, int]:
        """Send ``idx`` (B, T) through the stages in micro-batches; no waiting.

        ``micro_batches`` overrides the config's (1: the whole batch as one, stage after stage).

        Returns:
            One ObjectRef of logits (b_i, T, vocab) per micro-batch, in order, and the
            generation of the stages they were sent to.
        """
        actors, generation = self._running()
        refs = []
        parts = min(micro_batches or self.config.micro_batches, len(idx))
        for micro in torch.tensor_split(idx, parts):
            ref = micro
            for actor in actors:
                ref = actor.forward.remote(ref)
            refs.append(ref)
        return refs, generation

    def _running(self) -> tuple[list, int]:
        """The stage actors and their generation, or PipelineUnavailable when not running."""
        with self._lock:  # a restart holds the lock: wait for it, then use its stages
            actors, generation, state = self._actors, self.generation, self.state
        if state is not GroupState.RUNNING:
            raise PipelineUnavailable(
                "The stage group is not running: start() it first.",
                model=self.source.name,
                version=self.source.version,
            )
        return actors, generation

    def submit_cached(self, key: str, idx: torch.Tensor, start: list[int]) -> tuple[object, int]:
        """Send T new tokens ``idx`` (B, T) of the rows cached under ``key`` (at positions
        ``start``) through the stages; no waiting.

        Returns:
            The ObjectRef of the logits (B, T, vocab) and the generation it was sent to.
        """
        actors, generation = self._running()
        ref = idx
        for actor in actors:
            ref = actor.forward_cached.remote(key, ref, start)
        return ref, generation

    def cache_op(self, generation: int, method: str, *args) -> None:
        """Call ``method`` (``cache_select``, ``cache_cat``, ``cache_free``) on every stage of
        ``generation``, without waiting: a stage runs its calls in the order they were sent,
        so the next forward sees it done. Nothing once that generation is gone (its caches
        went with it)."""
        with self._lock:
            if generation != self.generation or self.state is not GroupState.RUNNING:
                return
            actors = list(self._actors)
        for actor in actors:
            getattr(actor, method).remote(*args)

    def wait(self, ref) -> torch.Tensor:
        """The value of a ref ``submit_cached`` returned, within the forward timeout."""
        import ray

        return ray.get(ref, timeout=self.config.forward_timeout_s)

    def restart(self, failed_generation: int) -> None:
        """Kill and recreate every stage, unless ``failed_generation`` was already replaced
        (by another caller that saw the same failure)."""
        with self._lock:
            if self.generation != failed_generation:
                return
            self._kill_actors()
            self._start()

    def placement(self) -> list[StagePlacement]:
        """Where each stage of the group runs now."""
        with self._lock:
            actors = list(self._actors)
        return describe(actors, self.names)

    def shutdown(self) -> None:
        """Kill the stages and free their placement group."""
        from ray.util import remove_placement_group

        with self._lock:
            self._kill_actors()
            if self._pg is not None:
                remove_placement_group(self._pg)
                self._pg = None
            self.state = GroupState.STOPPED

    def _start(self) -> None:
        import ray

        self.state = GroupState.STARTING
        if self._pg is None:
            self._pg = self._placement_group()
        pairs = zip(self.plan, self.names, strict=True)
        self._actors = [self._create(spec, name) for spec, name in pairs]
        try:
            ray.get([a.load.remote() for a in self._actors], timeout=self.config.ready_timeout_s)
        except BaseException:
            self._kill_actors()  # a half-loaded group serves nothing; the caller sees why
            self.state = GroupState.STOPPED
            raise
        self.generation += 1
        self.state = GroupState.RUNNING

    def _placement_group(self):
        from ray.util import placement_group, remove_placement_group

        bundle = {"CPU": self.config.num_cpus_per_stage}
        if self.config.num_gpus_per_stage:
            bundle["GPU"] = self.config.num_gpus_per_stage
        selectors = None
        if self.config.datacenters:  # a bundle per stage, each kept inside its datacenter
            selectors = [{REGION_LABEL: dc} for dc in self.config.datacenters]
        pg = placement_group(
            [dict(bundle) for _ in self.plan],
            strategy=self.config.strategy,
            # Placement group names are unique per job namespace, not per actor namespace:
            # the actors' namespace in the name lets two owners place the same version.
            name=f"{STAGE_PREFIX}{self.config.namespace}:{self.source.name}:{self.source.version}",
            bundle_label_selector=selectors,
        )
        if not pg.wait(timeout_seconds=self.config.ready_timeout_s):
            remove_placement_group(pg)
            raise PipelineUnavailable(
                f"{len(self.plan)} stages of {bundle} each could not be placed with "
                f"{self.config.strategy} (datacenters {self.config.datacenters}) in "
                f"{self.config.ready_timeout_s:g} s: add nodes or resources, or relax the "
                "strategy (STRICT_SPREAD needs a node per stage).",
                model=self.source.name,
                version=self.source.version,
            )
        return pg

    def _create(self, spec: StageSpec, name: str):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        _wait_name_free(name, self.config.namespace, self.config.ready_timeout_s)
        return (
            ray.remote(PipelineStage)
            .options(
                name=name,
                namespace=self.config.namespace,
                num_cpus=self.config.num_cpus_per_stage,
                num_gpus=self.config.num_gpus_per_stage,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=spec.index
                ),
            )
            .remote(
                self.source,
                self.cfg,
                spec,
                self.config.stage_memory_bytes,
                self.config.threads_per_stage,
                self.config.max_caches,
            )
        )

    def _kill_actors(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []


def _wait_name_free(name: str, namespace: str, timeout_s: float) -> None:
    """Poll until no live actor holds ``name`` (a killed actor's name is freed once the GCS
    has seen it die, a moment after ``ray.kill`` returns)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(_NAME_FREE_POLL_S)
    raise PipelineUnavailable(
        f"Actor name {name!r} in namespace {namespace!r} is still taken after {timeout_s:g} s: "
        "another group serves this version there; give this one its own namespace.",
        model=name.split(":")[1],
        version=name.split(":")[2],
    )


def describe(actors: list, names: list[str]) -> list[StagePlacement]:
    """``StagePlacement`` of each stage actor, asked of the actors themselves."""
    import ray

    infos = ray.get([a.describe.remote() for a in actors], timeout=60)
    return [
        StagePlacement(
            name=name,
            node_id=info["node_id"],
            datacenter=info["datacenter"],
            layers=tuple(info["layers"]),
            param_bytes=info["param_bytes"],
        )
        for name, info in zip(names, infos, strict=True)
    ]


def placement(namespace: str = DEFAULT_NAMESPACE, model: str | None = None) -> list[StagePlacement]:
    """Every stage actor alive in ``namespace`` and its owners' namespaces under it
    (``owner_namespace``), of ``model`` only when given, by name. Needs a connected Ray driver."""
    import ray

    found = sorted(
        (entry["name"], entry["namespace"])
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if in_namespace(entry["namespace"], namespace)
        and entry["name"].startswith(STAGE_PREFIX)
        and (model is None or entry["name"].split(":")[1] == model)
    )
    actors = [ray.get_actor(name, namespace=ns) for name, ns in found]
    return describe(actors, [name for name, _ in found])
