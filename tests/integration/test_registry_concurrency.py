"""N4: two processes registering versions of one model at the same moment both succeed.

Two OS processes (spawned, so each has its own MLflow client, SQLAlchemy engine and SQLite
connection) meet at a barrier before each round, then each logs a package, registers it as
a version of the same model and promotes it to champion. The registry must end with
contiguous, distinct version numbers, every one resolvable with its own package, the alias
on one of them, and one recorded event per move. No Ray: the processes are the point.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import traceback
from pathlib import Path

import pytest

from models.refs import CHAMPION
from models.registry import Registry

WORKERS = 2
ROUNDS = 5
TIMEOUT_S = 120
MODEL = "digits"


def _registry(tmp: Path) -> Registry:
    return Registry(f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "artifacts"))


def _worker(tmp: Path, worker: int, barrier, results) -> None:
    """Register ROUNDS versions, each one started together with the other worker's."""
    try:
        registry = _registry(tmp)
        experiment = registry.experiment(MODEL)
        for round_ in range(ROUNDS):
            folder = tmp / f"pkg-{worker}-{round_}"
            folder.mkdir()
            # A package's content does not matter here, only that it is verifiable later.
            (folder / "config.json").write_text(json.dumps({"worker": worker, "round": round_}))
            barrier.wait(timeout=TIMEOUT_S)
            run_id = registry.client.create_run(experiment).info.run_id
            info = registry.register(MODEL, run_id, folder, tags={"worker": str(worker)})
            registry.promote(MODEL, info.version, reason=f"worker {worker} round {round_}")
            results.put(("ok", worker, round_, info.version))
    except BaseException:
        results.put(("error", worker, -1, traceback.format_exc()))
        barrier.abort()  # free the other worker at once rather than at its timeout


def _collect(results, procs: list) -> list[tuple]:
    out = []
    while len(out) < WORKERS * ROUNDS:
        try:
            item = results.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(
                f"no result in {TIMEOUT_S} s; got {out}; alive: {[p.is_alive() for p in procs]}"
            )
        assert item[0] == "ok", f"worker {item[1]} failed:\n{item[3]}"
        out.append(item)
    return out


def test_two_processes_register_versions_at_once(tmp_path):
    registry = _registry(tmp_path)
    registry.experiment(MODEL)  # the database schema exists before the race starts
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(tmp_path, w, barrier, results)) for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    try:
        registered = _collect(results, procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)

    numbers = sorted(version for *_, version in registered)
    assert numbers == list(range(1, WORKERS * ROUNDS + 1)), "versions must be distinct, contiguous"
    for _, worker, round_, version in registered:
        info = registry.resolve(f"{MODEL}@{version}")
        assert info.tags["worker"] == str(worker)
        folder = registry.fetch(info, tmp_path / f"fetched-{version}")  # verifies the manifest
        assert json.loads((folder / "config.json").read_text()) == {
            "worker": worker,
            "round": round_,
        }

    assert registry.resolve(MODEL).version in numbers  # the champion alias is intact
    history = registry.alias_history(MODEL, CHAMPION)
    assert len(history) == WORKERS * ROUNDS, "every move recorded, none lost"
    assert sorted(e.to_version for e in history) == numbers
    assert [m.latest_version for m in registry.list_models()] == [WORKERS * ROUNDS]
