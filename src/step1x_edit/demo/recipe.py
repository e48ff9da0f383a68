"""The demo recipe: reading and checking ``recipes/demo.toml``, and what it says about each training run.

The recipe file has the tables ``[demo]`` (resolution, sample count, seeds, condition length, visual tokens),
``[vae]`` (:class:`~step1x_edit.demo.vae.VAETrainingConfig` fields, or a patch autoencoder's), ``[text_encoder]``,
``[transformer]`` (overrides of the ``tiny`` transformer preset), ``[train]`` (a training config without paths, see
:mod:`step1x_edit.train.config`), optionally ``[finetune]`` (the same tables, as changes to ``[train]``; an array
``[[finetune]]`` for several runs in turn) and ``[evaluation]``. Run 0 is the ``train`` stage, runs 1, 2, ... the
fine-tuning runs (:func:`run_dir`, :func:`stage_tables`, :func:`training_config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..train.config import MAX_TRAIN_SEED, TrainingConfigError, config_from_dict, read_toml
from ..validate import integer, number

RECIPE_INTEGERS = {
    "demo": {"samples": (1, 10**7), "resolution": (16, 4096), "max_sequence_length": (1, 65_536),
             "seed": (0, MAX_TRAIN_SEED), "num_threads": (0, 4096)},
    "text_encoder": {"vocab_size": (16, 10**6), "hidden_size": (1, 65_536), "num_layers": (1, 1000),
                     "vision_hidden_size": (1, 65_536)},
    "evaluation": {"steps": (1, 1000), "seed": (0, MAX_TRAIN_SEED), "samples_per_task": (1, 10**6),
                   "tune_samples_per_task": (1, 10**6), "tune_seed": (0, MAX_TRAIN_SEED)},
}
"""The recipe's whole-number fields by table, with their ranges (required unless in :data:`RECIPE_OPTIONAL`)."""


RECIPE_NUMBERS = {"guidance_scale": (0, 100), "strength": (0, 1)}
"""The ``[evaluation]`` numbers and their ranges (``strength`` above 0)."""


RECIPE_OPTIONAL = {"seed", "num_threads", "samples_per_task", "tune_samples_per_task", "tune_seed", "strength"}


RECIPE_CANDIDATES = {"steps_candidates": "steps", "guidance_candidates": "guidance_scale",
                     "strength_candidates": "strength"}


