"""The editing-data engine: the 11 task categories, the synthetic world, stages, executors and the Parquet store.

Typical use::

    from step1x_edit.data import generate_dataset, iter_samples, SyntheticConfig
    store = generate_dataset("data/synth", count=1100, config=SyntheticConfig(resolution=(256, 256)))
    for sample in iter_samples("data/synth", split="train"):
        ...  # sample.source, sample.target (PIL), sample.instruction_en / _zh, sample.task, sample.sample_id
"""

from ..lazy import lazy_exports

# Public name -> the submodule it loads from on first use.
_EXPORTS = {
    "SCHEMA": "records",
    "split_of": "records",
    "TASKS": "taxonomy",
    "EditSample": "synthetic.generators",
    "generate_sample": "synthetic.generators",
    "reverse_sample": "synthetic.generators",
    "render_example_images": "synthetic.examples",
    "LocalExecutor": "executors",
    "RayExecutor": "executors",
    "ShardSpec": "executors",
    "run_pipeline": "executors",
    "Pipeline": "stages",
    "Resources": "stages",
    "Stage": "stages",
    "Store": "store",
    "TrainingSample": "store",
    "contact_sheet": "store",
    "deduplicate": "store",
    "iter_samples": "store",
    "summarize": "store",
    "SyntheticConfig": "generate",
    "generate_dataset": "generate",
    "generate_from_photos": "generate",
    "generate_region_edits": "generate",
    "transform_store": "generate",
    "export_official_json": "interchange",
    "export_webdataset": "interchange",
    "import_official_json": "interchange",
    "import_pair_folder": "interchange",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
