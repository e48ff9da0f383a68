"""Resuming and guarding a scores file: what a rerun asks again, and judgements that must not be mixed."""

import json

import pytest
from PIL import Image

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.layout import edit_path
from step1x_edit.bench.stats import read_scores
from step1x_edit.errors import DataFormatError

NO_WAIT = RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0)


class ScriptedJudge:
    """Answers well, except for prompts containing one of ``refuse`` (unreadable replies); records every prompt."""

    max_concurrency = 1

    def __init__(self, model="judge-1", refuse=()):
        self.info = {"kind": "test", "model": model}
        self.refuse = refuse
        self.prompts = []

    def complete(self, prompt, images):
        self.prompts.append(prompt)
        if any(text in prompt for text in self.refuse):
            return "No."
        return '{"score": [5, 6], "reasoning": "ok"}'


@pytest.fixture
def judged(gedit_copy, tmp_path):
    samples = load_gedit(gedit_copy, languages=["en"], allow_partial=True)
    results = tmp_path / "m"
    generate(samples, lambda image, instruction, seed: Image.new("RGB", image.size), results, shard=(0, 1),
             progress=False)
    return samples, results, tmp_path / "scores.jsonl"


def test_failed_samples_are_asked_again_only_on_request(judged):
    samples, results, scores = judged
    first = ScriptedJudge(refuse=[samples[0].instruction])
    assert judge_results(samples, results, first, scores, policy=NO_WAIT, progress=False).asked == {"ok": 5, "failed": 1}
    again = ScriptedJudge()
    assert judge_results(samples, results, again, scores, policy=NO_WAIT, progress=False).asked == {}
    summary = judge_results(samples, results, again, scores, policy=NO_WAIT, retry_failed=True, progress=False)
    assert summary.asked == {"ok": 1} and summary.skipped == 5
    assert samples[0].instruction in again.prompts[0]
    assert all(r["status"] == "ok" for r in read_scores(scores))


def test_missing_edit_is_judged_once_it_appears(judged):
    samples, results, scores = judged
    path = edit_path(results, samples[2])
    edit = Image.open(path).copy()
    path.unlink()
    judge = ScriptedJudge()
    assert judge_results(samples, results, judge, scores, policy=NO_WAIT, progress=False).asked == {
        "ok": 5, "missing_image": 1}
    edit.save(path)
    assert judge_results(samples, results, judge, scores, policy=NO_WAIT, progress=False).asked == {"ok": 1}
    statuses = [json.loads(line)["status"] for line in scores.read_text().splitlines()]
    assert statuses.count("missing_image") == 1 and len(read_scores(scores)) == 6


def test_judgements_by_another_judge_or_preparation_are_not_mixed(judged):
    samples, results, scores = judged
    judge_results(samples[:3], results, ScriptedJudge("judge-1"), scores, policy=NO_WAIT, progress=False)
    with pytest.raises(DataFormatError, match="judge-1.*refusing to add judgements by judge-2"):
        judge_results(samples, results, ScriptedJudge("judge-2"), scores, policy=NO_WAIT, progress=False)
    with pytest.raises(DataFormatError, match="image prep upstream"):
        judge_results(samples, results, ScriptedJudge("judge-1"), scores, image_prep="snapshot", policy=NO_WAIT,
                      progress=False)


def test_unreadable_edit_stops_with_its_path(judged):
    samples, results, scores = judged
    edit_path(results, samples[1]).write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match=f"edited image .*{samples[1].key}.png cannot be read"):
        judge_results(samples, results, ScriptedJudge(), scores, policy=NO_WAIT, progress=False)
    assert len(read_scores(scores)) == 1  # the sample before it was kept
