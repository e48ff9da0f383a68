"""A store's shard folder opens with the standard Parquet readers, and stores written before markers were hidden
still read (and are tidied, not rebuilt, by the command that made them)."""

import hashlib
import json
import os

import pandas
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

from step1x_edit.cli import main
from step1x_edit.data import LocalExecutor, Store, SyntheticConfig, generate_dataset
from step1x_edit.data.records import SCHEMA

CONFIG = SyntheticConfig(resolution=(64, 64), shard_size=5)
COUNT = 12
SCORES = {"changed_fraction": 0.25, "mllm_verify": 8.0}
REASONS = {"mllm_verify": "The edit matches."}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A generated store of 3 shards whose first shard's records carry named scores."""
    out = tmp_path_factory.mktemp("readers") / "synth"
    store = generate_dataset(out, COUNT, CONFIG, LocalExecutor(1), progress=False)
    first = store.shards()[0]
    records = [dict(record, scores=SCORES, score_reasons=REASONS) for record in store.read_shard(first.name)]
    store.write_shard(first.name, records, first.key, store.config_hash)
    return store


def sample_ids(store):
    return sorted(record["sample_id"] for record in store.iter_records(["sample_id"]))


def test_markers_are_hidden_beside_the_shards(store):
    names = sorted(path.name for path in (store.root / "shards").iterdir())
    assert names == [f".part-0000{i}.done.json" for i in range(3)] + [f"part-0000{i}.parquet" for i in range(3)]


def test_pandas_reads_the_shard_folder(store):
    frame = pandas.read_parquet(store.root / "shards")
    assert sorted(frame["sample_id"]) == sample_ids(store)
    scored = frame[frame["sample_id"] == store.read_shard("part-00000")[0]["sample_id"]].iloc[0]
    assert {item["name"]: item["value"] for item in scored["scores"]} == SCORES


def test_pyarrow_dataset_reads_the_shard_folder(store):
    table = pyarrow.dataset.dataset(store.root / "shards").to_table()
    assert table.schema == SCHEMA
    assert sorted(table.column("sample_id").to_pylist()) == sample_ids(store)


@pytest.mark.parametrize("how", ["data_dir", "data_files"])
def test_hugging_face_datasets_loads_the_shard_folder(store, tmp_path, how):
    import datasets

    shards = str(store.root / "shards")
    where = {"data_dir": shards} if how == "data_dir" else {"data_files": os.path.join(shards, "*")}
    loaded = datasets.load_dataset("parquet", **where, split="train", cache_dir=str(tmp_path))
    assert sorted(loaded["sample_id"]) == sample_ids(store)
    first = store.read_shard("part-00000")[0]
    row = loaded[loaded["sample_id"].index(first["sample_id"])]
    assert row["source_image"] == first["source_image"]
    assert {item["name"]: item["value"] for item in row["score_reasons"]} == REASONS


def make_old_style(store):
    """Rewrite ``store`` as stores were written before markers were hidden: visible ``NAME.done.json`` markers and
    Arrow map columns for the named scores."""
    old_types = {"scores": pa.map_(pa.string(), pa.float64()), "score_reasons": pa.map_(pa.string(), pa.string())}
    for shard in store.shards():
        table = pq.read_table(shard.path)
        for column, old_type in old_types.items():
            pairs = [[(item["name"], item["value"]) for item in row] for row in table.column(column).to_pylist()]
            table = table.set_column(table.schema.get_field_index(column), column, pa.array(pairs, type=old_type))
        pq.write_table(table, shard.path)
        hidden = store.shard_dir / f".{shard.name}.done.json"
        marker = json.loads(hidden.read_bytes())
        marker["sha256"] = hashlib.sha256(shard.path.read_bytes()).hexdigest()
        (store.shard_dir / f"{shard.name}.done.json").write_text(json.dumps(marker, sort_keys=True))
        hidden.unlink()


@pytest.fixture
def old_store(tmp_path):
    store = generate_dataset(tmp_path / "old", COUNT, CONFIG, LocalExecutor(1), progress=False)
    first = store.shards()[0]
    records = [dict(record, scores=SCORES, score_reasons=REASONS) for record in store.read_shard(first.name)]
    store.write_shard(first.name, records, first.key, store.config_hash)
    expected = list(store.iter_records())
    make_old_style(store)
    return store, expected


def test_a_store_with_visible_markers_and_map_columns_reads_the_same(old_store):
    store, expected = old_store
    assert not list(store.shard_dir.glob(".*.done.json"))
    assert [shard.name for shard in store.shards(verify=True)] == ["part-00000", "part-00001", "part-00002"]
    assert list(Store(store.root).iter_records()) == expected


def test_rerunning_the_command_on_an_old_store_hides_its_markers_without_rebuilding(old_store, capsys):
    store, expected = old_store
    before = {path.name: path.stat().st_mtime_ns for path in store.shard_dir.glob("*.parquet")}
    command = ["data", "generate", "--count", str(COUNT), "--out", str(store.root), "--resolution", "64"]
    assert main([*command, "--shard-size", "5", "--workers", "1", "--quiet"]) == 0
    assert before == {path.name: path.stat().st_mtime_ns for path in store.shard_dir.glob("*.parquet")}
    assert sorted(path.name for path in store.shard_dir.glob("*.done.json")) == [
        f".part-0000{i}.done.json" for i in range(3)
    ]
    assert list(store.iter_records()) == expected
    assert len(pandas.read_parquet(store.shard_dir)) == COUNT
