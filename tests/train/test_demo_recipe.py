"""The demo recipe's one command runs every stage, resumes, and exports a loadable float16 model with a card."""

import json

import pytest
import torch

from step1x_edit.bench.synthetic import EvaluationResult, SampleRow, Scores, format_table
from step1x_edit.cli import main
from step1x_edit.data.store import Store, iter_samples
from step1x_edit.data.synthetic import TASKS
from step1x_edit.demo.card import _objective_note, _verdict, autoencoder_description, clearly_beats_identity
from step1x_edit.demo.recipe import merge_spec, run_samples
from step1x_edit.pipeline import load_pipeline
from step1x_edit.train.config import TrainingConfigError

RECIPE = """
[demo]
resolution = 64
samples = 44
seed = 0
max_sequence_length = 96
vision_tokens = [4, 16]

[vae]
kind = "patch"
patch_size = 4
latent_channels = 16
fit_images = 40

[text_encoder]
vocab_size = 400
hidden_size = 32
num_layers = 1
vision_hidden_size = 16

[transformer]
hidden_size = 64
num_heads = 2
depth = 1
depth_single_blocks = 1
context_in_dim = 64
vec_in_dim = 64
connector_num_heads = 2
prediction_type = "reference_delta"

[train.model]
mode = "full"

[train.data]
language = "both"

[train.training]
max_steps = 3
batch_size = 2
checkpoint_every = 3
objective = "x0_relative"
pure_noise_rate = 0.5

[train.validation]
every = -1

[[finetune]]
[finetune.training]
max_steps = 2
source_start_rate = 1.0
source_start_range = [0.5, 0.9]

[[finetune]]
[finetune.model]
train_text_encoder = true
[finetune.data]
samples = 66
[finetune.training]
max_steps = 2
pure_noise_rate = 1.0
objective_options = {space = "pixel", ssim = 1.0}
text_encoder_lr_scale = 0.5

[[finetune]]
merge = {run = 1, weight = 0.25}

[evaluation]
steps = 2
guidance_scale = 2.0
steps_candidates = [1, 2]
guidance_candidates = [1.0, 3.0]
strength_candidates = [1.0, 0.5]
tune_samples_per_task = 1
"""


