"""Batch editing of whole datasets: :func:`edit_batch` and its two engines.

The samples (:mod:`.inputs`) are cut, in input order, into shards of ``shard_size``; each shard's key is a hash of
its samples, and the output is an :class:`~.editor.EditStore` (the data engine's layout: Parquet shards, completion
markers with sha256). A shard is written whole, atomically, after all its samples are edited, and a rerun of the
same command skips every shard whose marker vouches for it, so a killed run resumes with no sample lost or
written twice.

- :class:`LocalEngine` (default): one pipeline in this process.
- :class:`RayEngine`: Ray Data over an existing cluster or a local Ray: the shards go through ``map_batches`` to a
  pool of actors, each holding one pipeline (``num_gpus`` per actor), and come back to this process, which writes
  them as they finish. Both engines edit a shard with the same code (:class:`~.editor.ShardEditor`: samples
  bucketed by working size), so they give the same rows.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from .. import validate
from ..data.executors import ShardSpec, pending_shards
from ..data.limits import MAX_SHARD_SIZE, MAX_WORKERS
from ..data.records import stable_hash
from ..data.store import make_folder
from ..errors import Step1XEditError
from .editor import STATUS_FAILED, EditStore, ModelSpec, ShardEditor
from .inputs import Sample, Settings, png_name, read_samples
from .limits import MAX_BATCH_SIZE, MAX_GPUS_PER_ACTOR

logger = logging.getLogger(__name__)

FORMAT = "step1x-edit-batch/1"
# Failures a summary lists by name (it counts the rest).
LISTED_FAILURES = 5


@dataclass(frozen=True)
class BatchShard:
    """Shard ``name`` of the output: its ``samples`` and the ``key`` (hash of their identities) its marker holds."""

    name: str
    key: str
    samples: tuple[Sample, ...]


@dataclass
class BatchSummary:
    """What a run left in the store: samples in all (``edited`` + ``failed``), those this run edited
    (``processed``, in ``seconds``), and the first failures as (sample id, reason)."""

    store: Path
    total: int
    edited: int
    failed: int
    processed: int
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


class LocalEngine:
    """One pipeline in this process (what a single GPU or a laptop wants)."""

    def run(self, model: ModelSpec, defaults: dict[str, Any], batch_size: int, shards: Sequence[BatchShard],
            write: Callable[[BatchShard, list[dict]], None], progress: Callable[[int], None]) -> None:
        editor = ShardEditor(model, defaults, batch_size)
        for shard in shards:
            write(shard, editor(shard.samples, on_done=progress))


class RayEngine:
    """Ray Data with a pool of ``actors`` actors, each holding one pipeline on ``gpus_per_actor`` GPUs (None: 1 when
    the cluster has GPUs, else 0) and ``cpus_per_actor`` CPUs. ``address`` None starts a local Ray; ``"auto"`` or
    ``"ray://head:10001"`` joins a cluster, whose workers must see the input files (a shared file system)."""

    def __init__(self, address: str | None = None, actors: int = 1, gpus_per_actor: float | None = None,
                 cpus_per_actor: float = 1.0):
        self.address = address if address is None else validate.text("ray address", address, 1000, allow_empty=False)
        self.actors = validate.integer("actors", actors, 1, MAX_WORKERS)
        self.gpus_per_actor = (gpus_per_actor if gpus_per_actor is None
                               else validate.number("gpus_per_actor", gpus_per_actor, 0.0, MAX_GPUS_PER_ACTOR))
        self.cpus_per_actor = validate.number("cpus_per_actor", cpus_per_actor, 0.0, MAX_WORKERS, low_open=True)

    def run(self, model: ModelSpec, defaults: dict[str, Any], batch_size: int, shards: Sequence[BatchShard],
            write: Callable[[BatchShard, list[dict]], None], progress: Callable[[int], None]) -> None:
        ray = connect_ray(self.address)
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        ray.data.DataContext.get_current().enable_progress_bars = False  # the run shows its own
        items = [{"shard": index, "samples": pickle.dumps(shard.samples)} for index, shard in enumerate(shards)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        options = {"num_gpus": gpus} if gpus else {}
        edited = dataset.map_batches(_RayShardEditor, fn_constructor_args=(model, defaults, batch_size), batch_size=1,
                                     batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=self.actors),
                                     num_cpus=self.cpus_per_actor, **options)
        for row in edited.iter_rows():
            shard = shards[row["shard"]]
            write(shard, pickle.loads(row["rows"]))
            progress(len(shard.samples))


class _RayShardEditor:
    """A Ray Data actor: one pipeline, one shard per call (a one-row table: its index and pickled samples)."""

    def __init__(self, model: ModelSpec, defaults: dict[str, Any], batch_size: int):
        self.editor = ShardEditor(model, defaults, batch_size)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = [pickle.dumps(self.editor(pickle.loads(samples))) for samples in table.column("samples").to_pylist()]
        return pa.table({"shard": table.column("shard"), "rows": pa.array(rows, type=pa.binary())})


def connect_ray(address: str | None):
    """The ``ray`` module, connected: to the cluster at ``address``, or a private local Ray sized to this machine
    when None; an error naming the extra to install when Ray is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise Step1XEditError('the Ray engine needs Ray: pip install "step1x-edit[ray]"') from error
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address)
    return ray


