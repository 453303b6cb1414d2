"""jobs.evaluate's --data-source: the flag, and the split it assembles from a group's shards."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from actors import shard_store
from jobs import evaluate
from jobs._private.cli import parse_config
from jobs.ingest import IngestConfig, ingest


def parse(argv: list[str]) -> evaluate.EvaluateConfig:
    return parse_config(evaluate.EvaluateConfig, "evaluate", ["--model", "digits@1", *argv])


def test_the_data_source_flag_defaults_to_storage_and_names_the_choices(capsys):
    assert parse([]).data_source == "storage"
    cfg = parse(["--data-source", "shard_store", "--shard-replicas", "2"])
    assert (cfg.data_source, cfg.shard_replicas) == ("shard_store", 2)
    with pytest.raises(SystemExit):
        parse(["--data-source", "s3"])
    err = capsys.readouterr().err
    assert "--data-source 's3'" in err and "'storage' or 'shard_store'" in err


class LocalReader:
    """A ShardReader over a group's shards read from storage in this process (no Ray)."""

    def __init__(self, manifest, started):
        self.manifest, self.started = manifest, started

    def __call__(self, group):
        assert group == self.started["group"]
        return self

    def specs(self, split):
        return shard_store.shard_specs(self.manifest, (split,))

    def get(self, shard_id):
        specs = self.specs(self.started["split"])
        return shard_store.load(next(s for s in specs if s.shard_id == shard_id))


@pytest.mark.parametrize("dataset", ["digits", "python_stdlib"])
def test_shard_store_reads_give_what_storage_reads_give(dataset, tmp_path, monkeypatch):
    manifest = ingest(IngestConfig(dataset=dataset, shards=3, max_bytes=50_000), str(tmp_path))
    started = {}

    @contextmanager
    def running(manifest_, *, group, splits, factor):
        started.update(group=group, split=splits[0], factor=factor, stopped=False)
        yield group
        started["stopped"] = True

    monkeypatch.setattr(shard_store, "running", running)
    monkeypatch.setattr(shard_store, "ShardReader", LocalReader(manifest, started))
    lm = dataset == "python_stdlib"
    cfg = parse(["--data-source", "shard_store", "--split", "val"])
    got = evaluate.held_out(cfg, manifest, lm, group="evaluate-digits-v1")
    want = evaluate.held_out(parse(["--split", "val"]), manifest, lm, group="unused")
    assert started == {"group": "evaluate-digits-v1", "split": "val", "factor": 1, "stopped": True}
    for a, b in zip(*([got], [want]) if lm else (got, want), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
