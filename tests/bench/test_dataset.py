"""Loading GEdit-Bench from a local Parquet copy: fields, filters and errors for a wrong or partial copy."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.errors import DataFormatError


def test_samples_carry_every_field_and_decode_images(gedit_copy):
    samples = load_gedit(gedit_copy, allow_partial=True)
    assert len(samples) == 12
    sample = next(s for s in samples if s.key == "colo0001" and s.language == "cn")
    assert sample.task_type == "color_alter"
    assert sample.instruction.startswith("把它变成")
    assert sample.intersection_exist is False
    assert sample.input_image.size == (24, 16) and sample.input_image.mode == "RGB"
    assert sample.input_image_raw.size == (48, 32)


def test_language_and_task_filters_select_matching_rows(gedit_copy):
    samples = load_gedit(gedit_copy, languages=["en"], tasks=["subject-add", "color_alter"], allow_partial=True)
    assert len(samples) == 4
    assert {s.language for s in samples} == {"en"}
    assert {s.task_type for s in samples} == {"subject-add", "color_alter"}


def test_partial_copy_is_refused_unless_allowed(gedit_copy):
    with pytest.raises(DataFormatError, match="differs from the published benchmark.*background_change: 2 of 40"):
        load_gedit(gedit_copy)


def test_missing_shard_is_named(gedit_copy):
    (gedit_copy / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(DataFormatError, match="missing shard.*train-00001-of-00002.parquet"):
        load_gedit(gedit_copy, allow_partial=True)


def test_missing_column_is_named(tmp_path, make_gedit_rows):
    rows = [{k: v for k, v in row.items() if k != "Intersection_exist"} for row in make_gedit_rows(1)]
    (tmp_path / "copy").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "copy" / "train.parquet")
    with pytest.raises(DataFormatError, match="lacks GEdit-Bench column.*Intersection_exist"):
        load_gedit(tmp_path / "copy", allow_partial=True)


def test_empty_directory_and_unknown_filters_are_refused(tmp_path, gedit_copy):
    with pytest.raises(DataFormatError, match="unknown GEdit-Bench language"):
        load_gedit(gedit_copy, languages=["fr"], allow_partial=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no Parquet files"):
        load_gedit(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="unknown GEdit-Bench task"):
        load_gedit(gedit_copy, tasks=["subject_add"], allow_partial=True)


def test_duplicate_rows_are_refused(tmp_path, make_gedit_rows, make_gedit_copy):
    rows = make_gedit_rows(1)
    make_gedit_copy(tmp_path / "copy", rows + rows[:1])
    with pytest.raises(DataFormatError, match="repeats"):
        load_gedit(tmp_path / "copy", allow_partial=True)
