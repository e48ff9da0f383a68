"""GEdit-Bench statistics: the official numbers exactly, failures excluded and counted, bootstrap intervals."""

import json
import math

import pytest

from step1x_edit.bench.stats import compute_statistics, format_statistics, read_scores
from step1x_edit.cli import main


@pytest.fixture
def fixture_paths(shared_dir):
    base = f"{shared_dir}/fixtures/gedit"
    return f"{base}/gedit_samples.jsonl", f"{base}/gedit_expected.json"


def assert_scores_equal(actual: dict, expected: dict, tolerance: float = 1e-9) -> None:
    assert actual.keys() == expected.keys()
    for language in expected:
        assert actual[language].keys() == expected[language].keys()
        for subset in expected[language]:
            assert list(actual[language][subset]) == list(expected[language][subset])
            for group, values in expected[language][subset].items():
                assert actual[language][subset][group] == pytest.approx(values, abs=tolerance, rel=0), (language, subset, group)


def test_statistics_reproduce_official_numbers_to_1e9(fixture_paths):
    samples, expected = fixture_paths
    stats = compute_statistics(read_scores(samples))
    assert_scores_equal(stats.scores, json.load(open(expected))["scores"])


def test_cli_stats_json_prints_official_numbers(fixture_paths, capsys):
    samples, expected = fixture_paths
    assert main(["bench", "stats", samples, "--json"]) == 0
    assert_scores_equal(json.loads(capsys.readouterr().out), json.load(open(expected))["scores"])


def test_failed_samples_are_excluded_from_means_and_counted(fixture_paths, tmp_path):
    samples, _ = fixture_paths
    records = [json.loads(line) for line in open(samples)]
    clean = compute_statistics(records, bootstrap=0).scores
    # Five failed English color_alter samples change only that group's counts and means.
    target = [r for r in records if r["instruction_language"] == "en" and r["task_type"] == "color_alter"]
    failed = target[:5]
    for record in failed:
        record.update(status="failed", sc_scores=None)
    stats = compute_statistics(records, bootstrap=0)
    kept = target[5:]
    expected_sc = sum(min(r["sc_scores"]) for r in kept) / len(kept)
    assert stats.scores["en"]["full"]["color_alter"][0] == pytest.approx(expected_sc, abs=1e-12)
    assert stats.counts["en"]["full"]["color_alter"] == {"scored": 35, "failed": 5}
    assert stats.counts["en"]["full"]["total"] == {"scored": 601, "failed": 5}
    assert stats.scores["cn"] == clean["cn"]
    assert "5 failed" in format_statistics(stats)


def test_overall_is_mean_of_per_sample_geometric_means():
    records = [
        {"key": "a", "task_type": "color_alter", "instruction_language": "en", "intersection_exist": True,
         "sc_scores": [9, 4], "pq_scores": [1, 7]},
        {"key": "b", "task_type": "color_alter", "instruction_language": "en", "intersection_exist": False,
         "sc_scores": [1, 8], "pq_scores": [9, 9]},
        {"key": "c", "task_type": "ps_human", "instruction_language": "en", "intersection_exist": True,
         "sc_scores": [6, 6], "pq_scores": [6, 10]},
    ]
    scores = compute_statistics(records, bootstrap=0).scores["en"]
    assert scores["full"]["color_alter"] == pytest.approx([2.5, 5.0, (2 + 3) / 2])
    assert scores["full"]["average"] == pytest.approx([(2.5 + 6) / 2, (5 + 6) / 2, (2.5 + 6) / 2])
    assert scores["intersection"]["color_alter"] == pytest.approx([4, 1, 2])
    assert scores["full"]["color_alter"][2] < math.sqrt(2.5 * 5.0)


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible(fixture_paths):
    samples, _ = fixture_paths
    records = read_scores(samples)
    first = compute_statistics(records, bootstrap=300, seed=1)
    second = compute_statistics(records, bootstrap=300, seed=1)
    assert first.ci95 == second.ci95
    for group, values in first.scores["en"]["full"].items():
        for value, (low, high) in zip(values, first.ci95["en"]["full"][group], strict=True):
            assert low < value < high
    low, high = first.ci95["en"]["full"]["average"][2]
    assert 0.05 < high - low < 1.0  # 606 samples: a few tenths wide


def test_last_record_of_a_sample_wins_and_cut_off_last_line_is_ignored(tmp_path):
    path = tmp_path / "scores.jsonl"
    base = {"key": "a", "task_type": "color_alter", "instruction_language": "en", "intersection_exist": True}
    lines = [
        json.dumps({**base, "status": "failed", "sc_scores": None, "pq_scores": None}),
        json.dumps({**base, "status": "ok", "sc_scores": [4, 5], "pq_scores": [9, 9]}),
    ]
    path.write_text("\n".join(lines) + '\n{"key": "b", "task_')
    records = read_scores(path)
    assert len(records) == 1 and records[0]["status"] == "ok"


def test_cli_stats_prints_official_format_and_errors_cleanly(fixture_paths, tmp_path, capsys):
    samples, _ = fixture_paths
    assert main(["bench", "stats", samples, "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[en] full (606 scored, 0 failed)")
    assert "\nbackground_change: 3.150, 3.475, 2.638   [" in out
    assert "\nAverage: 3.137, 3.045, 2.325   [" in out
    assert main(["bench", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"key": "a"}\n')
    assert main(["bench", "stats", str(tmp_path / "bad.jsonl")]) == 2
    assert "lacks field(s) ['task_type'" in capsys.readouterr().err
