"""Pairwise judging: both orders asked, position bias cancels, win rates and Bradley-Terry (Elo-scale) ranking."""

import json

import numpy as np
import pytest
from PIL import Image

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges.base import UnusableReply
from step1x_edit.bench.judging import RetryPolicy
from step1x_edit.bench.pairwise import (
    bradley_terry,
    judge_pairwise,
    pairwise_summary,
    parse_winner,
    read_pairwise,
)
from step1x_edit.cli import main

FAST = RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0)


class BrightnessJudge:
    """Prefers the brighter edit; with ``always_first`` it has total position bias and always answers A."""

    info = {"kind": "test", "model": "brightness"}
    max_concurrency = 2

    def __init__(self, always_first=False, unreadable_keys=()):
        self.always_first = always_first
        self.unreadable_keys = unreadable_keys
        self.calls = 0

    def complete(self, prompt, images):
        self.calls += 1
        if any(key in prompt for key in self.unreadable_keys):
            return "Both are lovely."
        a, b = (float(np.asarray(image).mean()) for image in images[1:])
        winner = "A" if self.always_first or a > b else "B" if b > a else "tie"
        return json.dumps({"winner": winner, "reasoning": "brightness"})


@pytest.fixture
def three_models(gedit_copy, tmp_path):
    samples = load_gedit(gedit_copy, languages=["en"], allow_partial=True)
    results = {}
    for name, level in (("bright", 220), ("medium", 128), ("dark", 30)):
        results[name] = tmp_path / name
        generate(samples, lambda image, instruction, seed, v=level: Image.new("RGB", image.size, (v, v, v)),
                 results[name], shard=(0, 1), progress=False)
    return samples, results


def test_ranking_follows_judge_preference_and_both_orders_are_asked(three_models, tmp_path):
    samples, results = three_models
    judge = BrightnessJudge()
    out = tmp_path / "pairs.jsonl"
    assert judge_pairwise(samples, results, judge, out, policy=FAST, progress=False) == {"ok": 18}
    assert judge.calls == 6 * 3 * 2  # samples x pairs x orders
    records = read_pairwise(out)
    # Each record holds the pair in both orders: (first as A, second as B), then swapped.
    orders = {tuple((g["a"], g["b"]) for g in r["games"]) for r in records}
    assert orders == {((a, b), (b, a)) for a, b in (("bright", "dark"), ("bright", "medium"), ("dark", "medium"))}
    summary = pairwise_summary(records)
    assert list(summary["ratings"]) == ["bright", "medium", "dark"]
    assert summary["win_rates"]["bright"]["dark"] == 1.0 and summary["win_rates"]["dark"]["medium"] == 0.0
    assert summary["games"] == 36 and summary["failed"] == 0
    assert sum(summary["ratings"].values()) / 3 == pytest.approx(1000.0)
    # Resuming asks nothing new.
    assert judge_pairwise(samples, results, judge, out, policy=FAST, progress=False) == {}


def test_position_bias_cancels_out(three_models, tmp_path):
    samples, results = three_models
    out = tmp_path / "pairs.jsonl"
    judge_pairwise(samples, results, BrightnessJudge(always_first=True), out, policy=FAST, progress=False)
    summary = pairwise_summary(read_pairwise(out))
    assert all(rate == 0.5 for rates in summary["win_rates"].values() for rate in rates.values())
    assert all(rating == pytest.approx(1000.0) for rating in summary["ratings"].values())


def test_unreadable_verdicts_are_recorded_as_failed_and_left_out(three_models, tmp_path):
    samples, results = three_models
    out = tmp_path / "pairs.jsonl"
    key = samples[0].instruction
    judge_pairwise(samples, results, BrightnessJudge(unreadable_keys=[key]), out, policy=FAST, progress=False)
    records = read_pairwise(out)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["key"] == samples[0].key for r in failed)
    assert failed[0]["games"][0]["attempts"][0] == {"reply": "Both are lovely.",
                                                    "error": "no winner (A, B or tie) in the reply"}
    assert pairwise_summary(records)["games"] == 30


def test_bradley_terry_recovers_known_strengths():
    rng = np.random.default_rng(0)
    true = {"a": 400.0, "b": 0.0, "c": -200.0}
    games = []
    for first, second in (("a", "b"), ("a", "c"), ("b", "c")):
        p = 1 / (1 + 10 ** ((true[second] - true[first]) / 400))
        games += [(first, second, float(rng.random() < p)) for _ in range(3000)]
    ratings = bradley_terry(games, prior_games=0.0)
    assert ratings["a"] - ratings["b"] == pytest.approx(400, abs=30)
    assert ratings["b"] - ratings["c"] == pytest.approx(200, abs=30)


@pytest.mark.parametrize(
    ("reply", "winner"),
    [('{"winner": "B", "reasoning": "x"}', "B"), ('{"winner": "Tie"}', "tie"), ("winner: a\nbecause", "A")],
)
def test_winner_parsing(reply, winner):
    assert parse_winner(reply) == winner


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("I cannot decide.", "no winner"), (None, "empty reply"), ("  ", "empty reply"), ('{"winner": "C"}', "no winner"),
     ('{"winner": 1}', "no winner"), ("[" * 5000 + "{" + "}", "no winner"), ('{"winner": ' + "9" * 5000 + "}", "no winner")],
)
def test_a_reply_without_a_winner_is_unusable_with_a_reason(reply, reason):
    with pytest.raises(UnusableReply, match=reason):
        parse_winner(reply)


def test_cli_pairwise_over_http_reports_ratings(three_models, gedit_copy, chat_server, tmp_path, capsys):
    _, results = three_models
    reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": '{"winner": "A"}'}}]}
    server = chat_server(lambda request, call: (200, reply))
    argv = ["bench", "pairwise", "--bench", str(gedit_copy), "--allow-partial", "--lang", "en", "--tasks",
            "color_alter", "--results", str(results["bright"]), str(results["dark"]), "--out",
            str(tmp_path / "pairs.jsonl"), "--base-url", server.url, "--judge-model", "m", "--retry-delay", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 games, 0 failed judgements" in out
    assert "bright: Elo 1000  (50% vs dark)" in out
    assert len(server.requests) == 4
    assert [c["type"] for c in server.requests[0]["messages"][0]["content"]] == ["text"] + ["image_url"] * 3
