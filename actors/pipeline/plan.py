"""Which layers and tensors each pipeline stage holds: a pure function of the model's shape.

Stage 0 carries the embeddings (``wte``, ``wpe``), the last stage ``ln_f`` and ``lm_head``;
the blocks between are cut into contiguous runs. By default the cut minimises the largest
stage's parameter bytes (a linear partition, solved exactly: models have tens of layers).
GPT ties ``lm_head`` to ``wte``: with two or more stages the first and the last each hold a
copy of that matrix, and both copies count against their stage's budget.

A plan is built from a GPT on the ``meta`` device (shapes only, nothing allocated), so the
driver can plan a model far larger than its own memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from actors.exceptions import InvalidSplit, StageOverBudget
from actors.pipeline.config import PipelineConfig

EMBEDDINGS = ("wte.", "wpe.")
"""State-dict prefixes stage 0 holds."""
HEAD = ("ln_f.", "lm_head.")
"""State-dict prefixes the last stage holds."""


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage of a plan.

    Attributes:
        index: 0-based position in the pipeline.
        count: Stages in the pipeline.
        layers: Blocks held, as ``(first, end)``: ``blocks[first:end]``.
        tensors: Names in the full model's state dict this stage loads.
        param_bytes: Bytes of its distinct parameters (a tied matrix counted once).
    """

    index: int
    count: int
    layers: tuple[int, int]
    tensors: tuple[str, ...]
    param_bytes: int

    @property
    def embeddings(self) -> bool:
        return self.index == 0

    @property
    def head(self) -> bool:
        return self.index == self.count - 1

    @property
    def label(self) -> str:
        """``k/p``, 1-based: how errors and names count stages."""
        return f"{self.index + 1}/{self.count}"


def _block_of(name: str) -> int | None:
    head, _, rest = name.partition(".")
    return int(rest.split(".", 1)[0]) if head == "blocks" else None


def _tensor_bytes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """State-dict name -> (identity of the tensor, bytes); tied names share an identity."""
    return {
        name: (id(t), t.numel() * t.element_size())
        for name, t in model.state_dict(keep_vars=True).items()
    }


def _partition(sizes: list[int], parts: int, first_extra: int, last_extra: int) -> list[int]:
    """Start index of each part after the first: ``sizes`` cut into ``parts`` non-empty
    contiguous runs minimising the largest run (part 0 also weighs ``first_extra``, the last
    ``last_extra``)."""
    n = len(sizes)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)

    def cost(k: int, a: int, b: int) -> int:
        extra = (first_extra if k == 0 else 0) + (last_extra if k == parts - 1 else 0)
        return prefix[b] - prefix[a] + extra

    inf = float("inf")
    # best[k][b]: the smallest largest-run of blocks[:b] in k+1 parts; cut[k][b] its last start.
    best = [[inf] * (n + 1) for _ in range(parts)]
    cut = [[0] * (n + 1) for _ in range(parts)]
    for b in range(1, n + 1):
        best[0][b] = cost(0, 0, b)
    for k in range(1, parts):
        for b in range(k + 1, n + 1):
            for a in range(k, b):
                value = max(best[k - 1][a], cost(k, a, b))
                if value < best[k][b]:
                    best[k][b], cut[k][b] = value, a
    starts, b = [], n
    for k in range(parts - 1, 0, -1):
        b = cut[k][b]
        starts.append(b)
    return starts[::-1]


def _check_points(points: tuple[int, ...], n_layer: int, model: str, version: str) -> None:
    bounds = (0, *points, n_layer)
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise InvalidSplit(
            f"split_points {list(points)} must increase strictly within 1..{n_layer - 1} "
            f"({n_layer} layers): every stage needs at least one layer.",
            model=model,
            version=version,
        )


def plan_stages(
    model: nn.Module, config: PipelineConfig, *, name: str = "?", version: int | str = "?"
) -> tuple[StageSpec, ...]:
    """Split ``model`` (a GPT, typically on the meta device) into ``config.num_stages``.

    Raises:
        InvalidSplit: More stages than layers, or split points that do not fit.
        StageOverBudget: A stage's slice exceeds ``config.stage_memory_bytes``.
    """
    version = str(version)
    n_layer, parts = len(model.blocks), config.num_stages
    if parts > n_layer:
        raise InvalidSplit(
            f"{parts} stages for {n_layer} layers: every stage needs a layer; use at most "
            f"{n_layer} stages.",
            model=name,
            version=version,
        )
    tensors = _tensor_bytes(model)
    block_bytes = [0] * n_layer
    for tensor_name, (_, size) in tensors.items():
        if (block := _block_of(tensor_name)) is not None:
            block_bytes[block] += size
    if config.split_points is None:
        emb = sum(s for n, (_, s) in tensors.items() if n.startswith(EMBEDDINGS))
        head = sum(s for n, (_, s) in tensors.items() if n.startswith(HEAD))
        points = tuple(_partition(block_bytes, parts, emb, head))
    else:
        points = config.split_points
        _check_points(points, n_layer, name, version)
    bounds = (0, *points, n_layer)
    plan = tuple(_spec(k, parts, (bounds[k], bounds[k + 1]), tensors) for k in range(parts))
    if config.stage_memory_bytes is not None:
        check_budget(plan, config.stage_memory_bytes, name=name, version=version)
    return plan


def _spec(
    index: int, count: int, layers: tuple[int, int], tensors: dict[str, tuple[int, int]]
) -> StageSpec:
    def held(tensor_name: str) -> bool:
        block = _block_of(tensor_name)
        if block is not None:
            return layers[0] <= block < layers[1]
        return (index == 0 and tensor_name.startswith(EMBEDDINGS)) or (
            index == count - 1 and tensor_name.startswith(HEAD)
        )

    names = tuple(n for n in tensors if held(n))
    distinct = {tensors[n][0]: tensors[n][1] for n in names}
    return StageSpec(index, count, layers, names, sum(distinct.values()))


def check_budget(
    plan: tuple[StageSpec, ...], budget_bytes: int, *, name: str = "?", version: int | str = "?"
) -> None:
    """Raise StageOverBudget for the first stage whose parameters exceed ``budget_bytes``."""
    for spec in plan:
        if spec.param_bytes > budget_bytes:
            first, end = spec.layers
            raise StageOverBudget(
                f"Stage {spec.label} of {name}:{version} (layers {first}..{end - 1}) holds "
                f"{spec.param_bytes:,} bytes of parameters, over its budget of "
                f"{budget_bytes:,} bytes (stage_memory_bytes): split the model over more "
                f"stages (num_stages) or raise the budget.",
                model=name,
                version=version,
                stage=spec.label,
            )
