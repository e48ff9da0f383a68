"""Batch editing of whole datasets into a resumable store, in this process or on a Ray cluster
(``step1x-edit edit-batch``; see docs/scale.md).

Typical use::

    from step1x_edit.batch import ModelSpec, RayEngine, Settings, edit_batch
    summary = edit_batch("pairs.jsonl", "out/edited", model=ModelSpec("~/models/step1x-edit"),
                         settings=Settings(num_inference_steps=28), engine=RayEngine(actors=4))
"""

import importlib
from typing import Any

# Public name -> submodule. Attributes load on first use, so importing the package (the CLI does, to list
# commands) stays cheap.
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
