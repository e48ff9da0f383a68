"""Batch editing of whole datasets into a resumable store, in this process or on a Ray cluster
(``step1x-edit edit-batch``; see docs/scale.md).

Typical use::

    from step1x_edit.batch import ModelSpec, RayEngine, Settings, edit_batch
    summary = edit_batch("pairs.jsonl", "out/edited", model=ModelSpec("~/models/step1x-edit"),
                         settings=Settings(num_inference_steps=28), engine=RayEngine(actors=4))
"""

from ..lazy import lazy_exports

# Public name -> the submodule it loads from on first use.
_EXPORTS = {
    "EDIT_SCHEMA": "editor",
    "EditStore": "editor",
    "ModelSpec": "editor",
    "BatchSummary": "engines",
    "LocalEngine": "engines",
    "RayEngine": "engines",
    "edit_batch": "engines",
    "Settings": "inputs",
    "read_samples": "inputs",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