def _check_recipe_values(recipe: dict[str, Any]) -> None:
    """Type and range of the recipe's own numbers (the run tables are checked as training configs)."""
    for table, fields in RECIPE_INTEGERS.items():
        for name, (low, high) in fields.items():
            if name in recipe[table] or name not in RECIPE_OPTIONAL:
                integer(f"{table}.{name}", recipe[table].get(name), low, high)
    settings = recipe["evaluation"]
    for name, (low, high) in RECIPE_NUMBERS.items():
        if name in settings or name not in RECIPE_OPTIONAL:
            number(f"evaluation.{name}", settings.get(name), low, high, low_open=name == "strength")
    for name, field in RECIPE_CANDIDATES.items():
        values = settings.get(name, [])
        if not isinstance(values, list):
            raise TrainingConfigError(f"evaluation.{name} must be a list, got {values!r}")
        for index, value in enumerate(values):
            if field == "steps":
                integer(f"evaluation.{name}[{index}]", value, *RECIPE_INTEGERS["evaluation"]["steps"])
            else:
                number(f"evaluation.{name}[{index}]", value, *RECIPE_NUMBERS[field], low_open=field == "strength")
    tokens = recipe["demo"].get("vision_tokens")
    if not isinstance(tokens, list) or len(tokens) != 2:
        raise TrainingConfigError(f"demo.vision_tokens must be a pair [low, high], got {tokens!r}")
    low, high = (integer(f"demo.vision_tokens[{index}]", value, 1, 100_000) for index, value in enumerate(tokens))
    if low > high:
        raise TrainingConfigError(f"demo.vision_tokens must be a pair low <= high, got {tokens!r}")


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a demo recipe TOML."""
    path = Path(path)
    recipe = read_toml(path, "recipe")
    missing = [table for table in ("demo", "vae", "text_encoder", "transformer", "train", "evaluation")
               if not isinstance(recipe.get(table), dict)]
    if missing:
        raise TrainingConfigError(f"recipe {path} lacks the table(s) {missing}")
    _check_recipe_values(recipe)
    return recipe


def run_samples(recipe: dict, run: int = 0) -> int:
    """How many synthetic samples run ``run`` trains on: its ``[...data] samples``, else ``[demo] samples``."""
    count = stage_tables(recipe, run).get("data", {}).get("samples", recipe["demo"]["samples"])
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TrainingConfigError(f"a store's samples must be a positive whole number, got {count!r}")
    return count


def store_dir(recipe: dict, data_dir: Path, count: int) -> Path:
    """The store of ``count`` samples: ``data_dir`` itself for ``[demo] samples``, else ``data_dir-<count>`` beside it
    (the same world and seed, so its first samples are ``data_dir``'s, with the same train/validation split)."""
    return data_dir if count == int(recipe["demo"]["samples"]) else data_dir.with_name(f"{data_dir.name}-{count}")


def finetune_runs(recipe: dict) -> list[dict]:
    """The recipe's fine-tuning runs in order: none, one ``[finetune]`` table, or an array ``[[finetune]]``."""
    runs = recipe.get("finetune", [])
    return [runs] if isinstance(runs, dict) else list(runs)


def merge_spec(recipe: dict, run: int) -> tuple[int, float] | None:
    """``(other, weight)`` when fine-tuning run ``run`` is a merge (``merge = {run = K, weight = W}`` in its table):
    it trains nothing, its model is the previous run's with the weights averaged with run K's, ``1 - W`` and ``W``
    (:func:`step1x_edit.train.merge.average_models`); ``None`` for a training run."""
    tables = finetune_runs(recipe)[run - 1] if run else {}
    spec = tables.get("merge")
    if spec is None:
        return None
    where = f"fine-tuning run {run}"
    if set(tables) != {"merge"}:
        raise TrainingConfigError(f"{where} is a merge, which trains nothing: it cannot also have the table(s) "
                                  f"{sorted(set(tables) - {'merge'})}")
    if not isinstance(spec, dict) or set(spec) != {"run", "weight"}:
        raise TrainingConfigError(f"{where}: merge must be {{run = K, weight = W}}, got {spec!r}")
    other, weight = spec["run"], spec["weight"]
    if isinstance(other, bool) or not isinstance(other, int) or not 0 <= other < run - 1:
        raise TrainingConfigError(f"{where}: merge run must be an earlier run than the previous one (0 = the train "
                                  f"stage, K = fine-tuning run K), got {other!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1:
        raise TrainingConfigError(f"{where}: merge weight must be between 0 and 1 (exclusive), got {weight!r}")
    return other, float(weight)


def run_dir(work: Path, run: int) -> Path:
    """Where run ``run`` writes: 0 (the ``train`` stage) ``WORK/run``; fine-tuning run 1 ``WORK/finetune``, then
    ``WORK/finetune-2``, ..."""
    return work / ("run" if run == 0 else "finetune" if run == 1 else f"finetune-{run}")


def stage_tables(recipe: dict, run: int = 0) -> dict[str, dict]:
    """The training tables of run ``run``: ``[train]``'s, updated by the ``run``-th ``[finetune]``'s (1-based)."""
    tables = {name: dict(values) for name, values in recipe["train"].items()}
    if run:
        for name, values in finetune_runs(recipe)[run - 1].items():
            tables.setdefault(name, {}).update(values)
    return tables


def training_config(recipe: dict, work: Path, initial: Path, data_dir: Path, run: int = 0):
    """The training config of run ``run``: 0 is the ``train`` stage (from ``initial`` into ``WORK/run``), 1, 2, ...
    the fine-tuning runs (from the previous run's ``final`` into :func:`run_dir`). A run's ``[...data] samples``
    (not a training config field) picks the store it reads (:func:`store_dir`)."""
    tables = stage_tables(recipe, run)
    if run:
        initial = run_dir(work, run - 1) / "final"
    tables.setdefault("model", {})["path"] = str(initial)
    tables.setdefault("data", {}).pop("samples", None)
    tables["data"]["store"] = str(store_dir(recipe, data_dir, run_samples(recipe, run)))
    tables["data"].setdefault("resolution", int(recipe["demo"]["resolution"]))
    tables["data"].setdefault("cache_dir", str(work / "cache"))  # one cache for every run (same VAE and MLLM)
    tables.setdefault("training", {})["output_dir"] = str(run_dir(work, run))
    return config_from_dict(tables)


def trained_model(recipe: dict, work: Path) -> Path:
    """The model the recipe evaluates and exports: the last run's."""
    return run_dir(work, len(finetune_runs(recipe))) / "final"
