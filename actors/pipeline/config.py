"""How a model is split into pipeline stages and where the stages run.

Read from YAML or a Serve ``user_config``; everything that depends on the model (split points
against its layer count, budgets against its slices) is checked when a plan is made
(``actors.pipeline.plan``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.topology import Datacenter

Strategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
DEFAULT_NAMESPACE = "aimass-pipeline"
"""The Ray namespace stage actors are named in, unless a config says otherwise."""


def owner_namespace(namespace: str, owner: str) -> str:
    """``<namespace>.<owner>``: the namespace of the groups one owner (a Serve replica) starts,
    so that two owners serving the same version hold distinct actor names."""
    return f"{namespace}.{owner}"


def in_namespace(candidate: str, namespace: str) -> bool:
    """``candidate`` is ``namespace`` or an owner's namespace under it."""
    return candidate == namespace or candidate.startswith(f"{namespace}.")


class PipelineConfig(BaseModel):
    """A pipeline of ``num_stages`` stage actors over one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_stages: int = Field(2, ge=1, description="Stage actors the model's layers are split over.")
    split_points: tuple[int, ...] | None = Field(
        None,
        description="First layer of stages 2..p (num_stages - 1 increasing layer indices); "
        "by default the split balances parameter counts.",
    )
    micro_batches: int = Field(
        4,
        ge=1,
        description="Micro-batches a batch is cut into, so that every stage works at once "
        "(a batch of B rows gives min(B, micro_batches)).",
    )
    stage_memory_bytes: int | None = Field(
        None,
        gt=0,
        description="Most bytes of parameters one stage may hold; None: no limit.",
    )
    num_cpus_per_stage: float = Field(1.0, ge=0, description="CPUs reserved for each stage.")
    num_gpus_per_stage: float = Field(0.0, ge=0, description="GPUs reserved for each stage.")
    threads_per_stage: int = Field(
        1, ge=1, description="torch intra-op threads inside a stage (match num_cpus_per_stage)."
    )
    strategy: Strategy = Field(
        "SPREAD",
        description="Placement group strategy: STRICT_SPREAD puts each stage on its own node; "
        "PACK or SPREAD also run on one node.",
    )
    datacenters: tuple[str, ...] | None = Field(
        None,
        description="Datacenter (region) of each stage, one per stage, e.g. "
        "['us-east', 'us-east']; None: anywhere.",
    )
    namespace: str = Field(
        DEFAULT_NAMESPACE,
        min_length=1,
        description="Ray namespace of the stage actors' names (one group per model version "
        "and namespace).",
    )
    max_caches: int = Field(
        64,
        ge=1,
        description="Decode caches (one per batch of streams) each stage keeps; past it the "
        "least recently used is dropped and its streams prefill again.",
    )
    request_attempts: int = Field(
        3,
        ge=1,
        description="Tries of one forward: a failed stage restarts the group between tries.",
    )
    forward_timeout_s: float = Field(
        60.0, gt=0, description="Seconds one forward through all stages may take."
    )
    ready_timeout_s: float = Field(
        180.0, gt=0, description="Seconds a (re)started group has to place and load its stages."
    )

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.split_points is not None and len(self.split_points) != self.num_stages - 1:
            raise ValueError(
                f"split_points {list(self.split_points)} names {len(self.split_points)} "
                f"boundaries; {self.num_stages} stages need {self.num_stages - 1} (or omit it "
                "to balance by parameter count)."
            )
        if self.datacenters is not None:
            if len(self.datacenters) != self.num_stages:
                raise ValueError(
                    f"datacenters names {len(self.datacenters)} datacenters for "
                    f"{self.num_stages} stages: give one per stage, or omit it."
                )
            for name in self.datacenters:
                Datacenter(region=name, zone=f"{name}-a")  # the label-value rules
        return self
