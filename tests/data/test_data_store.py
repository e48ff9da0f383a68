"""The Parquet store: generation into shards, resume after a kill, dedup, splits, export and import."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from step1x_edit.data import (
    TASKS,
    LocalExecutor,
    Pipeline,
    Stage,
    Store,
    SyntheticConfig,
    deduplicate,
    export_official_json,
    export_webdataset,
    generate_dataset,
    import_official_json,
    import_pair_folder,
    iter_samples,
    summarize,
)
from step1x_edit.data.executors import ShardSpec, run_pipeline
from step1x_edit.data.records import decode_png
from step1x_edit.errors import DataFormatError

SMALL = SyntheticConfig(resolution=(64, 96), shard_size=11)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return generate_dataset(
        tmp_path_factory.mktemp("store") / "synth", 44, SMALL, LocalExecutor(1), progress=False
    )


def test_generation_covers_all_eleven_categories_with_valid_pngs(small_store):
    summary = summarize(small_store)
    assert summary["total"] == 44 and summary["missing_instructions"] == 0
    assert summary["per_task"] == {task: 4 for task in TASKS}
    for record in small_store.iter_records():
        assert record["source_image"].startswith(b"\x89PNG") and record["target_image"].startswith(b"\x89PNG")
        assert decode_png(record["source_image"]).size == (record["width"], record["height"])
        assert record["instruction_en"] and record["instruction_zh"]
        assert record["generator"]["config_hash"] == small_store.config_hash


def test_two_workers_write_the_same_store_as_one(tmp_path, small_store):
    other = generate_dataset(tmp_path / "two", 44, SMALL, LocalExecutor(2), progress=False)
    for shard in small_store.shards():
        assert small_store.read_shard(shard.name) == other.read_shard(shard.name)


def test_killed_run_resumes_to_exactly_the_requested_samples(tmp_path):
    out, count, shard_size = tmp_path / "killed", 60, 4
    config = SyntheticConfig(resolution=(384, 384), shard_size=shard_size)
    command = [
        sys.executable,
        "-m",
        "step1x_edit.cli",
        "data",
        "generate",
        "--count",
        str(count),
        "--out",
        str(out),
    ]
    command += ["--resolution", "384", "--shard-size", str(shard_size), "--workers", "1", "--quiet"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if (out / "shards").is_dir() and any((out / "shards").glob(".*.done.json")):
            break
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # as abrupt as a power cut: no cleanup runs
    process.wait()
    finished = len(list((out / "shards").glob(".*.done.json")))
    assert 1 <= finished < count // shard_size, f"the run was not interrupted midway ({finished} shards done)"

    generate_dataset(out, count, config, LocalExecutor(1), progress=False)  # the same command again
    resumed = [
        (r["sample_id"], r["content_hash"]) for r in Store(out).iter_records(["sample_id", "content_hash"])
    ]
    assert len(resumed) == count and len({sample_id for sample_id, _ in resumed}) == count
    clean = generate_dataset(tmp_path / "clean", count, config, LocalExecutor(1), progress=False)
    assert resumed == [
        (r["sample_id"], r["content_hash"]) for r in clean.iter_records(["sample_id", "content_hash"])
    ]
    assert not [p for p in (out / "shards").iterdir() if ".tmp-" in p.name]  # no temporaries left


def test_rerun_skips_completed_shards_and_growing_count_keeps_old_samples(tmp_path):
    out = tmp_path / "grow"
    store = generate_dataset(out, 22, SMALL, LocalExecutor(1), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    generate_dataset(out, 22, SMALL, LocalExecutor(1), progress=False)
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    generate_dataset(out, 30, SMALL, LocalExecutor(1), progress=False)
    assert len(store) == 30
    assert before == {
        p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet") if p.name in before
    }


def test_store_made_by_another_config_is_refused(tmp_path):
    generate_dataset(tmp_path / "s", 11, SMALL, LocalExecutor(1), progress=False)
    with pytest.raises(DataFormatError, match="different configuration"):
        generate_dataset(
            tmp_path / "s",
            11,
            SyntheticConfig(resolution=(64, 64), shard_size=11),
            LocalExecutor(1),
            progress=False,
        )


def _identity(batch):
    return batch


def _drop_one(batch):
    return batch[1:]


def test_stage_that_drops_rows_is_an_error(tmp_path):
    store = Store.create(tmp_path / "x", {"config_hash": "abc"})
    shard = ShardSpec("part-00000", "k", ({"sample_id": "a"}, {"sample_id": "b"}))
    with pytest.raises(RuntimeError, match="returned 1 rows"):
        run_pipeline(Pipeline((Stage("drop", _drop_one),)), [shard], store, LocalExecutor(1), progress=False)


def test_split_is_deterministic_and_disjoint(small_store):
    train = {s.sample_id for s in iter_samples(small_store.root, "train", validation_fraction=0.3)}
    validation = {s.sample_id for s in iter_samples(small_store.root, "validation", validation_fraction=0.3)}
    assert train and validation and not train & validation and len(train | validation) == 44
    assert validation == {
        s.sample_id for s in iter_samples(small_store.root, "validation", validation_fraction=0.3)
    }
    sample = next(iter_samples(small_store.root, None))
    assert isinstance(sample.source, Image.Image) and sample.source.mode == "RGB"


def test_official_json_export_imports_back_losslessly(tmp_path, small_store):
    path = export_official_json(small_store.root, tmp_path / "official", progress=False)
    metadata = json.loads(path.read_text())
    assert len(metadata) == 44
    target, entry = next(iter(metadata.items()))
    assert set(entry) == {"ref_image_path", "caption"} and (tmp_path / "official" / target).is_file()
    imported = import_official_json(path, tmp_path / "imported", progress=False)
    assert len(imported) == 44
    originals = {r["sample_id"]: r for r in small_store.iter_records()}
    for record in imported.iter_records():
        original = originals[os.path.basename(record["provenance"]["source_path"]).removesuffix("_src.png")]
        assert record["instruction_en"] == original["instruction_en"]
        assert np.array_equal(
            np.asarray(decode_png(record["source_image"])), np.asarray(decode_png(original["source_image"]))
        )
        assert np.array_equal(
            np.asarray(decode_png(record["target_image"])), np.asarray(decode_png(original["target_image"]))
        )


def test_webdataset_export_writes_tar_shards_with_pngs_and_json(tmp_path, small_store):
    paths = export_webdataset(small_store.root, tmp_path / "wds", samples_per_shard=20, progress=False)
    assert [p.name for p in paths] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert sum(n.endswith(".src.png") for n in names) == 20 and meta["instruction_zh"]


def test_exact_duplicates_are_removed_by_content_hash(tmp_path):
    folder = tmp_path / "pairs"
    for sub in ("source", "target"):
        (folder / sub).mkdir(parents=True)
    for name, color in (("a", (255, 0, 0)), ("b", (255, 0, 0)), ("c", (0, 0, 255))):
        Image.new("RGB", (64, 64), color).save(folder / "source" / f"{name}.png")
        Image.new("RGB", (64, 64), (0, 255, 0)).save(folder / "target" / f"{name}.png")
    (folder / "instructions.jsonl").write_text(
        "\n".join(json.dumps({"name": n, "instruction_en": "make it green"}) for n in "abc")
    )
    store = import_pair_folder(folder, tmp_path / "store", progress=False)
    assert len(store) == 2  # a and b are identical triplets
    assert deduplicate(store) == 0


def test_pair_folder_with_missing_or_mismatched_target_is_a_clear_error(tmp_path):
    (tmp_path / "p" / "source").mkdir(parents=True)
    (tmp_path / "p" / "target").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "p" / "source" / "x.png")
    with pytest.raises(DataFormatError, match="no target"):
        import_pair_folder(tmp_path / "p", tmp_path / "out", progress=False)
    Image.new("RGB", (8, 9)).save(tmp_path / "p" / "target" / "x.png")
    with pytest.raises(DataFormatError, match="must share one size"):
        import_pair_folder(tmp_path / "p", tmp_path / "out", progress=False)


def test_opening_a_non_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="not a data store"):
        summarize(Store(tmp_path))
