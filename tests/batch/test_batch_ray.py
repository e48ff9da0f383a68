"""The Ray engine writes the same rows as the local one (optional group: ``pytest -m ray``)."""

import pandas as pd
import pytest
import torch
from batch_files import write_jsonl

from step1x_edit.batch import LocalEngine, ModelSpec, RayEngine, edit_batch
from step1x_edit.batch.editor import TIMING_COLUMNS

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Torch on one thread, as in a Ray actor with one CPU: float sums split over threads round differently, so
    bit-equal images need the same thread count (on a GPU, the same device)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(store_dir) -> pd.DataFrame:
    return pd.read_parquet(store_dir / "shards").drop(columns=list(TIMING_COLUMNS)).sort_values("sample_id",
                                                                                                ignore_index=True)


def test_each_engine_gives_the_same_rows_for_the_same_seeds(local_ray, one_thread, pairs, tmp_path):
    source = write_jsonl(pairs.parent / "mixed.jsonl", [
        *[{"image": line["image"], "instruction": line["instruction"], "seed": index}
          for index, line in enumerate(pd.read_json(pairs, lines=True).to_dict("records"))],
        {"image": "broken.png", "instruction": "Make it night."},
        {"image": "shapes.png", "instruction": ""},
    ])
    model = ModelSpec(device="cpu")
    local = edit_batch(source, tmp_path / "local", model=model, shard_size=2, engine=LocalEngine(), progress=False)
    remote = edit_batch(source, tmp_path / "ray", model=model, shard_size=2,
                        engine=RayEngine(actors=2, cpus_per_actor=1), progress=False)
    assert (remote.edited, remote.failed) == (local.edited, local.failed) == (5, 2)
    pd.testing.assert_frame_equal(_rows(tmp_path / "ray"), _rows(tmp_path / "local"))


def test_the_ray_engine_resumes_a_store_the_local_engine_began(local_ray, one_thread, pairs, tmp_path):
    model = ModelSpec(device="cpu")
    lines = pairs.read_text().splitlines()
    first = pairs.parent / "first.jsonl"
    first.write_text("\n".join(lines[:2]) + "\n")
    edit_batch(first, tmp_path / "out", model=model, shard_size=2, progress=False)
    summary = edit_batch(pairs, tmp_path / "out", model=model, shard_size=2, engine=RayEngine(actors=2),
                         progress=False)
    assert summary.processed == 3 and summary.edited == 5
    edit_batch(pairs, tmp_path / "whole", model=model, shard_size=2, progress=False)
    pd.testing.assert_frame_equal(_rows(tmp_path / "out"), _rows(tmp_path / "whole"))
