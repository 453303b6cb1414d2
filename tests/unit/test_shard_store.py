"""ShardStore's pure parts: placement plans, per-epoch rank splits, checksum checks."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from actors.exceptions import ShardChecksumError
from actors.shard_store import (
    Node,
    ReplicaInfo,
    ShardSpec,
    ShardStoreShard,
    load,
    place,
    rank_segments,
    segment_rows,
    shard_specs,
)
from actors.shard_store.coordinator import ShardStoreCoordinator
from actors.shard_store.replica import ShardReplica
from jobs.ingest import IngestConfig, ingest

SHARDS = [f"train-{i:05d}" for i in range(6)]
TWO_DCS = [Node("a1", "eu"), Node("a2", "eu"), Node("b1", "us")]


def test_every_shard_gets_factor_distinct_nodes_spread_over_datacenters():
    plan = place(SHARDS, TWO_DCS, factor=2)
    assert not plan.short
    for holders in plan.holders.values():
        assert len(set(holders)) == 2
        # two datacenters: every shard survives the loss of either
        assert {n[0] for n in holders} == {"a", "b"}


def test_placement_is_deterministic_and_balances_load():
    nodes = [Node(f"n{i}") for i in range(3)]
    plan = place(SHARDS, nodes, factor=2)
    assert plan == place(SHARDS, list(reversed(nodes)), factor=2)
    load = {n.node_id: sum(n.node_id in h for h in plan.holders.values()) for n in nodes}
    assert set(load.values()) == {4}  # 6 shards x 2 replicas over 3 nodes


def test_repair_keeps_survivors_and_adds_only_what_was_lost():
    nodes = [Node(f"n{i}") for i in range(3)]
    before = place(SHARDS, nodes, factor=2).holders
    survivors = [n for n in nodes if n.node_id != "n1"]
    after = place(SHARDS, survivors, factor=2, current=before)
    assert not after.short
    for shard, holders in after.holders.items():
        kept = [n for n in before[shard] if n != "n1"]
        assert list(holders[: len(kept)]) == kept and "n1" not in holders
    lost = sum("n1" in h for h in before.values())
    assert len(after.additions({s: [n for n in h if n != "n1"] for s, h in before.items()})) == lost


def test_too_few_nodes_leaves_shards_short_and_bad_factors_say_why():
    plan = place(SHARDS, [Node("only")], factor=2)
    assert set(plan.short) == set(SHARDS)
    with pytest.raises(ValueError, match="replication factor 0"):
        place(SHARDS, TWO_DCS, factor=0)
    with pytest.raises(ValueError, match="No alive nodes"):
        place(SHARDS, [], factor=2)


ROWS = [100, 37, 64, 1, 90]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_read_disjoint_parts_that_cover_the_split(world):
    seen = []
    for rank in range(world):
        for seg in rank_segments(ROWS, rank, world, seed=7, equal=False):
            seen += [(seg.shard, int(r)) for r in segment_rows(seg, seed=7)]
    assert len(seen) == len(set(seen)) == sum(ROWS)


def test_equal_parts_give_every_rank_the_same_rows():
    sizes = [sum(map(len, rank_segments(ROWS, r, 3, seed=1, equal=True))) for r in range(3)]
    assert sizes == [sum(ROWS) // 3] * 3


def test_shuffle_is_deterministic_per_epoch_and_differs_between_epochs():
    def order(seed):
        return [
            (s.shard, int(r))
            for s in rank_segments(ROWS, 0, 2, seed, equal=True)
            for r in segment_rows(s, seed)
        ]

    assert order(10) == order(10)
    assert order(10) != order(11)
    plain = order(None)
    assert plain == sorted(plain)  # no seed: manifest order, rows in order


def test_a_shard_that_changed_on_storage_fails_its_checksum(tmp_path):
    manifest = ingest(IngestConfig(), str(tmp_path))
    spec = shard_specs(manifest, ("train",))[0]
    columns = load(spec)
    assert columns["features"].shape == (spec.rows, 64) and columns["label"].shape == (spec.rows,)
    with open(spec.uri, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\xff")
    with pytest.raises(ShardChecksumError, match="Re-run jobs.ingest") as err:
        ShardReplica("digits", "node1", "eu-west", put=lambda x: x).load([spec])
    # the context survives the trip from an actor to its caller
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.shard_id, again.node_id, again.datacenter) == (spec.shard_id, "node1", "eu-west")


def test_token_shards_load_as_2d_int16(tmp_path):
    manifest = ingest(IngestConfig(dataset="python_stdlib", max_bytes=50_000), str(tmp_path))
    spec = shard_specs(manifest, ("val",))[0]
    tokens = load(spec)["tokens"]
    assert tokens.dtype == np.int16 and tokens.shape == (spec.rows, 129)


class FakeReader:
    """Shards of ROWS rows whose single column holds (shard, row) ids."""

    def specs(self, split):
        return [ShardSpec(f"s{i}", split, "", n, "") for i, n in enumerate(ROWS)]

    def get(self, shard_id):
        i = int(shard_id[1:])
        ids = np.stack([np.full(ROWS[i], i), np.arange(ROWS[i])], axis=1)
        ids.setflags(write=False)  # as from the object store
        return {"ids": ids}


@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_cross_shard_boundaries_and_match_the_rank_split(drop_last):
    world, batch = 2, 16
    got = []
    for rank in range(world):
        shard = ShardStoreShard(FakeReader(), "train", rank, world)
        batches = list(
            shard.iter_torch_batches(batch_size=batch, drop_last=drop_last, local_shuffle_seed=3)
        )
        sizes = [len(b["ids"]) for b in batches]
        assert all(n == batch for n in sizes[:-1])
        if drop_last:
            assert len(batches) == sum(ROWS) // world // batch and sizes[-1] == batch
        got += [tuple(r) for b in batches for r in b["ids"].tolist()]
    assert len(got) == len(set(got))
    if not drop_last:
        assert len(got) == sum(ROWS)


def test_a_run_tied_to_a_datacenter_keeps_every_replica_inside_it():
    nodes = [*TWO_DCS, Node("a3", "eu")]
    plan = place(SHARDS, nodes, factor=2, datacenter="eu")
    assert not plan.short
    assert all(len(set(h)) == 2 and {n[0] for n in h} == {"a"} for h in plan.holders.values())
    # a replica elsewhere (the group before) is not kept
    moved = place(SHARDS, nodes, factor=2, current={SHARDS[0]: ["b1"]}, datacenter="eu")
    assert "b1" not in moved.holders[SHARDS[0]]
    # fewer nodes there than the factor: short, never spilled out
    short = place(SHARDS, TWO_DCS, factor=3, datacenter="us")
    assert set(short.short) == set(SHARDS) and all(h == ("b1",) for h in short.holders.values())
    with pytest.raises(ValueError, match="No alive nodes in datacenter 'ap'"):
        place(SHARDS, TWO_DCS, factor=2, datacenter="ap")


class FakeReplicaHandle:
    def __init__(self):
        self.dropped = []
        self.drop = SimpleNamespace(remote=self.dropped.append)


def test_a_restarted_coordinator_takes_back_what_live_replicas_hold():
    specs = [ShardSpec(f"s{i}", "train", "", 10, f"sha{i}") for i in range(3)]
    coordinator = ShardStoreCoordinator("g", specs, factor=2)
    a, b = FakeReplicaHandle(), FakeReplicaHandle()
    found = [
        (ReplicaInfo("shards:g:replica:eu:a", "a", "eu"), a, {"s0": "sha0", "s1": "sha1"}),
        # s2 from another manifest (a group of the same name before): not counted, dropped
        (ReplicaInfo("shards:g:replica:us:b", "b", "us"), b, {"s0": "sha0", "s2": "old"}),
    ]
    assert coordinator.adopt(found) == 2
    assert coordinator.replication() == {"s0": 2, "s1": 1, "s2": 0}
    assert b.dropped == ["s2"] and not a.dropped
    rows = {r["node_id"]: r["shards"] for r in coordinator.placement()}
    assert rows == {"a": ["s0", "s1"], "b": ["s0"]}
    # what repair would add from here: only the missing replicas
    plan = place(
        list(coordinator.specs), [Node("a", "eu"), Node("b", "us")], 2, coordinator.holders
    )
    assert sorted(plan.additions(coordinator.holders)) == [("s1", "b"), ("s2", "a"), ("s2", "b")]
