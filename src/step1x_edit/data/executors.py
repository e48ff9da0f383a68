"""Executors: run a :class:`~step1x_edit.data.stages.Pipeline` over shards into a :class:`~.store.Store`.

:class:`LocalExecutor` (default) processes shards in worker processes on this machine; :class:`RayExecutor`
expresses the same pipeline as a Ray Data plan (plain stages as tasks, model stages as actor pools) and can join
an existing cluster. Both skip shards that are complete and intact (see :meth:`~.store.Store.shard_problem`),
rebuild damaged ones, write each shard atomically, and sort rows by ``sample_id``, so the same input gives the
same store with either executor. Local worker processes end when their parent does, even when it is killed.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..errors import Step1XEditError
from ..validate import integer
from .limits import MAX_WORKERS
from .records import table_to_records
from .stages import BatchFn, Pipeline, Record, apply_stage, check_batch
from .store import NOT_WRITTEN, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: an output shard ``name``, the ``key`` that identifies its input, and the input itself
    (inline ``records`` such as generation seeds, or a Parquet ``input_path`` from another store)."""

    name: str
    key: str
    records: tuple[Record, ...] | None = None
    input_path: str | None = None

    def load(self) -> list[Record]:
        if self.records is not None:
            return [dict(record) for record in self.records]
        if self.input_path is None:
            raise ValueError(f"shard {self.name} has neither records nor an input path")
        return table_to_records(pq.read_table(self.input_path))


def pending_shards(store: Store, shards: Sequence[ShardSpec]) -> list[ShardSpec]:
    """The shards not yet complete and intact. One that exists but is damaged (its file missing, truncated or not
    matching the sha256 in its marker, its marker garbled) or made from other input is logged as rebuilt."""
    todo = []
    config_hash = store.config_hash
    for shard in shards:
        problem = store.shard_problem(shard.name, shard.key, config_hash)
        if problem is None:
            continue
        if problem != NOT_WRITTEN:
            logger.warning("rebuilding shard %s of %s: %s", shard.name, store.root, problem)
        todo.append(shard)
    return todo


