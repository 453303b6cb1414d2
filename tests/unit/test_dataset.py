import json

import numpy as np
import pytest

from jobs.ingest import IngestConfig, ingest
from models.dataset import dataset_uri, read_manifest


@pytest.fixture
def manifest(tmp_path):
    return ingest(IngestConfig(), str(tmp_path))


def test_ingest_writes_every_split_with_row_counts_and_hashes(manifest):
    total = sum(manifest.rows(s) for s in ("train", "val", "test"))
    assert total == 1797
    assert manifest.rows("test") == pytest.approx(0.2 * 1797, abs=1)
    for split in ("train", "val", "test"):
        x, y = manifest.load_split(split)
        assert x.shape == (manifest.rows(split), 64) and x.dtype == np.float32
        assert y.shape == (manifest.rows(split),) and set(np.unique(y)) == set(range(10))


def test_split_is_stratified_and_disjoint(manifest):
    splits = {s: manifest.load_split(s) for s in ("train", "val", "test")}
    shares = {s: np.bincount(y, minlength=10) / len(y) for s, (_, y) in splits.items()}
    assert np.abs(shares["train"] - shares["test"]).max() < 0.01
    rows = {s: {x.tobytes() for x in xs} for s, (xs, _) in splits.items()}
    # digits has a few duplicate images; a real leak would share far more than that
    assert len(rows["train"] & rows["test"]) <= 2


def test_ingest_is_deterministic(tmp_path, manifest):
    again = ingest(IngestConfig(), str(tmp_path))
    assert again.sha256 == manifest.sha256
    other = ingest(IngestConfig(seed=1), str(tmp_path / "other"))
    assert other.sha256 != manifest.sha256


def test_a_changed_shard_fails_its_hash_check(manifest):
    shard = manifest.shard_uris("test")[0]
    with open(shard, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="SHA-256"):
        manifest.load_split("test")


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="jobs.ingest"):
        read_manifest(dataset_uri(str(tmp_path), "digits"))


def test_manifest_records_schema_and_shards(manifest):
    with open(f"{manifest.root}/manifest.json") as f:
        data = json.load(f)
    assert "features" in data["schema"] and data["feature_shape"] == [64]
    assert all(len(s["sha256"]) == 64 for s in data["splits"]["train"]["shards"])


def test_ingest_cli_rejects_bad_flags_with_a_clear_message(capsys):
    from jobs.ingest import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--shards", "0"])
    assert exit_info.value.code == 2
    assert "--shards '0'" in capsys.readouterr().err


def test_text_ingest_writes_byte_sequences_of_python_source(tmp_path):
    from jobs.ingest import IngestConfig, ingest

    cfg = IngestConfig(dataset="python_stdlib", block_size=64, max_bytes=200_000)
    manifest = ingest(cfg, str(tmp_path))
    seqs = manifest.load_tokens("train")
    assert seqs.shape[1] == 65 and len(seqs) > 100 and seqs.max() < 256
    text = bytes(seqs[:50].reshape(-1).astype(np.uint8)).decode("utf-8", errors="replace")
    assert "def " in text or "import " in text
    assert ingest(cfg, str(tmp_path)).sha256 == manifest.sha256  # deterministic


def test_text_splits_put_each_file_in_exactly_one_split():
    from jobs.ingest import IngestConfig, text_splits

    files = [(f"pkg/mod{i}.py", bytes([65 + i]) * 300) for i in range(26)]  # one letter each
    splits = text_splits(files, IngestConfig(dataset="python_stdlib", block_size=16))
    homes = {
        letter: [s for s, seqs in splits.items() if letter in seqs] for letter in range(65, 91)
    }
    assert all(len(where) == 1 for where in homes.values()), homes
    assert all(len(seqs) for seqs in splits.values())  # every split got some files


