"""The built-in demo model: a small Step1X-Edit trained by this project on its synthetic editing world.

``step1x-edit train-demo recipes/demo.toml --work-dir WORK`` rebuilds it from nothing, in stages that each
resume where they stopped (a finished stage is skipped):

1. ``data``: synthetic triplets of all 11 categories (:func:`step1x_edit.data.generate.generate_dataset`);
2. ``vae``: the autoencoder, fitted or trained on those images: a linear patch autoencoder
   (:mod:`step1x_edit.models.patch_vae`, the shipped model's) or a FLUX-layout ``AutoencoderKL``
   (:mod:`step1x_edit.demo.vae`);
3. ``assemble``: a Qwen2-style BPE tokenizer trained on the dataset's English and Chinese instructions (and the
   prompt prefix), a randomly initialised small Qwen2.5-VL (frozen: the connector learns to read it), a
   processor with a smaller image budget than the released model's, a random DiT (a
   :class:`~step1x_edit.demo.delta.ReferenceDeltaTransformer2DModel` when ``[transformer] prediction_type`` is
   ``"reference_delta"``); written as a pipeline;
4. ``train``: full fine-tuning of the DiT and connector with :func:`step1x_edit.train.trainer.train`;
   ``finetune`` (only when the recipe has ``[finetune]`` tables): further runs, each from the previous run's model,
   with the ``[train]`` tables updated by that run's ``[finetune]`` tables (e.g. other objective settings), in
   ``WORK/finetune`` (and ``WORK/finetune-2``, ``-3``, ... when ``[[finetune]]`` is an array of tables); a run
   whose ``data`` table sets ``samples`` trains on a store of that many samples of the same world
   (``WORK/data-<samples>``, generated first; its first ``[demo] samples`` are ``WORK/data``'s); a run that is
   only ``merge = {run = K, weight = W}`` trains nothing: it averages the previous run's weights with run K's
   (:func:`~step1x_edit.demo.recipe.merge_spec`);
5. ``evaluate``: the guidance scale and strength, picked among ``[evaluation] guidance_candidates`` and
   ``strength_candidates`` on freshly generated samples (:func:`tune_sampling`), then PSNR / SSIM / edit-region
   accuracy per category on the held-out split (all of it, or the first ``samples_per_task`` of each category),
   against the identity;
6. ``export``: a float16 copy (default guidance and strength = the picked ones) with a model card
   (``MODEL_CARD.md``, :mod:`~step1x_edit.demo.card`) to ``--export``.

The recipe's tables are described in :mod:`step1x_edit.demo.recipe`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import Step1XEditError
from ..train.config import TrainingConfigError
from .card import clearly_beats_identity, model_card
from .recipe import (
    finetune_runs,
    load_recipe,
    merge_spec,
    run_dir,
    run_samples,
    store_dir,
    trained_model,
    training_config,
)

STAGES = ("data", "vae", "assemble", "train", "finetune", "evaluate", "export")


PATCH_FACTOR = 28  # merged visual token side, in pixels (Qwen2.5-VL)


def _done(path: Path) -> bool:
    return (path / "DONE").is_file()


def _mark_done(path: Path, info: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "DONE").write_text(json.dumps(info or {}, indent=1))


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
    :func:`step1x_edit.demo.vae.train_vae` (the other fields are its :class:`VAETrainingConfig`)."""
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
    from .components import build_text_encoder, train_tokenizer
    from .delta import ReferenceDeltaTransformer2DModel

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
    delta = overrides.get("prediction_type") == ReferenceDeltaTransformer2DModel.PREDICTION_TYPE
    torch.manual_seed(seed)
    transformer = build_transformer("tiny", ReferenceDeltaTransformer2DModel if delta else None,
                                    mllm_hidden_size=int(text["hidden_size"]),
                                    in_channels=4 * vae.config.latent_channels,
                                    out_channels=4 * vae.config.latent_channels, **overrides)
    pipe = Step1XEditPipeline(transformer, vae, text_encoder, processor,
                              FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                              max_sequence_length=int(demo["max_sequence_length"]),
                              default_size_level=int(demo["resolution"]),
                              default_guidance_scale=float(recipe["evaluation"]["guidance_scale"]),
                              default_num_inference_steps=int(recipe["evaluation"]["steps"]))
    pipe.save_pretrained(out, safe_serialization=True)
    _mark_done(out)
    return out


def merge_run(work: Path, run: int, spec: tuple[int, float]) -> Path:
    """Make the model of merge run ``run`` (skipped when it is there: the folder appears complete or not at all)."""
    from ..train.merge import average_models

    out = run_dir(work, run) / "final"
    if not (out / "model_index.json").is_file():
        other, weight = spec
        average_models(run_dir(work, run - 1) / "final", run_dir(work, other) / "final", weight, out)
    return out


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


def build_demo(recipe_path: str | os.PathLike, work_dir: str | os.PathLike, export_dir: str | os.PathLike | None,
               stages: tuple[str, ...] = STAGES, progress: bool = True) -> dict[str, Any]:
    """Run the recipe's ``stages`` (see the module docstring); returns paths and the evaluation table."""
    from ..train.trainer import train
    from .objectives import DEMO_OBJECTIVES

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
            result = train(training_config(recipe, work, initial, data_dir, run), progress=progress,
                           objectives=DEMO_OBJECTIVES)
            if result.final_dir is None:
                raise Step1XEditError(f"{run_dir(work, run).name} stopped at step {result.step}; rerun to resume")
    if "evaluate" in stages:
        from ..bench.synthetic import format_table
        from ..pipeline import load_pipeline

        pipe = load_pipeline(final, device="cpu", torch_dtype=torch.float32)  # once, for tuning and evaluation
        steps, guidance, strength = tune_sampling(recipe, work, final, pipe, progress)
        table = format_table(evaluate(recipe, work, final, pipe, data_dir, steps, guidance, strength, progress),
                             beats=clearly_beats_identity)
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
        vae_config = json.loads((out / "vae" / "config.json").read_text(encoding="utf-8"))
        (out / "MODEL_CARD.md").write_text(model_card(recipe_path, recipe, result, size, vae_config),
                                           encoding="utf-8")
        report["export"] = str(out)
    return report
