"""The in-process transformers judge with a tiny random Qwen2.5-VL: a real generate call whose random reply is
unparseable, which is recorded as a failed judgement (never a score)."""

import pytest
from PIL import Image

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges.transformers_judge import TransformersJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.stats import compute_statistics, format_statistics, read_scores
from step1x_edit.errors import CheckpointError
from step1x_edit.testing.tiny import save_tiny_mllm, tiny_processor, tiny_text_encoder


@pytest.fixture(scope="module")
def tiny_judge():
    return TransformersJudge(tiny_text_encoder(), tiny_processor(), name="tiny-qwen2.5-vl", max_new_tokens=6)


def test_random_vlm_reply_is_recorded_as_failed_not_scored(tiny_judge, gedit_copy, tmp_path):
    samples = load_gedit(gedit_copy, languages=["en"], tasks=["color_alter"], allow_partial=True)[:1]
    generate(samples, lambda image, instruction, seed: image.rotate(180), tmp_path / "rot", shard=(0, 1),
             progress=False)
    scores = tmp_path / "scores.jsonl"
    summary = judge_results(samples, tmp_path / "rot", tiny_judge, scores, policy=RetryPolicy(2, 0.0, 0.0),
                            progress=False)
    assert summary.asked == {"failed": 1}
    record = read_scores(scores)[0]
    assert record["judge"] == {"kind": "transformers", "model": "tiny-qwen2.5-vl", "endpoint": "in-process"}
    assert record["sc_scores"] is None and record["pq_scores"] is None
    assert all(a["error"] in ("no score in the reply", "empty reply") for a in record["attempts"]["sc"])
    assert len(record["attempts"]["sc"]) == 2
    assert all(isinstance(a["reply"], str) for a in record["attempts"]["pq"])
    stats = compute_statistics(read_scores(scores))
    assert stats.counts["en"]["full"]["color_alter"] == {"scored": 0, "failed": 1}
    assert "color_alter: -, -, -   (no scored sample)   1 failed" in format_statistics(stats)


def test_greedy_decoding_is_deterministic(tiny_judge):
    images = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (50, 50), (0, 90, 0))]
    first = tiny_judge.complete("Rate these images.", images)
    assert first == tiny_judge.complete("Rate these images.", images)


def test_a_saved_vlm_folder_loads_as_a_judge(tmp_path):
    save_tiny_mllm(tmp_path / "vlm")
    judge = TransformersJudge.from_pretrained(str(tmp_path / "vlm"), device="cpu", max_new_tokens=3)
    assert judge.info["model"] == str(tmp_path / "vlm")
    assert isinstance(judge.complete("Rate this image.", [Image.new("RGB", (56, 56))]), str)
    with pytest.raises(CheckpointError, match="cannot load a judge VLM"):
        TransformersJudge.from_pretrained(str(tmp_path / "absent"), device="cpu")
