"""Fine-tuning a registered version with ``jobs.train --from``, submitted as a user does, on
the session's trained digits model: the new version names its parent, its workers start
from the parent's weights (its validation accuracy before the first step is the parent's
level, where a fresh model's is chance), and a resubmission under the run's name resumes
its checkpoint instead of starting from the parent again.

Versions go to ``digits_ft``, so the ``digits`` champion the other modules use stays put.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from models.lineage import diff, package_metrics
from models.refs import ModelVersionInfo
from models.registry import Registry

# The first test's setup trains the session's digits model (~4 min on the 2-core machine)
# before the fine-tune.
pytestmark = pytest.mark.timeout(1800)

RUN = "ft-e2e"
# promote=false: a digits_ft champion would be served, and listed beside digits by the
# model API tests that follow.
FLAGS = ("--config", "digits_cnn_smoke", "--set", "register_as=digits_ft", "--set", "lr=5e-4",
         "--set", "promote=false")  # fmt: skip
REGISTERED = re.compile(r"\[train\] registered digits_ft version (\d+)")


@dataclass(frozen=True)
class Trained:
    """A finished train job: its log, the version it registered and that run's metrics."""

    log: str
    info: ModelVersionInfo
    registry: Registry

    def metric(self, key: str) -> dict[int, float]:
        """The run's values of ``key`` by step (the epoch; 0 for ``start_*``)."""
        history = self.registry.client.get_metric_history(self.info.run_id, key)
        return {m.step: m.value for m in history}


def train(served, submit, *args: str) -> Trained:
    out = submit("python", "-m", "jobs.train", *FLAGS, *args).stdout
    found = REGISTERED.search(out)
    assert found, out[-3000:]
    info = served.registry.get("digits_ft", int(found.group(1)))
    return Trained(out, info, served.registry)


@pytest.fixture(scope="module")
def fine_tuned(served, submit) -> Trained:
    """One epoch from the champion's weights."""
    return train(served, submit, "--from", "digits@champion", "--name", RUN, "--set", "epochs=1")


def test_a_fine_tune_names_its_parent_and_starts_from_its_weights(served, submit, fine_tuned):
    parent = f"digits@{served.version}"
    assert fine_tuned.info.parent == parent
    assert f"registered digits_ft version {fine_tuned.info.version} (parent {parent})" in (
        fine_tuned.log
    )
    lineage = diff(served.registry, f"digits_ft@{fine_tuned.info.version}", parent)["lineage"]
    assert lineage["parent"] == (parent, None)  # what `aimass models diff` prints

    champion = served.registry.get("digits", served.version)
    parent_accuracy = package_metrics(served.registry, champion)["accuracy"]
    start = fine_tuned.metric("start_val_accuracy")[0]
    first_epoch = fine_tuned.metric("val_accuracy")[0]
    assert f"[train] starting from {parent}'s weights: val_acc=" in fine_tuned.log
    # Validation and test are two ~300-row splits of one dataset: the parent scores within a
    # few points on each.
    # A fresh model scores ~0.1 before its first step and 0.29 after one epoch of this run
    # (measured with a control run, left out to keep the suite's time): a start at the
    # parent's level means the weights were loaded, and the first epoch's keeping it means
    # DeepSpeed's fp32 copy was loaded too (else the first step writes fresh weights back).
    assert start >= parent_accuracy - 0.05, (start, parent_accuracy)
    assert first_epoch >= parent_accuracy - 0.05, (first_epoch, parent_accuracy)
    print(f"val accuracy: start {start:.4f}, after one epoch {first_epoch:.4f}")


def test_a_resubmitted_fine_tune_resumes_its_checkpoint_and_keeps_its_parent(
    served, submit, fine_tuned
):
    again = train(served, submit, "--from", "digits@champion", "--name", RUN, "--set", "epochs=2")
    assert "[train] resumed from the checkpoint of epoch 1/2" in again.log, again.log[-3000:]
    assert "starting from digits@" not in again.log  # its own checkpoint, not the parent's
    assert again.info.parent == f"digits@{served.version}"
    assert list(again.metric("val_accuracy")) == [1]  # epoch 2 only: epoch 1 was restored
