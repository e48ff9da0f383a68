"""The built-in demo model: a small Step1X-Edit trained by this project on its synthetic editing world.

``step1x-edit train-demo recipes/demo.toml --work-dir WORK`` rebuilds it from nothing, in stages that each
resume where they stopped (a finished stage is skipped):

1. ``data``: synthetic triplets of all 11 categories (:func:`step1x_edit.data.generate.generate_dataset`);
2. ``vae``: the autoencoder, fitted or trained on those images: a linear patch autoencoder
   (:mod:`step1x_edit.models.patch_vae`, the shipped model's) or a FLUX-layout ``AutoencoderKL``
   (:mod:`step1x_edit.train.vae`);
3. ``assemble``: a Qwen2-style BPE tokenizer trained on the dataset's English and Chinese instructions (and the
   prompt prefix), a randomly initialised small Qwen2.5-VL (frozen: the connector learns to read it), a
   processor with a smaller image budget than the released model's, a random DiT; written as a pipeline;
4. ``train``: full fine-tuning of the DiT and connector with :func:`step1x_edit.train.trainer.train`;
   ``finetune`` (only when the recipe has ``[finetune]`` tables): further runs, each from the previous run's model,
   with the ``[train]`` tables updated by that run's ``[finetune]`` tables (e.g. other objective settings), in
   ``WORK/finetune`` (and ``WORK/finetune-2``, ``-3``, ... when ``[[finetune]]`` is an array of tables); a run
   whose ``data`` table sets ``samples`` trains on a store of that many samples of the same world
   (``WORK/data-<samples>``, generated first; its first ``[demo] samples`` are ``WORK/data``'s); a run that is
   only ``merge = {run = K, weight = W}`` trains nothing: it averages the previous run's weights with run K's
   (:func:`merge_spec`);
5. ``evaluate``: the guidance scale and strength, picked among ``[evaluation] guidance_candidates`` and
   ``strength_candidates`` on freshly generated samples (:func:`tune_sampling`), then PSNR / SSIM / edit-region
   accuracy per category on the held-out split (all of it, or the first ``samples_per_task`` of each category),
   against the identity;
6. ``export``: a float16 copy (default guidance and strength = the picked ones) with a model card
   (``MODEL_CARD.md``, the table of step 5 and a verdict computed from it) to ``--export``.

The recipe file has the tables ``[demo]`` (resolution, sample count, seeds, condition length, visual tokens),
``[vae]`` (:class:`~step1x_edit.train.vae.VAETrainingConfig` fields), ``[text_encoder]``, ``[transformer]``
(overrides of the ``tiny`` transformer preset), ``[train]`` (a training config without paths, see
:mod:`step1x_edit.train.config`), optionally ``[finetune]`` (the same tables, as changes to ``[train]``; an array
``[[finetune]]`` for several runs in turn) and
``[evaluation]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import Step1XEditError
from ..validate import integer, number
from .config import MAX_TRAIN_SEED, TrainingConfigError, config_from_dict, read_toml

STAGES = ("data", "vae", "assemble", "train", "finetune", "evaluate", "export")
PATCH_FACTOR = 28  # merged visual token side, in pixels (Qwen2.5-VL)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
            "twelfth")


def _ordinal(number: int) -> str:
    """ "second" for 2; "11th" past :data:`ORDINALS`."""
    return ORDINALS[number - 1] if number <= len(ORDINALS) else f"{number}th"


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


def _done(path: Path) -> bool:
    return (path / "DONE").is_file()


def _mark_done(path: Path, info: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "DONE").write_text(json.dumps(info or {}, indent=1))


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


def build_data(recipe: dict, work: Path, progress: bool = True, count: int | None = None) -> Path:
    """The synthetic store of ``count`` samples (default ``[demo] samples``) in :func:`store_dir`."""
    from ..data.generate import SyntheticConfig, generate_dataset

    demo = recipe["demo"]
    count = int(demo["samples"]) if count is None else count
    out = store_dir(recipe, work / "data", count)
    resolution = int(demo["resolution"])
    generate_dataset(out, count,
                     SyntheticConfig(resolution=(resolution, resolution), seed=int(demo.get("seed", 0))),
                     progress=progress)
    return out


def build_vae(recipe: dict, work: Path, data_dir: Path, progress: bool = True) -> Path:
    """The autoencoder. ``kind = "patch"``: a :class:`~step1x_edit.models.patch_vae.PatchAutoencoder` fitted on
    ``fit_images`` training images of the store; ``kind = "flux"``: a FLUX-layout ``AutoencoderKL`` trained with
    :func:`step1x_edit.train.vae.train_vae` (the other fields are its :class:`VAETrainingConfig`)."""
    out = work / "vae"
    if _done(out):
        return out / "vae"
    settings = dict(recipe["vae"])
    kind = settings.pop("kind", "flux")
    if kind == "flux":
        from .vae import VAETrainingConfig, train_vae

        train_vae(VAETrainingConfig(**settings), out, resume=True, progress=progress)
        _mark_done(out)
        return out / "vae"
    if kind != "patch":
        raise TrainingConfigError(f"vae.kind must be 'patch' or 'flux', got {kind!r}")
    from ..data.store import iter_samples
    from ..models.patch_vae import PatchAutoencoder, reconstruction_psnr
    from ..models.vae import images_to_pixels

    def pixels(split: str, count: int) -> torch.Tensor:
        images = []
        for sample in iter_samples(data_dir, split):
            images += [sample.source, sample.target]
            if len(images) >= count:
                break
        return images_to_pixels(images)  # [N, 3, H, W]

    vae = PatchAutoencoder(int(settings["patch_size"]), int(settings["latent_channels"]))
    vae.fit(pixels("train", int(settings.get("fit_images", 1600))))
    vae.save_pretrained(out / "vae", safe_serialization=True)
    _mark_done(out, {"heldout_psnr": reconstruction_psnr(vae, pixels("validation", 200))})
    return out / "vae"


def instruction_corpus(store_dir: Path) -> list[str]:
    """Every English and Chinese instruction of a store, plus the prompt prefix (so it tokenizes compactly) and
    curly quotes often enough to become single tokens (quoted text is fed to the encoder as “X”, one character at
    a time, and the quote marks must be tokens of their own, as in the Qwen vocabulary)."""
    from ..data.store import Store
    from ..protocol import protocol_text

    corpus = [protocol_text("step1x_v1_prefix.txt")] * 500 + ["“ ” “A” “1” “.”"] * 500
    for record in Store(store_dir).iter_records(["instruction_en", "instruction_zh"]):
        corpus += [text for text in (record["instruction_en"], record["instruction_zh"]) if text]
    return corpus


def assemble(recipe: dict, work: Path, data_dir: Path, vae_dir: Path) -> Path:
    """The untrained pipeline: trained tokenizer, random frozen MLLM, trained VAE, random DiT."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2VLImageProcessorPil

    from ..models.mllm import build_processor
    from ..models.patch_vae import PatchAutoencoder
    from ..models.presets import build_transformer
    from ..pipeline import SCHEDULER_CONFIG, Step1XEditPipeline
    from ..testing.tiny import build_text_encoder, train_tokenizer

    out = work / "initial"
    if _done(out):
        return out
    demo, text = recipe["demo"], recipe["text_encoder"]
    seed = int(demo.get("seed", 0))
    tokenizer = train_tokenizer(instruction_corpus(data_dir), int(text["vocab_size"]))
    low, high = demo["vision_tokens"]
    processor = build_processor(tokenizer, Qwen2VLImageProcessorPil(
        min_pixels=int(low) * PATCH_FACTOR**2, max_pixels=int(high) * PATCH_FACTOR**2))
    text_encoder = build_text_encoder(tokenizer, hidden_size=int(text["hidden_size"]),
                                      num_layers=int(text["num_layers"]),
                                      vision_hidden_size=int(text["vision_hidden_size"]), seed=seed)
    kind = recipe["vae"].get("kind", "flux")
    vae = (PatchAutoencoder if kind == "patch" else AutoencoderKL).from_pretrained(vae_dir)
    overrides = dict(recipe["transformer"])
    if "axes_dim" in overrides:
        overrides["axes_dim"] = tuple(overrides["axes_dim"])
    torch.manual_seed(seed)
    transformer = build_transformer("tiny", mllm_hidden_size=int(text["hidden_size"]),
                                    in_channels=4 * vae.config.latent_channels,
                                    out_channels=4 * vae.config.latent_channels, **overrides)
    pipe = Step1XEditPipeline(transformer, vae, text_encoder, processor,
                              FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                              max_sequence_length=int(demo["max_sequence_length"]),
                              default_size_level=int(demo["resolution"]),
                              default_guidance_scale=float(recipe["evaluation"]["guidance_scale"]))
    pipe.save_pretrained(out, safe_serialization=True)
    _mark_done(out)
    return out


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