def test_text_rows_are_shuffled_so_a_prefix_of_a_split_samples_all_its_files():
    from jobs.ingest import IngestConfig, text_splits

    files = [(f"pkg/mod{i:02d}.py", bytes([65 + i]) * 300) for i in range(26)]  # one letter each
    cfg = IngestConfig(dataset="python_stdlib", block_size=16)
    for split, seqs in text_splits(files, cfg).items():
        letters = set(np.unique(seqs)) - {ord("\n")}
        # In path order a quarter of the rows would hold about a quarter of the files.
        prefix = set(np.unique(seqs[: len(seqs) // 4])) - {ord("\n")}
        assert len(prefix) >= 0.8 * len(letters), (split, len(prefix), len(letters))
    again = text_splits(files, cfg)
    assert all(np.array_equal(again[s], seqs) for s, seqs in text_splits(files, cfg).items())


def test_synthetic_ingest_streams_shards_with_hashes_and_is_deterministic(tmp_path):
    cfg = IngestConfig(dataset="synthetic", rows=5_000, shards=3)
    first = ingest(cfg, str(tmp_path / "a"))
    assert sum(first.rows(s) for s in ("train", "val", "test")) == 5_000
    x, y = first.load_split("train")  # read_split checks every shard's SHA-256
    assert x.shape == (first.rows("train"), 64) and set(np.unique(y)) == set(range(10))
    assert len(first.shard_uris("train")) == 3
    again = ingest(cfg, str(tmp_path / "b"))
    assert again.data["splits"] == first.data["splits"]
    sizes = [s["rows"] for s in first.data["splits"]["train"]["shards"]]
    assert sizes == [len(a) for a in np.array_split(np.arange(first.rows("train")), 3)]


def test_synthetic_shard_sizes_need_no_index_array():
    from jobs.ingest import shard_sizes

    for rows, shards in [(100, 3), (7, 64), (8_500_000, 64)]:
        expected = [len(a) for a in np.array_split(np.arange(rows), shards)]
        assert shard_sizes(rows, shards) == expected


def _parquet(path, features, labels) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"features": features, "label": labels}), path)
    return str(path)


def test_new_data_from_parquet_is_split_stratified_with_its_profile(tmp_path):
    import numpy as np

    from jobs.ingest import IngestConfig, ingest
    from models.drift import InputProfile

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 16, (400, 8)).astype(np.float32), np.arange(400) % 4
    folder = tmp_path / "new"
    folder.mkdir()
    _parquet(folder / "a.parquet", x[:200].tolist(), y[:200])  # a folder of files
    _parquet(folder / "b.parquet", x[200:].tolist(), y[200:])
    manifest = ingest(IngestConfig(dataset="fresh", source=str(folder)), str(tmp_path / "s"))
    assert manifest.data["dataset"] == "fresh" and manifest.num_classes == 4
    assert manifest.feature_shape == (8,)
    assert sum(manifest.rows(s) for s in ("train", "val", "test")) == 400
    train_x, train_y = manifest.load_split("train")
    assert set(np.bincount(train_y)) == {len(train_y) // 4}  # stratified
    assert isinstance(manifest.input_profile, InputProfile)  # drift is measured against it
    assert manifest.data["source"] == str(folder)


@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ({"features": [[1.0, 2.0]] * 60}, "['label'] missing"),
        ({"features": [[1.0, 2.0]] * 59 + [[1.0]], "label": [0, 1] * 30}, "equal-length"),
        ({"features": [[1.0, None]] * 60, "label": [0, 1] * 30}, "finite numbers"),
        ({"features": [["1", "2"]] * 60, "label": [0, 1] * 30}, "lists of finite numbers"),
        ({"features": [1.0] * 60, "label": [0, 1] * 30}, "lists of finite numbers"),
        ({"features": [[1.0, 2.0]] * 60, "label": [0.5] * 60}, "labels must be integers"),
        ({"features": [[1.0, 2.0]] * 60, "label": [-1, 0] * 30}, "class numbers"),
        ({"features": [[1.0, 2.0]] * 10, "label": [0, 1] * 5}, "at least 50"),
        ({"features": [[1.0, 2.0]] * 60, "label": [0] * 59 + [1]}, "stratified"),
    ],
)
def test_new_data_that_cannot_be_ingested_is_refused_naming_why(
    settings_env, tmp_path, columns, needle
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.ingest import main

    pq.write_table(pa.table(columns), tmp_path / "bad.parquet")
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "fresh", "--source", str(tmp_path / "bad.parquet")])
    assert str(exit_info.value).startswith("[ingest] --source: ") and needle in str(
        exit_info.value
    ), exit_info.value
    assert not (tmp_path / "home" / "storage" / "datasets" / "fresh").exists()  # nothing half


def test_ingest_names_built_in_datasets_and_sources_apart(settings_env, tmp_path, capsys):
    from jobs.ingest import main

    for argv, needle in [
        (["--dataset", "fresh"], "give --source"),
        (["--dataset", "digits", "--source", str(tmp_path)], "built in"),
        (["--dataset", "../x", "--source", str(tmp_path)], "--dataset '../x'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no Parquet data at"):
        main(["--dataset", "fresh", "--source", str(tmp_path / "nothing")])
