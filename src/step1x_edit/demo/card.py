"""The demo model's card (``MODEL_CARD.md``): what was built, how it was trained and how it scores, all computed
from the recipe and the held-out evaluation, so the text follows whatever the recipe built."""

from __future__ import annotations

from pathlib import Path

from .recipe import finetune_runs, merge_spec, run_samples, stage_tables

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
            "twelfth")


def _ordinal(number: int) -> str:
    """ "second" for 2; "11th" past :data:`ORDINALS`."""
    return ORDINALS[number - 1] if number <= len(ORDINALS) else f"{number}th"


def clearly_beats_identity(summary) -> bool:
    """Whether a category (a :class:`~step1x_edit.bench.synthetic.TaskSummary`) counts as beating the identity on the
    card: its mean PSNR gain and its mean SSIM gain over the identity both exceed their standard errors (a category
    of one sample has none, and does not count)."""
    gains = ((summary.psnr_model - summary.psnr_identity, summary.psnr_gain_se),
             (summary.ssim_model - summary.ssim_identity, summary.ssim_gain_se))
    return all(error is not None and gain > error for gain, error in gains)


def _verdict(result) -> str:
    """One sentence on where the model beats returning the source, from the evaluation itself
    (:func:`clearly_beats_identity`)."""
    summaries = list(result.per_task.values())
    winners = [summary.task for summary in summaries if clearly_beats_identity(summary)]
    losers = [summary.task for summary in summaries if not clearly_beats_identity(summary)]
    if not losers:
        return (f"On held-out data it beats returning the source unchanged in all {len(summaries)} categories, "
                "its PSNR and its SSIM gains both above their standard errors (table below)")
    if not winners:
        return ("On held-out data it does **not** beat returning the source unchanged in any category by more than "
                "the standard errors of its gains (table below)")
    psnr_winners = sum(summary.psnr_gain_se is not None
                       and summary.psnr_model - summary.psnr_identity > summary.psnr_gain_se for summary in summaries)
    psnr_alone = "all" if psnr_winners == len(summaries) else f"{psnr_winners} of"
    return (f"On held-out data it beats returning the source unchanged in {len(winners)} of {len(summaries)} "
            f"categories (its PSNR and its SSIM gains both above their standard errors); it does **not** in "
            f"{', '.join(losers)} (table below; its PSNR gain alone is above its standard error in {psnr_alone} "
            f"{len(summaries)})")


def autoencoder_description(config: dict) -> str:
    """What the model's autoencoder is, from its saved ``vae/config.json`` (``_class_name`` included)."""
    if config.get("_class_name") == "PatchAutoencoder":
        side, channels = int(config["patch_size"]), int(config["latent_channels"])
        values = int(config.get("in_channels", 3)) * side * side
        kept = ("all of them, so nothing is lost but rounding" if channels >= values
                else f"of the {values} values of a patch")
        return (f"a linear patch autoencoder fitted to the synthetic world: {side} × {side}-pixel patches projected "
                f"on {channels} whitened principal components ({kept}), not the FLUX VAE")
    widths = [int(width) for width in config.get("block_out_channels", ())]
    return (f"a FLUX-layout `AutoencoderKL` trained by this project on the synthetic world ({len(widths)} levels of "
            f"widths {', '.join(map(str, widths))}, {int(config['latent_channels'])} latent channels, "
            f"{2 ** max(len(widths) - 1, 0)}× downsampling), not the released FLUX VAE")


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
    options = training.get("objective_options", {})
    if training.get("objective") == "x0_relative":
        notes.append("each sample's error relative to returning its source")
    if options.get("space") == "pixel":
        weights = {"squared": float(options.get("squared", 1)), "absolute": float(options.get("absolute", 0)),
                   "structural": float(options.get("ssim", 0))}
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


def model_card(recipe_path: Path, recipe: dict, result, size_bytes: int, vae_config: dict) -> str:
    """The card's Markdown: the recipe, the evaluation ``result`` (its table with :func:`clearly_beats_identity` as
    the "beats identity" column), the exported size and the exported autoencoder's ``vae_config``."""
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
vocabulary of the templates. Its autoencoder is {autoencoder_description(vae_config)}. It is a demonstration of the whole system, not a substitute for the released Step1X-Edit weights.

## Held-out evaluation

Held-out synthetic samples (the validation split of the training store, never trained on), {result.overall.count}
in all, each category scored against the exact ground truth at guidance {guidance:g}, strength {strength:g} and
{steps} step{plural}; "identity" returns the source unchanged. PSNR in dB, SSIM per RGB channel
(Gaussian window); region accuracy = share of the edited region's pixels closer to the target than to the source;
each gain over the identity is given with its standard error, and "beats identity" = both the PSNR and the SSIM
gain above their standard errors. An addition instruction names the new shape and a cell of a 3 × 3 grid, not the shape's position in it,
so on subject additions no editor can be sure to beat the identity's SSIM: one that knows the exact shape and
size but has to guess the position within the cell scores the identity's SSIM at best
(`benchmarks/addition_bound.py`).

{format_table(result, beats=clearly_beats_identity)}
## Reproduce

```bash
step1x-edit train-demo {recipe_path.as_posix()} --work-dir demo-build --export src/step1x_edit/assets/demo
```

Recipe: `{recipe_path.as_posix()}` ({demo["samples"]} synthetic samples{larger}; VAE, tokenizer, encoder and DiT
all built by the command).
"""