def test_train_demo_builds_evaluates_and_exports_a_small_model(tmp_path):
    recipe = tmp_path / "demo.toml"
    recipe.write_text(RECIPE)
    work, export = tmp_path / "work", tmp_path / "export"
    argv = ["train-demo", str(recipe), "--work-dir", str(work), "--export", str(export), "--no-progress"]
    assert main(argv) == 0
    (rows_file,) = work.glob("evaluation-*.jsonl")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()[1:]]
    held_out = {sample.sample_id for sample in iter_samples(work / "data", split="validation")}
    assert held_out and {row["sample_id"] for row in rows} == held_out  # every held-out sample, nothing else

    # steps, guidance and strength were picked among the candidates on generated samples, never on the held-out
    # split; strength 0.5 of one step keeps no step and is not a candidate
    choice = json.loads((work / "tuning" / "choice.json").read_text())
    assert choice["steps"] in (1, 2) and choice["guidance_scale"] in (1.0, 3.0) and choice["strength"] in (1.0, 0.5)
    assert sorted(choice["scores"]) == sorted(f"steps-{steps}-guidance-{guidance}-strength-{strength}"
                                              for steps, strength in ((1, 1), (2, 1), (2, 0.5))
                                              for guidance in (1, 3))
    (tuned,) = (work / "tuning").glob("steps-2-guidance-1-strength-0.5-*.jsonl")
    tuned_ids = {json.loads(line).get("sample_id") for line in tuned.open()}
    assert len(tuned_ids - {None}) == len(TASKS) and not tuned_ids & {row["sample_id"] for row in rows}
    evaluation = json.loads((work / "evaluation.json").read_text())
    assert evaluation["settings"]["guidance_scale"] == choice["guidance_scale"]
    assert evaluation["settings"]["steps"] == choice["steps"]
    assert evaluation["settings"]["strength"] == choice["strength"]

    card = (export / "MODEL_CARD.md").read_text()
    assert "| task | n | PSNR model |" in card
    assert f"guidance scale {choice['guidance_scale']:g} and strength {choice['strength']:g}" in card
    summaries = EvaluationResult.load(work / "evaluation.json").per_task.values()
    wins = sum(clearly_beats_identity(summary) for summary in summaries)
    assert "16 whitened principal components (of the 48 values of a patch)" in card  # the autoencoder it built
    assert "reference_delta" in card  # the card says what its DiT predicts
    assert ("for 3 steps of batch 2 (50% of the samples at pure noise; each sample's error relative to returning "
            "its source), then 2 steps of batch 2 in a second run (fine-tuning run 1 of the finetune stage; 50% of "
            "the samples at pure noise; each sample's error relative to returning its source), then 2 steps of batch "
            "2 in a third run (fine-tuning run 2 of the finetune stage; 100% of the samples at pure "
            "noise; each sample's error relative to returning its source; errors measured in pixels, squared and "
            "structural (SSIM); on a store of 66 samples; the text encoder's language model trained too, at 0.5 times the "
            "learning rate), then the third run's weights averaged with the second run's, 0.75 and 0.25: the fourth "
            "model (fine-tuning run 3 of the finetune stage; no training)") in card
    assert "(44 synthetic samples, 66 for the runs that name a larger store; VAE" in card
    assert "frozen at first and trained with the DiT in the third run (only its language model)" in card
    assert ("in all" in card) if wins == len(summaries) else ("does **not**" in card)

    # each [[finetune]] run continued from the previous run's model with its own changes to [train]; the last one
    # is what was exported
    finetune = json.loads((work / "finetune" / "config.json").read_text())
    assert finetune["model"]["path"] == str(work / "run" / "final") and finetune["training"]["max_steps"] == 2
    assert finetune["training"]["source_start_rate"] == 1.0 and finetune["training"]["batch_size"] == 2
    third = json.loads((work / "finetune-2" / "config.json").read_text())
    assert third["model"]["path"] == str(work / "finetune" / "final")
    assert third["training"]["objective_options"]["space"] == "pixel" and third["training"]["source_start_rate"] == 0.0
    # the third run read a larger store of the same world, whose first samples are the other runs'
    assert finetune["data"]["store"] == str(work / "data") and third["data"]["store"] == str(work / "data-66")
    small, large = (sorted(record["sample_id"] for record in Store(work / name).iter_records(["sample_id"]))
                    for name in ("data", "data-66"))
    assert len(small) == 44 and len(large) == 66 and large[:44] == small
    assert evaluation["settings"]["model"] == str(work / "finetune-3" / "final")
    pipe = load_pipeline(export, device="cpu")
    models = {run: load_pipeline(work / run / "final", device="cpu") for run in ("finetune", "finetune-2", "finetune-3")}
    first_weights, tuned_weights, merged_weights = (models[run].transformer.state_dict() for run in models)
    name = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(pipe.transformer.state_dict()[name], merged_weights[name].half().float())
    assert not torch.equal(tuned_weights[name], first_weights[name])
    # the last run trained nothing: it is the third run's weights averaged with the second's, 3 to 1
    torch.testing.assert_close(merged_weights[name], 0.75 * tuned_weights[name] + 0.25 * first_weights[name])
    # the third run trained the text encoder's language model too; the merge averages it, and the export carries it
    first_text, tuned_text, merged_text = (models[run].text_encoder.state_dict() for run in models)
    layer = next(key for key in tuned_text if "language_model.layers.0" in key and key.endswith("q_proj.weight"))
    assert not torch.equal(tuned_text[layer], first_text[layer])
    torch.testing.assert_close(merged_text[layer], 0.75 * tuned_text[layer] + 0.25 * first_text[layer])
    assert torch.equal(pipe.text_encoder.state_dict()[layer], merged_text[layer].half().float())
    assert pipe.transformer.dtype == torch.float32  # stored float16, placed as float32 on CPU
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.in_channels == 64
    assert pipe.transformer.config.prediction_type == "reference_delta"  # the recipe's, built as the demo's class
    assert type(pipe.transformer).__name__ == "ReferenceDeltaTransformer2DModel"
    assert json.loads((export / "model_index.json").read_text())["transformer"] == [
        "step1x_edit.demo.delta", "ReferenceDeltaTransformer2DModel"]
    assert pipe.config.max_sequence_length == 96 and pipe.config.default_size_level == 64
    assert pipe.config.default_guidance_scale == choice["guidance_scale"]
    assert pipe.config.default_strength == choice["strength"]
    assert pipe.config.default_num_inference_steps == choice["steps"]

    # a rerun finds every stage finished and changes nothing
    before = (export / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main(argv) == 0
    assert (export / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert json.loads((work / "tuning" / "choice.json").read_text()) == choice

    # changed evaluation settings are scored afresh, next to the earlier scores; a tuning made for another model
    # is not reused
    recipe.write_text(RECIPE.replace("[evaluation]\n", "[evaluation]\nsamples_per_task = 1\n"))
    choice_file = work / "tuning" / "choice.json"
    choice_file.write_text(json.dumps({**choice, "model": str(work / "run" / "final")}))
    assert main(argv) == 0
    assert len(list(work.glob("evaluation-*.jsonl"))) == 2 and rows_file.read_text().count("\n") == len(rows) + 1
    assert json.loads(choice_file.read_text())["model"] == str(work / "finetune-3" / "final")


def test_the_committed_recipe_is_valid_and_samples_from_the_starts_it_trains(tmp_path):
    from pathlib import Path

    from step1x_edit import sampling
    from step1x_edit.demo.recipe import finetune_runs, load_recipe, run_dir, trained_model, training_config

    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.toml")
    config = training_config(recipe, tmp_path, tmp_path / "initial", tmp_path / "data")
    runs = finetune_runs(recipe)
    for run in range(1, len(runs) + 1):  # the model that is shipped is the last run's, each from the one before
        if merge_spec(recipe, run) is not None:  # a merge trains nothing (its spec is checked by merge_spec)
            continue
        config = training_config(recipe, tmp_path, tmp_path / "initial", tmp_path / "data", run)
        assert config.model.path == str(run_dir(tmp_path, run - 1) / "final")
        assert config.training.output_dir == str(run_dir(tmp_path, run))
    assert trained_model(recipe, tmp_path) == run_dir(tmp_path, len(runs)) / "final"
    t = config.training
    evaluation = recipe["evaluation"]
    if t.source_start_rate == 1:  # trained on image-to-image paths only: every candidate must start inside them
        downsampling = int(recipe["vae"].get("patch_size", 8))  # the FLUX-layout autoencoder downsamples 8x
        tokens = (int(recipe["demo"]["resolution"]) // downsampling // 2) ** 2
        schedule = sampling.get_schedule(int(evaluation["steps"]), tokens)
        low, high = t.source_start_range
        for strength in evaluation["strength_candidates"]:
            assert low <= sampling.start_at_strength(schedule, strength)[0] <= high


def test_a_run_s_store_size_must_be_a_positive_whole_number():
    recipe = {"demo": {"samples": 44}, "train": {"training": {}}, "finetune": [{"data": {"samples": 66}}]}
    assert run_samples(recipe, 0) == 44 and run_samples(recipe, 1) == 66
    for bad in (0, -5, 2.5, "many", True):
        recipe["finetune"][0]["data"]["samples"] = bad
        with pytest.raises(TrainingConfigError, match="positive whole number"):
            run_samples(recipe, 1)


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([{}, {}, {"merge": {"run": 1}}], "merge must be"),
        ([{}, {}, {"merge": {"run": 1, "weight": 0.3, "steps": 2}}], "merge must be"),
        ([{}, {}, {"merge": {"run": 2, "weight": 0.3}}], "earlier run than the previous one"),
        ([{}, {}, {"merge": {"run": 5, "weight": 0.3}}], "earlier run than the previous one"),
        ([{}, {}, {"merge": {"run": True, "weight": 0.3}}], "earlier run than the previous one"),
        ([{}, {}, {"merge": {"run": 1, "weight": 1.0}}], "between 0 and 1"),
        ([{}, {}, {"merge": {"run": 1, "weight": "half"}}], "between 0 and 1"),
        ([{}, {}, {"merge": {"run": 1, "weight": 0.3}, "training": {"max_steps": 5}}], "trains nothing"),
    ],
)
def test_a_merge_run_must_name_an_earlier_run_and_a_weight_between_0_and_1(runs, message):
    recipe = {"demo": {"samples": 44}, "train": {"training": {}}, "finetune": runs}
    assert merge_spec(recipe, 1) is None
    with pytest.raises(TrainingConfigError, match=message):
        merge_spec(recipe, 3)


def test_the_cards_note_on_a_run_names_each_term_and_weight_it_used_and_no_other():
    note = _objective_note({"objective": "x0_relative", "objective_options": {"space": "pixel", "ssim": 2.0}},
                           {"task_repeats": {"subject_addition": 2, "color_alteration": 3}})
    assert "relative to returning its source" in note and "pixels" in note and "SSIM" in note
    assert "weighted 2" in note and "absolute" not in note
    assert "subject_addition" in note and "color_alteration" in note and "3 times" in note
    absolute_only = _objective_note({"objective": "x0",
                                     "objective_options": {"space": "pixel", "squared": 0, "absolute": 1}})
    assert "absolute" in absolute_only and "squared" not in absolute_only and "SSIM" not in absolute_only
    assert "weighted" not in absolute_only  # a weight of 1 goes unsaid
    assert "0.03" in _objective_note({"text_encoder_lr_scale": 0.03}, None, {"train_text_encoder": True})
    assert _objective_note({}, None, {"train_text_encoder": False}) == ""


def test_the_card_counts_a_category_only_when_both_gains_exceed_their_standard_errors():
    def rows(task, psnr_gains, ssim_gains):
        return [SampleRow(f"{task}-{index}", task, Scores(20.0 + psnr, 0.9 + ssim), Scores(20.0, 0.9))
                for index, (psnr, ssim) in enumerate(zip(psnr_gains, ssim_gains, strict=True))]

    result = EvaluationResult([
        *rows("style_transfer", [1.0, 1.2, 0.8], [0.010, 0.012, 0.008]),  # clear gains
        *rows("color_alteration", [0.3, 0.4, 0.2], [0.002, -0.001, 0.0]),  # SSIM gain within its error
        *rows("subject_addition", [0.1, 0.1, 0.1], [-0.001, -0.001, -0.001]),  # an SSIM loss
        *rows("tone_transformation", [0.5], [0.01]),  # one sample: no error to compare with
    ])
    summaries = result.per_task
    assert [task for task, summary in summaries.items() if clearly_beats_identity(summary)] == ["style_transfer"]
    assert summaries["color_alteration"].beats_identity  # higher means, but not beyond their standard errors
    verdict = _verdict(result)
    assert "in 1 of 4 categories" in verdict
    assert "**not** in subject_addition, color_alteration, tone_transformation" in verdict
    assert verdict.endswith("its PSNR gain alone is above its standard error in 3 of 4)")
    table = format_table(result, beats=clearly_beats_identity)
    assert [line.rsplit("|", 2)[1].strip() for line in table.splitlines()[2:]] == ["no", "no", "yes", "no", "yes"]


def test_the_card_says_which_autoencoder_the_recipe_built():
    patch = autoencoder_description({"_class_name": "PatchAutoencoder", "patch_size": 4, "latent_channels": 48,
                                     "in_channels": 3})
    assert "4 × 4-pixel patches" in patch and "48 whitened principal components (all of them" in patch
    assert "of the 48 values" in autoencoder_description({"_class_name": "PatchAutoencoder", "patch_size": 4,
                                                          "latent_channels": 16})
    flux = autoencoder_description({"_class_name": "AutoencoderKL", "block_out_channels": [32, 64, 96],
                                    "latent_channels": 16})
    assert "`AutoencoderKL`" in flux and "widths 32, 64, 96, 16 latent channels, 4× downsampling" in flux