def edit_batch(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: ModelSpec | None = None,
    settings: Settings | None = None,
    seed: int = 0,
    batch_size: int = 4,
    shard_size: int = 64,
    engine: LocalEngine | RayEngine | None = None,
    instructions: str | os.PathLike | None = None,
    language: str = "en",
    include_rejected: bool = False,
    png_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Edit every sample of ``input_path`` (see :func:`~.inputs.read_samples`) into the store ``out``.

    ``settings`` are the run's defaults (a sample's own fields win; None: the model's). A sample without a seed
    gets one from its id and ``seed``. ``batch_size`` samples of one working size share a pipeline call;
    ``shard_size`` samples make a shard (the unit of resuming and of work for the Ray actors). ``png_dir``, when
    given, also receives each edited image as ``SAMPLE_ID.png``. A store made with other settings is refused
    unless ``overwrite``. Rerunning the same call resumes: finished shards are kept as they are.
    """
    model = model or ModelSpec()
    settings = settings or Settings()
    engine = engine or LocalEngine()
    validate.integer("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    validate.integer("shard_size", shard_size, 1, MAX_SHARD_SIZE)
    samples, input_identity = read_samples(input_path, run_seed=seed, instructions=instructions, language=language,
                                           include_rejected=include_rejected)
    model.check()
    pngs = make_folder(png_dir, "PNG folder") if png_dir is not None else None
    shards = [_shard(index, samples[start : start + shard_size])
              for index, start in enumerate(range(0, len(samples), shard_size))]
    config_hash = stable_hash(FORMAT, model.identity(), settings.as_dict(), seed, input_identity, length=12)
    store = EditStore.create(out, {"config_hash": config_hash, "generator": "step1x-edit edit-batch",
                                   "model": model.model_id, "settings": settings.as_dict(), "seed": seed,
                                   "input": str(Path(input_path).resolve())}, overwrite=overwrite)
    store.set_shards([shard.name for shard in shards])
    todo_names = {spec.name for spec in pending_shards(store, [ShardSpec(shard.name, shard.key) for shard in shards])}
    todo = [shard for shard in shards if shard.name in todo_names]
    if pngs is not None:  # finished shards whose PNGs are missing (a first --png-dir, or files deleted since)
        for shard in shards:
            if shard.name not in todo_names and not all((pngs / png_name(sample.sample_id)).exists()
                                                        for sample in shard.samples):
                _write_pngs(pngs, store.read_shard(shard.name, ["sample_id", "edited"]))

    failed = 0

    def write(shard: BatchShard, rows: list[dict]) -> None:
        nonlocal failed
        if pngs is not None:  # first: the shard's marker is what says its work is done
            _write_pngs(pngs, rows)
        store.write_shard(shard.name, rows, shard.key, config_hash)
        failed += sum(row["status"] == STATUS_FAILED for row in rows)
        bar.set_postfix(failed=failed, refresh=False)

    start = time.perf_counter()
    with tqdm(total=sum(len(shard.samples) for shard in todo), unit="img", desc="editing", disable=not progress,
              smoothing=0.1) as bar:
        if todo:
            engine.run(model, settings.as_dict(), batch_size, todo, write, bar.update)
    return _summary(store, sum(len(shard.samples) for shard in todo), time.perf_counter() - start)


def _shard(index: int, samples: list[Sample]) -> BatchShard:
    return BatchShard(f"part-{index:05d}", stable_hash([sample.identity() for sample in samples]), tuple(samples))


def _write_pngs(folder: Path, rows: list[dict]) -> None:
    """Each edited row's PNG as ``folder/SAMPLE_ID.png``, written under a temporary name and renamed."""
    for row in rows:
        if row["edited"] is not None:
            path = folder / png_name(row["sample_id"])
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temporary.write_bytes(row["edited"])
            os.replace(temporary, path)


def _summary(store: EditStore, processed: int, seconds: float) -> BatchSummary:
    statuses: Counter[str] = Counter()
    failures = []
    for shard in store.shards():
        for row in store.read_shard(shard.name, ["sample_id", "status", "error"]):
            statuses[row["status"]] += 1
            if row["status"] == STATUS_FAILED and len(failures) < LISTED_FAILURES:
                failures.append((row["sample_id"], row["error"]))
    total = sum(statuses.values())
    return BatchSummary(store=store.root, total=total, edited=total - statuses[STATUS_FAILED],
                        failed=statuses[STATUS_FAILED], processed=processed, seconds=seconds, failures=failures)