def merge_run(work: Path, run: int, spec: tuple[int, float]) -> Path:
    """Make the model of merge run ``run`` (skipped when it is there: the folder appears complete or not at all)."""
    from .merge import average_models

    out = run_dir(work, run) / "final"
    if not (out / "model_index.json").is_file():
        other, weight = spec
        average_models(run_dir(work, run - 1) / "final", run_dir(work, other) / "final", weight, out)
    return out


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


def _editor(recipe: dict, pipe, steps: int, guidance: float, strength: float):
    from ..bench.synthetic import pipeline_editor

    return pipeline_editor(pipe, steps=steps, guidance=guidance, strength=strength,
                           seed=int(recipe["evaluation"].get("seed", 0)), size_level=int(recipe["demo"]["resolution"]))


def rows_path(folder: Path, name: str, settings: dict) -> Path:
    """The JSON-lines file that keeps the scores of ``name`` made with ``settings`` (the model included): one file
    per settings, so a rerun with the same ones resumes it and a changed model or setting starts a file of its own
    (the old scores stay where they are)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return folder / f"{name}-{digest}.jsonl"


def _candidates(settings: dict) -> list[tuple[int, float, float]]:
    """The (steps, guidance, strength) triples to tune among; a strength that keeps all of the steps (or none) is
    dropped for that step count: it is strength 1 (or impossible) there."""
    steps = [int(value) for value in settings.get("steps_candidates", [settings["steps"]])]
    guidances = [float(value) for value in settings.get("guidance_candidates", [settings["guidance_scale"]])]
    strengths = [float(value) for value in settings.get("strength_candidates", [settings.get("strength", 1.0)])]
    return [(count, guidance, strength) for count in steps for strength in strengths for guidance in guidances
            if strength == 1 or 0 < round(count * strength) < count]


def tune_sampling(recipe: dict, work: Path, model_dir: Path, pipe,
                  progress: bool = True) -> tuple[int, float, float]:
    """The steps, guidance scale and strength the model in ``model_dir`` (loaded as ``pipe``) is evaluated and
    shipped with.

    By default they are ``[evaluation] steps``, ``guidance_scale`` and ``strength`` (1.0). With
    ``steps_candidates``, ``guidance_candidates`` and/or ``strength_candidates``, every combination edits
    ``tune_samples_per_task`` freshly generated samples per category (their own seed namespace: neither the training
    data nor the held-out split) and the one beating the identity in the most categories wins, ties broken by the
    mean PSNR margin over the identity. Scores are kept in ``WORK/tuning/`` (resumable, a file per model and
    settings: :func:`rows_path`) and the choice in ``WORK/tuning/choice.json``, which a rerun for the same model and
    candidates reuses."""
    from ..bench.synthetic import evaluate_editor, generated_samples
    from ..data.synthetic import TASKS

    settings = recipe["evaluation"]
    candidates = _candidates(settings)
    if len(candidates) == 1:
        return candidates[0]
    choice_path = work / "tuning" / "choice.json"
    if choice_path.is_file():  # made for this model and these candidates: keep it
        choice = json.loads(choice_path.read_text(encoding="utf-8"))
        if (choice.get("model") == str(model_dir)
                and choice["candidates"] == [list(candidate) for candidate in candidates]):
            return int(choice["steps"]), float(choice["guidance_scale"]), float(choice["strength"])
    count = int(settings.get("tune_samples_per_task", 3)) * len(TASKS)
    samples = generated_samples(count, resolution=int(recipe["demo"]["resolution"]),
                                seed=int(settings.get("tune_seed", 1)))
    scores = {}
    for steps, guidance, strength in candidates:
        name = f"steps-{steps}-guidance-{guidance:g}-strength-{strength:g}"
        scored = {"model": str(model_dir), "guidance_scale": guidance, "strength": strength, "steps": steps,
                  "seed": int(settings.get("seed", 0))}
        result = evaluate_editor(_editor(recipe, pipe, steps, guidance, strength), samples, progress=progress,
                                 rows_path=rows_path(work / "tuning", name, scored), settings=scored)
        scores[name] = {"steps": steps, "guidance_scale": guidance, "strength": strength,
                        "categories_beating_identity": sum(s.beats_identity for s in result.per_task.values()),
                        "psnr_margin": result.overall.psnr_model - result.overall.psnr_identity}
    best = max(scores.values(), key=lambda score: (score["categories_beating_identity"], score["psnr_margin"]))
    choice_path.write_text(json.dumps({"model": str(model_dir), "candidates": [list(c) for c in candidates], **best,
                                       "scores": scores}, indent=1) + "\n", encoding="utf-8")
    return best["steps"], best["guidance_scale"], best["strength"]


def evaluate(recipe: dict, work: Path, model_dir: Path, pipe, data_dir: Path, steps: int, guidance: float,
             strength: float, progress: bool = True):
    """Per-category scores of the model in ``model_dir`` (loaded as ``pipe``; with ``steps``, ``guidance``,
    ``strength``) and the identity on the held-out split: every sample of it, or the first
    ``[evaluation] samples_per_task`` of each category."""
    from ..bench.synthetic import evaluate_editor, store_samples

    settings = recipe["evaluation"]
    samples = store_samples(data_dir)
    if "samples_per_task" in settings:  # a quicker evaluation on the first ones of each category
        per_task = int(settings["samples_per_task"])
        counts: dict[str, int] = {}
        kept = []
        for sample in samples:
            if counts.get(sample.task, 0) < per_task:
                counts[sample.task] = counts.get(sample.task, 0) + 1
                kept.append(sample)
        samples = kept
    scored = {"model": str(model_dir),
              **{key: value for key, value in settings.items()
                 if not key.endswith("_candidates") and not key.startswith("tune_")},
              "steps": steps, "guidance_scale": guidance, "strength": strength}
    result = evaluate_editor(_editor(recipe, pipe, steps, guidance, strength), samples, progress=progress,
                             rows_path=rows_path(work, "evaluation", scored), settings=scored)
    result.save(work / "evaluation.json")
    return result


def export(model_dir: Path, export_dir: Path, steps: int, guidance_scale: float, strength: float) -> Path:
    """A float16 copy of the pipeline in ``export_dir``; ``steps``, ``guidance_scale`` and ``strength`` (those it was
    evaluated with) become its defaults."""
    from ..pipeline import Step1XEditPipeline

    pipe = Step1XEditPipeline.from_pretrained(model_dir)
    pipe.register_to_config(default_num_inference_steps=steps, default_guidance_scale=guidance_scale,
                            default_strength=strength)
    for module in (pipe, pipe.transformer, pipe.vae):  # the saved configs name the model, not the build folder
        module.register_to_config(_name_or_path="step1x-edit-demo")
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.to(torch.float16)
    pipe.save_pretrained(export_dir, safe_serialization=True)
    return export_dir


def _verdict(result) -> str:
    """One sentence on where the model beats returning the source, from the evaluation itself."""
    summaries = list(result.per_task.values())
    winners = [summary.task for summary in summaries if summary.beats_identity]
    losers = [summary.task for summary in summaries if not summary.beats_identity]
    if not losers:
        return (f"On held-out data it beats returning the source unchanged in all {len(summaries)} categories, "
                "on both PSNR and SSIM (table below)")
    if not winners:
        return ("On held-out data it does **not** beat returning the source unchanged in any category "
                "(table below)")
    psnr_winners = sum(summary.psnr_model > summary.psnr_identity for summary in summaries)
    psnr_alone = "all" if psnr_winners == len(summaries) else f"{psnr_winners} of"
    return (f"On held-out data it beats returning the source unchanged (PSNR and SSIM) in {len(winners)} of "
            f"{len(summaries)} categories; it does **not** in {', '.join(losers)} (table below; its PSNR alone is "
            f"above the identity's in {psnr_alone} {len(summaries)})")


def _region_sentence(result) -> str:
    accuracy = result.overall.region_accuracy
    if accuracy is None:
        return "no sample had an edit region to score"
    return (f"in the edited regions {accuracy:.0%} of the pixels end closer to the target than to the source "
            "(how much of the asked-for change it makes)")


def _prediction_sentence(recipe: dict) -> str:
    if recipe["transformer"].get("prediction_type", "velocity") == "velocity":
        return ""
    return ("\nIts DiT predicts the change from the source latents to the edited ones (`prediction_type = "
            "\"reference_delta\"`, turned into the velocity the sampler uses), where the released model predicts the "
            "velocity itself: untrained, it returns the source exactly, so training only has to teach it the change.")


def _objective_note(training: dict, data: dict | None = None, model: dict | None = None) -> str:
    """What a run's objective (its ``training`` table), sampling (its ``data`` table) and trained parts (its
    ``model`` table) add to the official ones, for the card ("" when nothing)."""
    notes = []
    rate = float(training.get("pure_noise_rate", 0))
    if rate:
        notes.append(f"{rate:.0%} of the samples at pure noise")
    if training.get("loss_weighting") == "x0_relative":
        notes.append("each sample's error relative to returning its source")
    if training.get("loss_space") == "pixel":
        weights = {"squared": float(training.get("squared_loss_weight", 1)),
                   "absolute": float(training.get("absolute_loss_weight", 0)),
                   "structural": float(training.get("ssim_loss_weight", 0))}
        kinds = [kind + (" (SSIM)" if kind == "structural" else "") for kind, weight in weights.items() if weight]
        listed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
        notes.append(f"errors measured in pixels, {listed}"
                     + "".join(f", the {kind} one weighted {weight:g}" for kind, weight in weights.items()
                               if weight not in (0, 1)))
    if (data or {}).get("samples"):
        notes.append(f"on a store of {int(data['samples']):,} samples")
    if (data or {}).get("tasks"):
        notes.append(f"{', '.join(data['tasks'])} samples only")
    repeats = (data or {}).get("task_repeats", {})
    for count in sorted(set(repeats.values())):
        tasks = ", ".join(task for task, times in repeats.items() if times == count)
        notes.append(f"{tasks} samples listed {count} times per epoch")
    if (model or {}).get("train_text_encoder"):
        scale = float(training.get("text_encoder_lr_scale", 1))
        notes.append("the text encoder's language model trained too"
                     + (f", at {scale:g} times the learning rate" if scale != 1 else ""))
    return "; ".join(notes)


def model_card(recipe_path: Path, recipe: dict, result, size_bytes: int) -> str:
    from ..bench.synthetic import format_table

    demo = recipe["demo"]
    tables = stage_tables(recipe)
    first = tables["training"]
    note = _objective_note(first, tables.get("data"), tables.get("model"))
    training = f'for {int(first["max_steps"]):,} steps of batch {int(first.get("batch_size", 1))}'
    training += f" ({note})" if note else ""
    encoder_runs = [1] if tables.get("model", {}).get("train_text_encoder") else []  # ordinals of the runs
    most = run_samples(recipe)  # the largest store a run reads
    runs = finetune_runs(recipe)
    for run in range(1, len(runs) + 1):
        name = "the recipe's finetune stage" if len(runs) == 1 else f"fine-tuning run {run} of the finetune stage"
        spec = merge_spec(recipe, run)
        if spec is not None:
            other, weight = spec
            training += (f", then the {_ordinal(run)} run's weights averaged with the {_ordinal(other + 1)} run's, "
                         f"{1 - weight:g} and {weight:g}: the {_ordinal(run + 1)} model ({name}; no training)")
            continue
        tables = stage_tables(recipe, run)
        most = max(most, run_samples(recipe, run))
        if tables.get("model", {}).get("train_text_encoder"):
            encoder_runs.append(run + 1)
        later = tables["training"]
        note = _objective_note(later, tables.get("data"), tables.get("model"))
        training += (f', then {int(later["max_steps"]):,} steps of batch {int(later.get("batch_size", 1))} in a '
                     f"{_ordinal(run + 1)} run ({name}{'; ' + note if note else ''})")
    if encoder_runs:
        named = ", ".join(_ordinal(run) for run in encoder_runs)
        encoder = (f"a randomly initialised Qwen2.5-VL-architecture model, frozen at first and trained with the DiT "
                   f"in the {named} run{'s' if len(encoder_runs) > 1 else ''} (only its language model)")
    else:
        encoder = "a randomly initialised Qwen2.5-VL-architecture model (frozen; the connector learned to read it)"
    larger = f", {most} for the runs that name a larger store" if most > int(demo["samples"]) else ""
    guidance = float(result.settings["guidance_scale"])
    strength = float(result.settings.get("strength", 1.0))
    steps = int(result.settings["steps"])
    plural = "s" if steps > 1 else ""
    one_step = (" (one step: the model's estimate of the edited image from pure noise, the mean of what the "
                "instruction may mean, so uncertain edits come out soft)") if steps == 1 else ""
    return f"""# step1x-edit demo model