def run_pipeline(
    pipeline: Pipeline,
    shards: Sequence[ShardSpec],
    store: Store,
    executor: LocalExecutor | RayExecutor | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Process every unfinished shard of ``shards`` into ``store``; remove shards not in ``shards``.
    Returns the markers of the shards written by this call."""
    names = [shard.name for shard in shards]
    if len(set(names)) != len(names):
        raise ValueError("shard names must be unique")
    store.set_shards(names)
    todo = pending_shards(store, shards)
    if not todo:
        return []
    return (executor or LocalExecutor()).run(pipeline, todo, store, progress=progress)


# -- local -----------------------------------------------------------------------------------------------
_WORKER_FNS: list[BatchFn] | None = None
# How often a worker checks that the process that started it is still there (seconds).
_PARENT_POLL = 0.2


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker process once ``parent_pid`` is no longer its parent: the parent is gone (even killed by
    SIGKILL, which runs no cleanup) and the worker was re-parented. Its unfinished shard stays a temporary file
    that the next run deletes."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL)
    os._exit(1)


def _init_worker(pipeline: Pipeline, parent_pid: int) -> None:
    # First, so that a worker whose parent dies while it builds its stages (loads a model) ends too.
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="exit-with-parent", daemon=True).start()
    global _WORKER_FNS
    _WORKER_FNS = [stage.build() for stage in pipeline.stages]


def _process_shard(
    pipeline: Pipeline, fns: Sequence[BatchFn], shard: ShardSpec, store: Store
) -> dict[str, Any]:
    records = shard.load()
    for stage, fn in zip(pipeline.stages, fns, strict=True):
        records = apply_stage(fn, stage, records)
    return store.write_shard(shard.name, records, shard.key, store.config_hash)


def _process_shard_in_worker(pipeline: Pipeline, shard: ShardSpec, store: Store) -> dict[str, Any]:
    assert _WORKER_FNS is not None, "worker was not initialised"
    return _process_shard(pipeline, _WORKER_FNS, shard, store)


class LocalExecutor:
    """Runs shards in ``workers`` processes (default: all cores); ``workers=1`` runs in this process."""

    def __init__(self, workers: int | None = None):
        if workers is not None:
            integer("workers", workers, 1, MAX_WORKERS)
        self.workers = workers or os.cpu_count() or 1

    def run(self, pipeline: Pipeline, shards: Sequence[ShardSpec], store: Store, progress: bool = True):
        bar = tqdm(total=sum(_shard_size(shard) for shard in shards), unit="sample", disable=not progress)
        markers = []
        with bar:
            if self.workers == 1 or len(shards) == 1:
                fns = [stage.build() for stage in pipeline.stages]
                for shard in shards:
                    markers.append(_process_shard(pipeline, fns, shard, store))
                    bar.update(markers[-1]["rows"])
                return markers
            # Model stages may hold CUDA or threaded runtimes that do not survive fork: start clean processes.
            # Either way this process is the workers' parent (not a fork server), which they watch to end with it.
            needs_spawn = any(stage.resources.model for stage in pipeline.stages)
            context = multiprocessing.get_context("spawn" if needs_spawn else "fork")
            with ProcessPoolExecutor(
                max_workers=min(self.workers, len(shards)),
                mp_context=context,
                initializer=_init_worker,
                initargs=(pipeline, os.getpid()),
            ) as pool:
                futures = [pool.submit(_process_shard_in_worker, pipeline, shard, store) for shard in shards]
                for future in as_completed(futures):
                    markers.append(future.result())
                    bar.update(markers[-1]["rows"])
        return sorted(markers, key=lambda marker: marker["shard"])


def _shard_size(shard: ShardSpec) -> int:
    if shard.records is not None:
        return len(shard.records)
    return pq.ParquetFile(shard.input_path).metadata.num_rows


# -- ray -------------------------------------------------------------------------------------------------
# Rows travel through Ray as (shard index, row index, pickled record): records hold nested, sometimes empty,
# maps that Arrow type inference would mangle, and the stage contract is defined on Python dicts.


def _to_rows(shard_index: int, records: list[Record]) -> list[dict[str, Any]]:
    return [
        {"_shard": shard_index, "_row": row, "_payload": pickle.dumps(record)}
        for row, record in enumerate(records)
    ]


def _apply_to_table(stage, fn: BatchFn, table: pa.Table) -> pa.Table:
    batch = [pickle.loads(payload) for payload in table.column("_payload").to_pylist()]
    result = fn(batch)
    check_batch(stage, batch, result)
    payloads = pa.array([pickle.dumps(record) for record in result], type=pa.binary())
    return table.set_column(table.schema.get_field_index("_payload"), "_payload", payloads)


def _load_shard(shards: Sequence[ShardSpec], item: dict[str, Any]) -> list[dict[str, Any]]:
    index = int(item["shard"])
    return _to_rows(index, shards[index].load())


def _task_stage(stage, table: pa.Table) -> pa.Table:
    """A plain stage as a Ray task."""
    return _apply_to_table(stage, stage.fn, table)


class _ActorStage:
    """A model stage as a Ray actor: the model is built once per actor."""

    def __init__(self, stage):
        self.stage = stage
        self.fn = stage.build()

    def __call__(self, table: pa.Table) -> pa.Table:
        return _apply_to_table(self.stage, self.fn, table)


def _write_group(shards: Sequence[ShardSpec], store: Store, config_hash: str, table: pa.Table) -> pa.Table:
    table = table.sort_by("_row")
    shard = shards[table.column("_shard")[0].as_py()]
    records = [pickle.loads(payload) for payload in table.column("_payload").to_pylist()]
    marker = store.write_shard(shard.name, records, shard.key, config_hash)
    return pa.table({"shard": [marker["shard"]], "rows": [marker["rows"]]})


class RayExecutor:
    """Runs the pipeline with Ray Data. ``address=None`` starts a local Ray with ``num_cpus``; ``"auto"`` or
    ``"ray://host:10001"`` joins an existing cluster (whose workers must see the output directory)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        if num_cpus is not None:
            integer("num_cpus", num_cpus, 1, MAX_WORKERS)
        self.address = address
        self.num_cpus = num_cpus

    def _init(self):
        try:
            import ray
        except ImportError as error:
            raise Step1XEditError('the Ray engine needs Ray Data: pip install "step1x-edit[ray]"') from error
        if not ray.is_initialized():
            if self.address is None:  # a private local Ray, quiet and sized to this machine
                ray.init(
                    num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False
                )
            else:  # an existing cluster brings its own resources and settings
                ray.init(address=self.address)
        return ray

    def run(self, pipeline: Pipeline, shards: Sequence[ShardSpec], store: Store, progress: bool = True):
        ray = self._init()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        dataset = ray.data.from_items([{"shard": index} for index in range(len(shards))])
        dataset = dataset.flat_map(functools.partial(_load_shard, list(shards)))
        for stage in pipeline.stages:
            resources = stage.resources
            common = {"batch_size": stage.batch_size, "batch_format": "pyarrow", "num_cpus": resources.cpus}
            if resources.gpus:
                common["num_gpus"] = resources.gpus
            if resources.model:
                dataset = dataset.map_batches(
                    _ActorStage, fn_constructor_args=(stage,), concurrency=resources.concurrency, **common
                )
            else:
                dataset = dataset.map_batches(functools.partial(_task_stage, stage), **common)
        writer = functools.partial(_write_group, list(shards), store, store.config_hash)
        rows = dataset.groupby("_shard").map_groups(writer, batch_format="pyarrow").take_all()
        return [
            json.loads(store.marker_path(name).read_text()) for name in sorted(row["shard"] for row in rows)
        ]
