"""Ensembles of classifier versions as one ONNX graph: the members' graphs side by side on
the shared input, and a combination rule on their probabilities, giving ``logits`` like any
model. So an ensemble is a package like any other: the Predictor serves it (one ONNX
Runtime call runs every member), ``jobs.evaluate`` gates it, releases roll it out.

Rules (``probabilities`` are each member's softmax):

- ``mean``: the (weighted) mean of the members' probabilities; logits = its log.
- ``vote``: each member votes for its most likely class; the most votes wins, ties go to
  the higher mean probability (score = votes + mean probability, normalised: its log).
- ``stack``: a multinomial logistic regression over the members' concatenated
  probabilities, fitted on the validation split (``fit_stack``): logits = X W + b.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from models.signature import INPUT_NAME, OUTPUT_NAME

RULES = ("mean", "vote", "stack")
_MIN_OPSET = 13  # Softmax over one axis; OneHot, ArgMax


@dataclass(frozen=True, slots=True)
class Stack:
    """The stacked meta-model: logits = probabilities (N, k*C) @ weight (k*C, C) + bias."""

    weight: np.ndarray
    bias: np.ndarray


def fit_stack(member_probabilities: list[np.ndarray], labels: np.ndarray, seed: int = 0) -> Stack:
    """A logistic regression on the members' probabilities of held-out rows."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate(member_probabilities, axis=1)
    fitted = LogisticRegression(max_iter=2000, random_state=seed).fit(x, labels)
    if fitted.coef_.shape[0] != len(np.unique(labels)) or fitted.coef_.shape[0] < 3:
        raise ValueError("stacking needs labels of every class (at least 3) in the split")
    return Stack(fitted.coef_.T.astype(np.float32), fitted.intercept_.astype(np.float32))


def combine(
    members: list[onnx.ModelProto],
    rule: str,
    num_classes: int,
    weights: list[float] | None = None,
    stack: Stack | None = None,
) -> onnx.ModelProto:
    """One graph: ``input`` -> every member -> ``rule`` -> ``logits``."""
    weights = _checked(members, rule, weights or [1.0] * len(members))
    g = _Graph()
    probs = [g.member(m, f"m{i}_") for i, m in enumerate(members)]
    weighted = [
        g.node("Mul", p, g.const(f"w{i}", w))
        for i, (p, w) in enumerate(zip(probs, weights, strict=True))
    ]
    mean = g.node("Sum", *weighted)
    if rule == "mean":
        g.node("Log", g.node("Add", mean, g.const("tiny", 1e-12)), out=OUTPUT_NAME)
    elif rule == "vote":
        depth = g.const("depth", [num_classes], np.int64)
        on_off = g.const("off_on", [0.0, 1.0])
        votes = [
            g.node("OneHot", g.node("ArgMax", p, axis=1, keepdims=0), depth, on_off) for p in probs
        ]
        g.node("Log", g.node("Add", g.node("Sum", *votes), mean), out=OUTPUT_NAME)
    else:
        if stack is None or stack.weight.shape != (len(probs) * num_classes, num_classes):
            raise ValueError("stack: a fitted Stack of the members' probabilities is needed")
        stacked = g.node("Concat", *probs, axis=1)
        g.node(
            "Gemm",
            stacked,
            g.const("stack_w", stack.weight),
            g.const("stack_b", stack.bias),
            out=OUTPUT_NAME,
        )
    graph = helper.make_graph(
        g.nodes,
        f"ensemble_{rule}",
        [members[0].graph.input[0]],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=g.inits,
    )
    opset = max(_MIN_OPSET, *(_opset(m) for m in members))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(m.ir_version for m in members)
    onnx.checker.check_model(model)
    return model


def _checked(members: list[onnx.ModelProto], rule: str, weights: list[float]) -> list[float]:
    """The weights, normalised to sum 1; ValueError for what cannot be an ensemble."""
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; choose one of {RULES}.")
    if len(members) < 2:
        raise ValueError("An ensemble needs at least 2 members.")
    if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("One weight per member, none negative, not all zero.")
    return [w / sum(weights) for w in weights]


class _Graph:
    """Nodes and initializers being put together; each node's output gets a fresh name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def node(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, name: str, value, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def member(self, model: onnx.ModelProto, prefix: str) -> str:
        """``model``'s nodes, renamed apart, on the shared input; returns its probabilities."""
        renamed = compose.add_prefix(model, prefix)
        for node in renamed.graph.node:
            node.input[:] = [INPUT_NAME if n == prefix + INPUT_NAME else n for n in node.input]
            self.nodes.append(node)
        self.inits += renamed.graph.initializer
        return self.node("Softmax", prefix + OUTPUT_NAME, axis=1)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
