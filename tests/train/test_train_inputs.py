"""Bad training inputs (config files, their values, command-line numbers) stop the command with exit code 2 and
one line naming the file or the field, the value and what is allowed; never a traceback."""

import math

import pytest

from step1x_edit.cli import main
from step1x_edit.train import config as train_config


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    return repr(value)  # ints, and floats including nan and inf (TOML spells them alike)


def _refused(capsys, *argv: str) -> str:
    """Run ``step1x-edit ARGV``; assert exit code 2, one line on stderr and no traceback; return the line."""
    assert main(list(argv)) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    return error.strip()


def _refused_argument(capsys, *argv: str) -> str:
    """Like :func:`_refused` for an argument argparse refuses (usage, then the error line)."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.strip().splitlines()[-1]


def _config(tmp_path, table: str = "training", **fields) -> str:
    tables = {"data": {"store": str(tmp_path / "store")}, "training": {"output_dir": str(tmp_path / "run")}}
    tables.setdefault(table, {}).update(fields)
    path = tmp_path / "train.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
                            for name, values in tables.items()), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("command", [["train"], ["train-vae", "--output", "OUT", "--config"],
                                     ["train-demo", "--work-dir", "WORK"]], ids=["train", "train-vae", "train-demo"])
def test_a_binary_config_file_is_one_line_naming_the_file(tmp_path, capsys, command):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" + bytes(range(256)))
    argv = [part.replace("OUT", str(tmp_path / "out")).replace("WORK", str(tmp_path / "work")) for part in command]
    line = _refused(capsys, *argv, str(path))
    assert str(path) in line and "is not UTF-8 text (byte 0x89 at offset 0)" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("[training\nmax_steps = 3\n", "is not valid TOML"),
    ("[training]\nmax_steps = \n", "is not valid TOML"),
    ("training = 5\n", "training must be a table"),
    ('[training]\nmax_steps = 3\n[training]\nseed = 1\n', "is not valid TOML"),
])
def test_a_malformed_config_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "train.toml"
    path.write_text(content, encoding="utf-8")
    assert message in _refused(capsys, "train", str(path))


def test_a_folder_or_a_huge_file_given_as_config_is_one_line(tmp_path, capsys):
    assert f"cannot read training config {tmp_path}" in _refused(capsys, "train", str(tmp_path))
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * train_config.MAX_CONFIG_BYTES, encoding="utf-8")
    assert "is larger than 1 MiB" in _refused(capsys, "train", str(huge))


@pytest.mark.parametrize("value", [4.5, True, 0, -3, "ten", 10**12, [3]])
def test_max_steps_must_be_a_whole_number_in_range(tmp_path, capsys, value):
    line = _refused(capsys, "train", _config(tmp_path, max_steps=value))
    assert "error: training.max_steps must be an integer between 1 and 1000000000, got" in line


@pytest.mark.parametrize("value", [0, -1e-4, math.nan, math.inf, -math.inf, True, "1e-4", 11.0])
def test_the_learning_rate_must_be_a_finite_positive_number(tmp_path, capsys, value):
    line = _refused(capsys, "train", _config(tmp_path, learning_rate=value))
    assert "error: training.learning_rate must be a" in line and "number in (0, 10]" in line


@pytest.mark.parametrize(("table", "field", "value"), [
    ("model", "lora_rank", 0), ("model", "lora_rank", 2.5), ("model", "lora_alpha", 0),
    ("model", "lora_alpha", math.nan), ("model", "lora_dropout", 1.5), ("model", "train_connector", "yes"),
    ("model", "path", 5), ("model", "mode", 3), ("model", "lora_targets", "to_q"),
    ("data", "resolution", 8), ("data", "resolution", 16.5), ("data", "validation_fraction", -0.1),
    ("data", "cache", "no"), ("data", "tasks", [1]), ("data", "task_repeats", {"subject_addition": 0}),
    ("data", "language", "fr"),
    ("training", "seed", -1), ("training", "seed", 2**40), ("training", "batch_size", 0),
    ("training", "batch_size", 1000.0), ("training", "gradient_accumulation_steps", 0),
    ("training", "warmup_steps", -1), ("training", "weight_decay", -1.0), ("training", "adam_beta1", 1.0),
    ("training", "adam_beta2", -0.1), ("training", "adam_epsilon", 0.0), ("training", "max_grad_norm", -1.0),
    ("training", "shift", 0.0), ("training", "logit_std", 0.0), ("training", "logit_mean", math.inf),
    ("training", "dropout_text", 2.0), ("training", "pure_noise_rate", math.nan), ("training", "ema_decay", 1.0),
    ("training", "checkpoint_every", 0), ("training", "keep_checkpoints", 0), ("training", "log_every", 0),
    ("training", "num_threads", -1), ("training", "until_step", 0), ("training", "qk_norm_lr_scale", math.inf),
    ("training", "text_encoder_lr_scale", 0.0), ("training", "objective", ""),
    ("training", "objective_options", "x0"),
    ("training", "source_start_range", [0.5, math.nan]), ("training", "lr_scheduler", "warp"),
    ("training", "mixed_precision", "fp8"), ("training", "timestep_sampling", "normal"),
    ("training", "use_8bit_adam", 1), ("training", "output_dir", ""), ("training", "report_to", "csv"),
    ("validation", "every", -2), ("validation", "num_samples", 0), ("validation", "steps", 0),
    ("validation", "guidance_scale", -1.0), ("validation", "seed", 1.5),
])
def test_every_config_field_has_a_type_and_a_range(tmp_path, capsys, table, field, value):
    line = _refused(capsys, "train", _config(tmp_path, table, **{field: value}))
    assert f"error: {table}.{field}" in line


def test_a_command_line_override_is_checked_like_the_file(tmp_path, capsys):
    line = _refused(capsys, "train", _config(tmp_path), "--set", "training.learning_rate=NaN")
    assert "training.learning_rate must be a finite number in (0, 10], got nan" in line


@pytest.mark.parametrize(("argv", "option"), [
    (["--max-steps", "4.5"], "--max-steps"), (["--max-steps", "0"], "--max-steps"),
    (["--max-steps", "nan"], "--max-steps"), (["--until-step", "-1"], "--until-step"),
    (["--until-step", "true"], "--until-step"),
])
def test_train_step_flags_take_whole_numbers_in_range(tmp_path, capsys, argv, option):
    line = _refused_argument(capsys, "train", _config(tmp_path), *argv)
    assert f"argument {option}: must be an integer between 1 and 1000000000, got" in line


@pytest.mark.parametrize("steps", ["4.5", "0", "1e9", "many"])
def test_train_vae_steps_flag_takes_a_whole_number_in_range(tmp_path, capsys, steps):
    line = _refused_argument(capsys, "train-vae", "--output", str(tmp_path / "out"), "--steps", steps)
    assert "argument --steps: must be an integer between 1 and 1000000000, got" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("steps", 4.5), ("lr", math.nan), ("batch_size", True), ("block_out_channels", [32, 4.5]), ("tasks", "shapes"),
    ("seed", -1), ("save_fp16", "yes"), ("kl_weight", math.inf),
])
def test_train_vae_config_values_are_checked(tmp_path, capsys, field, value):
    path = tmp_path / "vae.toml"
    path.write_text(f"{field} = {_toml(value)}\n", encoding="utf-8")
    line = _refused(capsys, "train-vae", "--output", str(tmp_path / "out"), "--config", str(path))
    assert f"error: {field}" in line


@pytest.mark.parametrize("weight", ["nan", "1.5", "0", "-0.1", "inf", "half"])
def test_the_merge_weight_must_be_a_number_between_0_and_1(tmp_path, capsys, weight):
    line = _refused_argument(capsys, "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--weight", weight,
                             "-o", str(tmp_path / "out"))
    assert "argument --weight: must be a" in line and "number in (0, 1]" in line


def test_the_command_line_and_the_config_file_refuse_the_same_step_counts(tmp_path, capsys):
    too_many = str(train_config.MAX_STEPS + 1)
    flag = _refused_argument(capsys, "train", _config(tmp_path), "--max-steps", too_many)
    field = _refused(capsys, "train", _config(tmp_path, max_steps=train_config.MAX_STEPS + 1))
    assert f"and {train_config.MAX_STEPS}, got {too_many}" in flag and f"and {train_config.MAX_STEPS}, got {too_many}" in field


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"[1, 2]", b'{"training": 3}', b"[" * 100_000])
def test_a_damaged_run_settings_file_is_a_clear_error(tmp_path, content):
    from step1x_edit.train.trainer import _check_same_run

    (tmp_path / "config.json").write_bytes(content)
    config = train_config.config_from_dict({"data": {"store": "s"}})
    with pytest.raises(train_config.TrainingConfigError, match="config.json"):
        _check_same_run(tmp_path, config)


def test_a_loss_log_cut_short_by_a_crash_keeps_its_complete_rows_up_to_the_resumed_step(tmp_path):
    from step1x_edit.train.trainer import _LossLog

    log = tmp_path / "logs" / "loss.csv"
    log.parent.mkdir()
    log.write_text("step,loss,lr,samples,seconds\n1,0.5,0.001,4,0.1\n2,0.4,0.001,8,0.2\n3,0.3,0.001,12,0.3\n"
                   "4,0.2\nx,1,1,1,1\n", encoding="utf-8")
    _LossLog(tmp_path, resume_step=3, enabled=True)
    assert log.read_text(encoding="utf-8").splitlines() == [
        "step,loss,lr,samples,seconds", "1,0.5,0.001,4,0.1", "2,0.4,0.001,8,0.2", "3,0.3,0.001,12,0.3"]


@pytest.mark.parametrize(("line", "replacement", "message"), [
    ("samples = 12000", "samples = 4.5", "demo.samples must be an integer"),
    ("resolution = 96", "resolution = true", "demo.resolution must be an integer"),
    ("vision_tokens = [4, 16]", "vision_tokens = [16, 4]", "demo.vision_tokens must be a pair low <= high"),
    ("guidance_scale = 2.5", "guidance_scale = nan", "evaluation.guidance_scale must be a finite number"),
    ("guidance_candidates = [1.0, 2.5, 4.0]", "guidance_candidates = [1.0, inf]",
     "evaluation.guidance_candidates[1] must be a finite number"),
    ("vocab_size = 2000", "vocab_size = -1", "text_encoder.vocab_size must be an integer"),
])
def test_demo_recipe_numbers_are_checked_before_anything_is_built(tmp_path, capsys, line, replacement, message):
    from pathlib import Path

    recipe = (Path(__file__).parents[2] / "recipes" / "demo.toml").read_text(encoding="utf-8")
    assert line in recipe
    path = tmp_path / "recipe.toml"
    path.write_text(recipe.replace(line, replacement, 1), encoding="utf-8")
    assert message in _refused(capsys, "train-demo", str(path), "--work-dir", str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()