A small model with the Step1X-Edit architecture (Qwen2.5-VL-style encoder -> connector -> FLUX-style DiT with the
source latents concatenated to the noisy ones, rectified flow), trained by this project from scratch on its own
synthetic editing world. It ships inside the package ({size_bytes / 2**20:.1f} MiB, float16) so that
`step1x-edit edit` runs the whole system without downloads.{_prediction_sentence(recipe)}

**What it can do**: it was trained on edits of the synthetic world (coloured shapes, signs, stick figures,
cartoon faces on plain or gradient backgrounds) in the 11 task categories, from template instructions (English or
Chinese), {training}.
{_verdict(result)}; {_region_sentence(result)}. Its defaults, {steps} sampling step{plural}{one_step},
guidance scale {guidance:g} and strength {strength:g} (1 = start from pure noise; lower = start part-way from the
noised source, image-to-image), were chosen on freshly generated samples, not on the held-out split.

**What it cannot do**: photographs, unseen objects or words, fine detail (it works at {demo["resolution"]} px and
upsamples), long or free-form instructions. Its text encoder is {encoder}, so it understands only the
vocabulary of the templates. Its autoencoder is a linear patch autoencoder fitted to the synthetic world, not the
FLUX VAE. It is a demonstration of the whole system, not a substitute for the released Step1X-Edit weights.

