"""Batch editing into a store: every sample once, each from its own seed, bad samples recorded as failed."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from batch_files import write_jsonl
from PIL import Image

from step1x_edit.batch import EditStore, ModelSpec, Settings, edit_batch
from step1x_edit.batch.editor import TIMING_COLUMNS
from step1x_edit.batch.inputs import derived_seed
from step1x_edit.cli import main
from step1x_edit.errors import DataFormatError

CPU = ModelSpec(device="cpu")


def _rows(store_dir) -> pd.DataFrame:
    """Every row of a batch store, read with pandas from its shard folder as it is, timing left out."""
    return pd.read_parquet(store_dir / "shards").drop(columns=list(TIMING_COLUMNS)).sort_values("sample_id",
                                                                                                ignore_index=True)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_every_sample_is_edited_into_a_store_that_pandas_reads(pairs, tmp_path):
    summary = edit_batch(pairs, tmp_path / "out", model=CPU, shard_size=2, png_dir=tmp_path / "png", progress=False)
    assert (summary.total, summary.edited, summary.failed, summary.processed) == (5, 5, 0, 5)
    rows = _rows(tmp_path / "out")
    assert list(rows.sample_id) == ["night", "row-0000000", "row-0000001", "row-0000002", "row-0000003"]
    assert set(rows.status) == {"edited"} and rows.error.isna().all()
    assert (rows.model == "step1x-edit-demo").all() and (rows.model_version == "v1.1").all()
    night = rows[rows.sample_id == "night"].iloc[0]
    assert json.loads(night.settings)["num_inference_steps"] == 2
    assert _pixels(night.edited).shape == (night.height, night.width, 3) == (256, 256, 3)
    assert night.source == (pairs.parent / "sign.png").read_bytes()
    assert sorted(path.name for path in (tmp_path / "png").iterdir()) == [f"{name}.png" for name in rows.sample_id]
    assert len(EditStore(tmp_path / "out").shards(verify=True)) == 3


def test_a_batch_edit_is_the_clis_edit_with_the_samples_seed(pairs, tmp_path):
    edit_batch(pairs, tmp_path / "out", model=CPU, batch_size=4, progress=False)
    rows = _rows(tmp_path / "out").set_index("sample_id")
    assert rows.loc["row-0000002", "batch_size"] == 3  # with rows 0 and 1: one working size, the same settings
    assert main(["edit", str(pairs.parent / "shapes.png"), "Make the background blue.", "--seed", "3",
                 "--device", "cpu", "-o", str(tmp_path / "cli.png")]) == 0
    assert np.array_equal(_pixels(rows.loc["row-0000002", "edited"]), _pixels((tmp_path / "cli.png").read_bytes()))


def test_a_sample_without_a_seed_gets_one_from_its_id(pairs, tmp_path):
    edit_batch(pairs, tmp_path / "a", model=CPU, progress=False)
    rows = _rows(tmp_path / "a").set_index("sample_id")
    assert rows.loc["row-0000000", "seed"] == derived_seed("row-0000000", 0)
    assert rows.loc["row-0000001", "seed"] == 7
    edit_batch(pairs, tmp_path / "b", model=CPU, seed=1, progress=False)
    other = _rows(tmp_path / "b").set_index("sample_id")
    assert other.loc["row-0000000", "seed"] != rows.loc["row-0000000", "seed"]
    assert other.loc["row-0000001", "seed"] == 7


def test_a_poisoned_sample_is_recorded_as_failed_and_the_rest_finish(images, tmp_path):
    source = write_jsonl(images / "poisoned.jsonl", [
        {"image": "shapes.png", "instruction": "Make the red circle green."},
        {"image": "broken.png", "instruction": "Make the red circle green."},
        {"image": "shapes.png", "instruction": "   "},
        {"image": "nowhere.png", "instruction": "Make it night."},
        {"image": "shapes.png", "instruction": "Make it night.", "strength": 2},
        {"image": "sign.png", "instruction": "Make it night."},
    ])
    summary = edit_batch(source, tmp_path / "out", model=CPU, progress=False)
    assert (summary.edited, summary.failed) == (2, 4)
    rows = _rows(tmp_path / "out").set_index("sample_id")
    assert list(rows.status) == ["edited", "failed", "failed", "failed", "failed", "edited"]
    assert "not an image" in rows.loc["row-0000001", "error"]
    assert "instruction is empty" in rows.loc["row-0000002", "error"]
    assert "not found" in rows.loc["row-0000003", "error"]
    assert "strength must be a finite number in (0.0, 1.0]" in rows.loc["row-0000004", "error"]
    assert rows.loc[["row-0000001", "row-0000002"], "edited"].isna().all()


def test_a_killed_run_resumes_with_no_sample_lost_or_duplicated(images, tmp_path):
    source = write_jsonl(images / "many.jsonl", [
        {"image": "shapes.png", "instruction": f"Make shape {index} green.", "num_inference_steps": 3}
        for index in range(8)])
    command = [sys.executable, "-m", "step1x_edit.cli", "edit-batch", str(source), "--out", str(tmp_path / "out"),
               "--shard-size", "1", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "out" / "shards"
    deadline = time.monotonic() + 120
    while process.poll() is None and len(list(shards.glob("*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list(shards.glob("*.parquet")))
    assert 0 < written < 8, "the run was not stopped part-way"
    assert main(command[3:]) == 0
    edit_batch(source, tmp_path / "whole", model=CPU, shard_size=1, progress=False)
    resumed = _rows(tmp_path / "out")
    assert list(resumed.sample_id) == [f"row-{index:07d}" for index in range(8)]
    pd.testing.assert_frame_equal(resumed, _rows(tmp_path / "whole"))


def test_a_changed_sample_redoes_only_its_shard(pairs, tmp_path):
    edit_batch(pairs, tmp_path / "out", model=CPU, shard_size=2, progress=False)
    lines = pairs.read_text().splitlines()
    lines[4] = json.dumps({"image": "sign.png", "instruction": "Make it day.", "id": "night"})
    pairs.write_text("\n".join(lines) + "\n")
    summary = edit_batch(pairs, tmp_path / "out", model=CPU, shard_size=2, progress=False)
    assert summary.processed == 1
    assert _rows(tmp_path / "out").set_index("sample_id").loc["night", "instruction"] == "Make it day."


def test_a_store_made_with_other_settings_is_refused_unless_overwritten(pairs, tmp_path):
    edit_batch(pairs, tmp_path / "out", model=CPU, progress=False)
    with pytest.raises(DataFormatError, match="different configuration"):
        edit_batch(pairs, tmp_path / "out", model=CPU, settings=Settings(guidance_scale=2.0), progress=False)
    summary = edit_batch(pairs, tmp_path / "out", model=CPU, settings=Settings(guidance_scale=2.0), overwrite=True,
                         progress=False)
    assert summary.processed == 5
    assert all(json.loads(text)["guidance_scale"] == 2.0 for text in _rows(tmp_path / "out").settings)


def test_a_folder_is_edited_with_each_instruction_of_its_file(images, tmp_path):
    (images / "broken.png").unlink()
    (images / "instructions.txt").write_text("# one a line\nMake it night.\n\nMake the sky red.\n")
    summary = edit_batch(images, tmp_path / "out", model=CPU, progress=False)
    assert summary.edited == 4
    rows = _rows(tmp_path / "out")
    assert list(rows.sample_id) == ["shapes.png#0", "shapes.png#1", "sign.png#0", "sign.png#1"]
    assert list(rows.instruction) == ["Make it night.", "Make the sky red."] * 2


def test_a_data_store_is_edited_from_its_instructions(tmp_path):
    from step1x_edit.data import LocalExecutor, SyntheticConfig, generate_dataset

    data = generate_dataset(tmp_path / "synth", 3, SyntheticConfig(resolution=(64, 64), shard_size=2),
                            LocalExecutor(1), progress=False)
    triplets = {record["sample_id"]: record for record in data.iter_records()}
    summary = edit_batch(tmp_path / "synth", tmp_path / "out", model=CPU, language="zh", progress=False)
    assert summary.edited == 3
    for row in _rows(tmp_path / "out").itertuples():
        assert row.instruction == triplets[row.sample_id]["instruction_zh"]
        assert row.source == triplets[row.sample_id]["source_image"]
