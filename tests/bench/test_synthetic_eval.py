"""Evaluation on held-out synthetic data: metrics, per-task comparison with the identity, resuming, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from step1x_edit.bench.synthetic import (
    PSNR_CAP,
    EvaluationResult,
    SampleRow,
    Scores,
    edit_region_accuracy,
    evaluate_editor,
    format_table,
    generated_samples,
    identity_editor,
    outside_mask_psnr,
    psnr,
    ssim,
)
from step1x_edit.cli import main
from step1x_edit.data.synthetic.generators import LOCAL_TASKS, TASKS
from step1x_edit.errors import DataFormatError, InvalidImageError, Step1XEditError
from step1x_edit.testing.tiny import save_tiny_official


@pytest.fixture(scope="module")
def samples():
    """One 64x64 held-out sample of each of the 11 tasks."""
    return generated_samples(len(TASKS), resolution=64)


def _random_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _noisy(image: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, scale, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_psnr_is_capped_for_identical_images_and_matches_the_formula():
    image = _random_image(0)
    assert psnr(image, image) == PSNR_CAP
    shifted = image.copy()
    shifted[image < 255] += 1
    shifted[image == 255] -= 1
    assert psnr(image, shifted) == pytest.approx(10 * np.log10(255.0**2))


def test_ssim_is_one_for_identical_images_symmetric_and_decreasing_with_noise():
    image = _random_image(1)
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = _noisy(image, 10)
    assert ssim(image, noisy) == pytest.approx(ssim(noisy, image))
    values = [ssim(image, _noisy(image, scale)) for scale in (5, 20, 60)]
    assert values[0] > values[1] > values[2]


def test_ssim_and_psnr_match_the_scikit_image_reference_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    # skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255) and peak_signal_noise_ratio(a, b, data_range=255)
    assert ssim(a, b) == pytest.approx(0.929478173907898, abs=1e-12)
    assert psnr(a, b) == pytest.approx(19.18878853382187, abs=1e-10)


def test_ssim_of_flat_images_is_the_luminance_term():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_metrics_refuse_images_of_different_sizes_or_too_small_for_ssim():
    with pytest.raises(InvalidImageError, match="differ in size"):
        psnr(_random_image(0, 32), _random_image(0, 16))
    with pytest.raises(InvalidImageError, match="at least 11x11"):
        ssim(_random_image(0, 8), _random_image(1, 8))


def test_region_accuracy_counts_mask_pixels_closer_to_target_and_skips_unchanged_ones():
    source = np.zeros((2, 2, 3), np.uint8)
    target = np.full((2, 2, 3), 200, np.uint8)
    target[1, 1] = 0  # unchanged pixel inside the mask: left out
    output = np.array([[[190] * 3, [10] * 3], [[100] * 3, [50] * 3]], np.uint8)  # closer, farther, tie, -
    mask = np.full((2, 2), 255, np.uint8)
    assert edit_region_accuracy(source, output, target, mask) == pytest.approx(1 / 3)
    assert edit_region_accuracy(source, output, source, mask) is None
    assert outside_mask_psnr(output, target, mask) is None
    assert outside_mask_psnr(output, output, np.zeros((2, 2), np.uint8)) == PSNR_CAP


def test_identity_editor_scores_exactly_as_the_baseline_and_never_beats_it(samples):
    result = evaluate_editor(identity_editor, samples, progress=False)
    assert [row.model for row in result.rows] == [row.identity for row in result.rows]
    assert set(result.per_task) == set(TASKS)
    assert not any(summary.beats_identity for summary in result.per_task.values())
    assert all(result.per_task[task].region_accuracy == 0.0 for task in LOCAL_TASKS)


def test_oracle_editor_beats_identity_on_every_task_with_full_region_accuracy(samples):
    targets = {sample.source.tobytes(): sample.target for sample in samples}
    result = evaluate_editor(lambda image, instruction: targets[image.tobytes()], samples, progress=False)
    for task, summary in result.per_task.items():
        assert summary.beats_identity, task
        assert summary.psnr_model == PSNR_CAP and summary.ssim_model == pytest.approx(1.0)
        if task in LOCAL_TASKS:
            assert summary.region_accuracy == 1.0 and summary.outside_psnr == PSNR_CAP
        else:
            assert summary.region_accuracy is None
    table = format_table(result)
    assert table.count("| yes |") == len(TASKS) + 1  # every task and the overall row


def test_noisy_editor_scores_below_the_identity(samples):
    def noisy(image, instruction):
        return Image.fromarray(_noisy(np.asarray(image), 40))

    result = evaluate_editor(noisy, samples, progress=False)
    for summary in result.per_task.values():
        assert summary.psnr_model < summary.psnr_identity
        assert summary.ssim_model < summary.ssim_identity
        assert not summary.beats_identity


def test_an_interrupted_run_resumes_with_only_the_samples_not_yet_scored(samples, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    seen = []

    def failing_after_four(image, instruction):
        if len(seen) == 4:
            raise KeyboardInterrupt
        seen.append(instruction)
        return image

    with pytest.raises(KeyboardInterrupt):
        evaluate_editor(failing_after_four, samples, progress=False, rows_path=rows_path, settings={"steps": 1})
    assert len(rows_path.read_text().splitlines()) == 1 + 4  # header and four rows

    calls = []
    result = evaluate_editor(
        lambda image, instruction: calls.append(instruction) or image,
        samples, progress=False, rows_path=rows_path, settings={"steps": 1},
    )
    assert calls == [sample.instruction_en for sample in samples[4:]]
    assert [row.sample_id for row in result.rows] == [sample.sample_id for sample in samples]
    assert result.rows == evaluate_editor(identity_editor, samples, progress=False).rows

    with pytest.raises(Step1XEditError, match="other settings"):
        evaluate_editor(identity_editor, samples, progress=False, rows_path=rows_path, settings={"steps": 2})


def test_a_row_cut_short_by_an_interruption_is_redone(samples, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    evaluate_editor(identity_editor, samples[:2], progress=False, rows_path=rows_path)
    rows_path.write_text(rows_path.read_text()[:-20])
    calls = []
    evaluate_editor(lambda image, text: calls.append(text) or image, samples[:2], progress=False, rows_path=rows_path)
    assert calls == [samples[1].instruction_en]
    assert len(rows_path.read_text().splitlines()) == 3


def test_results_round_trip_through_json(samples, tmp_path):
    result = evaluate_editor(identity_editor, samples[:3], progress=False, settings={"model": "identity"})
    loaded = EvaluationResult.load(result.save(tmp_path / "result.json"))
    assert loaded.rows == result.rows and loaded.settings == result.settings
    assert format_table(loaded) == format_table(result)


def test_generated_samples_cycle_through_the_tasks_reproducibly():
    first, second = generated_samples(12, resolution=64), generated_samples(12, resolution=64)
    assert [sample.task for sample in first] == [*TASKS, TASKS[0]]
    assert all(a.source.tobytes() == b.source.tobytes() for a, b in zip(first, second, strict=True))
    assert len({sample.sample_id for sample in first}) == 12


def test_cli_evaluates_a_model_directory_and_writes_the_table(tmp_path, capsys):
    model = save_tiny_official(tmp_path / "model")
    out, markdown = tmp_path / "result.json", tmp_path / "table.md"
    argv = ["bench", "synthetic", "--generate", "3", "--resolution", "64", "--model", str(model), "--steps", "2",
            "--size-level", "64", "--device", "cpu", "--out", str(out), "--markdown", str(markdown)]
    assert main(argv) == 0
    table = markdown.read_text()
    assert table.startswith("| task | n | PSNR model | PSNR identity |")
    assert all(f"| {task} | 1 |" in table for task in TASKS[:3])
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 3 and data["settings"]["steps"] == 2
    assert len((tmp_path / "result.rows.jsonl").read_text().splitlines()) == 4
    assert "| all | 3 |" in capsys.readouterr().out

    assert main(argv) == 0  # everything already scored: resumes without editing again
    assert json.loads(out.read_text())["rows"] == data["rows"]


def test_bench_synthetic_help_is_printed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "synthetic", "--help"])
    assert exit_info.value.code == 0
    assert "--generate" in capsys.readouterr().out


def test_the_table_gives_each_gain_over_the_identity_with_its_standard_error(tmp_path):
    def row(index, task, psnr_gain, ssim_gain):
        identity = Scores(20.0, 0.9)
        return SampleRow(f"s{index}", task, Scores(20.0 + psnr_gain, 0.9 + ssim_gain), identity)

    rows = [row(0, "subject_removal", 1.0, -0.001), row(1, "subject_removal", 2.0, 0.0),
            row(2, "subject_removal", 3.0, 0.001), row(3, "style_transfer", 0.5, 0.01)]
    result = EvaluationResult(rows)
    removal = result.per_task["subject_removal"]
    assert removal.psnr_gain_se == pytest.approx(1 / 3**0.5)  # sample std 1 over sqrt(3)
    assert removal.ssim_gain_se == pytest.approx(0.001 / 3**0.5)
    assert result.per_task["style_transfer"].psnr_gain_se is None  # one sample: no error to give
    table = format_table(result)
    assert "| +2.00 ± 0.58 |" in table and "| +0.00000 ± 0.00058 |" in table
    assert "| style_transfer | 1 | 20.50 | 20.00 | +0.50 | 0.9100 | 0.9000 | +0.01000 |" in table
    assert EvaluationResult.load(result.save(tmp_path / "r.json")).per_task == result.per_task


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda row: row["model"].update(psnr="30"), r"model.psnr must be a number .* got '30'"),
     (lambda row: row["model"].update(psnr=float("nan")), "model.psnr must be a finite number"),
     (lambda row: row["identity"].update(ssim=1e308), "identity.ssim must be a finite number between -1.0 and 1.0"),
     (lambda row: row["model"].update(region_accuracy=True), "model.region_accuracy must be a number"),
     (lambda row: row["model"].update(extra=1), "model must be an object with the fields psnr, ssim"),
     (lambda row: row.update(task=7), "task must be a string"),
     (lambda row: row.pop("identity"), "identity must be an object")],
)
def test_a_rows_file_with_a_bad_value_is_refused_naming_the_line_and_field(change, message, samples, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    evaluate_editor(identity_editor, samples[:2], progress=False, rows_path=rows_path)
    header, first, second = rows_path.read_text().splitlines()
    row = json.loads(second)
    change(row)
    rows_path.write_text("\n".join([header, first, json.dumps(row)]) + "\n")
    with pytest.raises(DataFormatError, match=f"rows.jsonl:3: not a synthetic evaluation row \\({message}"):
        evaluate_editor(identity_editor, samples[:2], progress=False, rows_path=rows_path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00 garbage\n", b"[1, 2]\n", b"[" * 50_000 + b"]" * 50_000 + b"\n"])
def test_a_rows_or_result_file_of_garbage_is_refused(content, samples, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_bytes(content)
    with pytest.raises(DataFormatError, match="is not a synthetic evaluation rows file"):
        evaluate_editor(identity_editor, samples[:1], progress=False, rows_path=rows_path)
    with pytest.raises(DataFormatError, match="is not a .*synthetic evaluation result"):
        EvaluationResult.load(rows_path)