## Held-out evaluation

Held-out synthetic samples (the validation split of the training store, never trained on), {result.overall.count}
in all, each category scored against the exact ground truth at guidance {guidance:g}, strength {strength:g} and
{steps} step{plural}; "identity" returns the source unchanged. PSNR in dB, SSIM per RGB channel
(Gaussian window); region accuracy = share of the edited region's pixels closer to the target than to the source;
"beats identity" = higher mean PSNR and higher mean SSIM; each gain over the identity is given with its standard
error. An addition instruction names the new shape and a cell of a 3 × 3 grid, not the shape's position in it,
so on subject additions no editor can be sure to beat the identity's SSIM: one that knows the exact shape and
size but has to guess the position within the cell scores the identity's SSIM at best
(`benchmarks/addition_bound.py`).

{format_table(result)}
## Reproduce

```bash
step1x-edit train-demo {recipe_path.as_posix()} --work-dir demo-build --export src/step1x_edit/assets/demo
```

Recipe: `{recipe_path.as_posix()}` ({demo["samples"]} synthetic samples{larger}; VAE, tokenizer, encoder and DiT
all built by the command).
"""


def build_demo(recipe_path: str | os.PathLike, work_dir: str | os.PathLike, export_dir: str | os.PathLike | None,
               stages: tuple[str, ...] = STAGES, progress: bool = True) -> dict[str, Any]:
    """Run the recipe's ``stages`` (see the module docstring); returns paths and the evaluation table."""
    from .trainer import train

    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise TrainingConfigError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    threads = int(recipe["demo"].get("num_threads", 0))
    if threads:
        torch.set_num_threads(threads)
    data_dir = work / "data"
    report: dict[str, Any] = {"work_dir": str(work)}
    if "data" in stages:
        build_data(recipe, work, progress)
    vae_dir = build_vae(recipe, work, data_dir, progress) if "vae" in stages else work / "vae" / "vae"
    initial = assemble(recipe, work, data_dir, vae_dir) if "assemble" in stages else work / "initial"
    final = trained_model(recipe, work)
    for run in range(1 + len(finetune_runs(recipe))):
        if ("finetune" if run else "train") in stages:
            spec = merge_spec(recipe, run)
            if spec is not None:
                merge_run(work, run, spec)
                continue
            count = run_samples(recipe, run)
            if count != int(recipe["demo"]["samples"]):  # a larger (or smaller) store of the same world
                build_data(recipe, work, progress, count)
            result = train(training_config(recipe, work, initial, data_dir, run), progress=progress)
            if result.final_dir is None:
                raise Step1XEditError(f"{run_dir(work, run).name} stopped at step {result.step}; rerun to resume")
    if "evaluate" in stages:
        from ..bench.synthetic import format_table
        from ..pipeline import load_pipeline

        pipe = load_pipeline(final, device="cpu", torch_dtype=torch.float32)  # once, for tuning and evaluation
        steps, guidance, strength = tune_sampling(recipe, work, final, pipe, progress)
        table = format_table(evaluate(recipe, work, final, pipe, data_dir, steps, guidance, strength, progress))
        (work / "evaluation.md").write_text(table + "\n", encoding="utf-8")
        report["table"] = table
    if "export" in stages:
        from ..bench.synthetic import EvaluationResult

        if export_dir is None:
            raise TrainingConfigError("the export stage needs --export DIR")
        result = EvaluationResult.load(work / "evaluation.json")
        out = export(final, Path(export_dir), int(result.settings["steps"]), float(result.settings["guidance_scale"]),
                     float(result.settings.get("strength", 1.0)))
        size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
        (out / "MODEL_CARD.md").write_text(model_card(recipe_path, recipe, result, size), encoding="utf-8")
        report["export"] = str(out)
    return report
