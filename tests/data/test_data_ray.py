"""The Ray Data executor writes the same store as the local one (optional group: ``pytest -m ray``)."""

import pytest

from step1x_edit.data import (
    LocalExecutor,
    Pipeline,
    RayExecutor,
    SyntheticConfig,
    generate_dataset,
    transform_store,
)
from step1x_edit.data.annotate.filters import checks_stage

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_executor():
    executor = RayExecutor(num_cpus=2)
    yield executor
    ray.shutdown()


def test_ray_executor_produces_the_same_records_as_local(tmp_path, ray_executor):
    config = SyntheticConfig(resolution=(64, 96), shard_size=8)
    local = generate_dataset(tmp_path / "local", 33, config, LocalExecutor(1), progress=False)
    remote = generate_dataset(tmp_path / "ray", 33, config, ray_executor, progress=False)
    assert [s.name for s in remote.shards()] == [s.name for s in local.shards()]
    for shard in local.shards():
        assert remote.read_shard(shard.name) == local.read_shard(shard.name)


def test_ray_runs_a_derived_pipeline_and_resumes(tmp_path, ray_executor):
    source = generate_dataset(
        tmp_path / "src",
        22,
        SyntheticConfig(resolution=(64, 64), shard_size=11),
        LocalExecutor(1),
        progress=False,
    )
    pipeline = Pipeline((checks_stage(),))
    local = transform_store(source.root, tmp_path / "local", pipeline, LocalExecutor(1), progress=False)
    remote = transform_store(source.root, tmp_path / "ray", pipeline, ray_executor, progress=False)
    assert list(remote.iter_records()) == list(local.iter_records())
    (tmp_path / "ray" / "shards" / ".part-00001.done.json").unlink()
    transform_store(source.root, tmp_path / "ray", pipeline, ray_executor, progress=False)
    assert len(remote) == 22


def test_model_stage_runs_as_an_actor_pool_with_the_same_results(tmp_path, ray_executor, chat_server):
    from step1x_edit.data.annotate.client import ChatEndpoint
    from step1x_edit.data.annotate.mllm import verify_stage

    config = SyntheticConfig(resolution=(64, 64), shard_size=3)
    source = generate_dataset(tmp_path / "src", 6, config, LocalExecutor(1), progress=False)
    endpoint = ChatEndpoint(chat_server.url, "tiny", "key", timeout=5.0, backoff=0.001)
    pipeline = Pipeline((verify_stage(endpoint, concurrency=2, actors=2),))
    local = transform_store(source.root, tmp_path / "local", pipeline, LocalExecutor(1), progress=False)
    remote = transform_store(source.root, tmp_path / "ray", pipeline, ray_executor, progress=False)
    assert list(remote.iter_records()) == list(local.iter_records())
    assert all(record["scores"]["mllm_verify"] == 8.0 for record in remote.iter_records())


def test_ray_data_reads_a_stores_shard_folder(tmp_path, ray_executor):
    store = generate_dataset(
        tmp_path / "store", 12, SyntheticConfig(resolution=(64, 64), shard_size=5), LocalExecutor(1), progress=False
    )
    rows = ray.data.read_parquet(str(store.shard_dir)).select_columns(["sample_id"]).take_all()
    assert sorted(row["sample_id"] for row in rows) == sorted(r["sample_id"] for r in store.iter_records(["sample_id"]))
