"""The editing-data engine: the 11 task categories, the synthetic world, stages, executors and the Parquet store.

Typical use::

    from step1x_edit.data import generate_dataset, iter_samples, SyntheticConfig
    store = generate_dataset("data/synth", count=1100, config=SyntheticConfig(resolution=(256, 256)))
    for sample in iter_samples("data/synth", split="train"):
        ...  # sample.source, sample.target (PIL), sample.instruction_en / _zh, sample.task, sample.sample_id
"""

from .executors import LocalExecutor, RayExecutor, ShardSpec, run_pipeline
from .generate import (
    SyntheticConfig,
    generate_dataset,
    generate_from_photos,
    generate_region_edits,
    transform_store,
)
from .interchange import export_official_json, export_webdataset, import_official_json, import_pair_folder
from .records import SCHEMA, split_of
from .stages import Pipeline, Resources, Stage
from .store import Store, TrainingSample, contact_sheet, deduplicate, iter_samples, summarize
from .synthetic.examples import render_example_images
from .synthetic.generators import TASKS, EditSample, generate_sample, reverse_sample

__all__ = [
    "SCHEMA",
    "TASKS",
    "EditSample",
    "LocalExecutor",
    "Pipeline",
    "RayExecutor",
    "Resources",
    "ShardSpec",
    "Stage",
    "Store",
    "SyntheticConfig",
    "TrainingSample",
    "contact_sheet",
    "deduplicate",
    "export_official_json",
    "export_webdataset",
    "generate_dataset",
    "generate_from_photos",
    "generate_region_edits",
    "generate_sample",
    "import_official_json",
    "import_pair_folder",
    "iter_samples",
    "render_example_images",
    "reverse_sample",
    "run_pipeline",
    "split_of",
    "summarize",
    "transform_store",
]
