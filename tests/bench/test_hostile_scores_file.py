"""Scores and pairwise files with values no judge could have written: ``bench stats``, ``bench report`` and resumed
judging refuse them with one line naming the file, the line and the field - never a traceback and never a silently
wrong average."""

import json

import pytest

from step1x_edit.bench.judges.openai_judge import OpenAIJudge
from step1x_edit.bench.judging import judge_results
from step1x_edit.bench.pairwise import read_pairwise
from step1x_edit.bench.stats import read_scores
from step1x_edit.cli import main
from step1x_edit.errors import DataFormatError

GOOD = {"key": "a", "task_type": "color_alter", "instruction_language": "en", "intersection_exist": True,
        "sc_scores": [7, 8], "pq_scores": [9, 6], "status": "ok"}


def line(**changes) -> bytes:
    record = {**GOOD, "key": "b", **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode() + b"\n"


# kind -> (the second line of the file, what the error names)
BAD_LINES = {
    "string_score": (line(sc_scores=["7", 8]), r"sc_scores\[0\] must be a number from 0 to 10, got '7'"),
    "score_1e308": (line(pq_scores=[1e308, 8]), r"pq_scores\[0\] .* got 1e\+308"),
    "score_nan": (b'{"key": "b", "task_type": "color_alter", "instruction_language": "en", "intersection_exist": true, '
                  b'"sc_scores": [NaN, 8], "pq_scores": [9, 6]}\n', r"sc_scores\[0\] .* got nan"),
    "score_infinity": (line(sc_scores=[7, float("inf")]), r"sc_scores\[1\] .* got inf"),
    "score_11": (line(sc_scores=[11, 8]), r"sc_scores\[0\] .* got 11"),
    "score_negative": (line(pq_scores=[9, -0.5]), r"pq_scores\[1\] .* got -0.5"),
    "score_bool": (line(sc_scores=[True, 8]), r"sc_scores\[0\] .* got True"),
    "score_huge_integer": (line(sc_scores=[10**4000, 8]), r"sc_scores\[0\] .* got 10000*\.\.\.$"),
    "score_too_long_to_read": (line(sc_scores=[7, 8]).replace(b"[7, 8]", b"[" + b"9" * 5000 + b"]"),
                               "not a JSON object.*digits"),
    "scores_a_string": (line(sc_scores="7, 8"), "sc_scores must be a list of 1 to 2 scores, got '7, 8'"),
    "scores_empty": (line(pq_scores=[]), "pq_scores must be a list of 1 to 2 scores"),
    "scores_missing_though_ok": (line(pq_scores=...), "pq_scores must be a list of 1 to 2 scores, got None"),
    "failed_with_a_bad_score": (line(status="failed", sc_scores=[12, 3], pq_scores=None), r"sc_scores\[0\] .* got 12"),
    "unknown_status": (line(status="great"), "status must be one of ok, failed, missing_image, got 'great'"),
    "intersection_a_string": (line(intersection_exist="false"), "intersection_exist must be true or false"),
    "key_a_number": (line(key=7), "key must be a string, got 7"),
    "language_null": (line(instruction_language=None), "instruction_language must be a string, got None"),
    "missing_field": (line(task_type=...), r"lacks field\(s\) \['task_type'\]"),
    "judge_a_string": (line(judge="gpt"), "judge must be an object, got 'gpt'"),
    "json_array": (b"[1, 2, 3]\n", "the line holds a JSON list, not an object"),
    "json_number": (b"7\n", "the line holds a JSON int, not an object"),
    "malformed_json": (b'{"key": "b", "sc_scores": [7, \n', "not a JSON object"),
    "binary_garbage": (bytes(range(128, 256)) + b"\n", "not a JSON object.*utf-8"),
    "deeply_nested": (b"[" * 50_000 + b"]" * 50_000 + b"\n", "not a JSON object"),
}


def scores_file(tmp_path, second_line: bytes):
    path = tmp_path / "scores.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + second_line + json.dumps({**GOOD, "key": "c"}).encode() + b"\n")
    return path


@pytest.mark.parametrize("kind", BAD_LINES)
def test_bench_stats_refuses_a_bad_line_naming_it(kind, tmp_path, capsys):
    bad, message = BAD_LINES[kind]
    path = scores_file(tmp_path, bad)
    assert main(["bench", "stats", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"step1x-edit bench: error: {path}:2: ")
    with pytest.raises(DataFormatError, match=message):
        read_scores(path)


@pytest.mark.parametrize("kind", ["string_score", "score_nan", "binary_garbage"])
def test_bench_report_and_resumed_judging_refuse_a_bad_line(kind, tmp_path, capsys):
    path = scores_file(tmp_path, BAD_LINES[kind][0])
    assert main(["bench", "report", "--scores", f"m={path}", "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: " in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "report" / "report.md").exists()
    with pytest.raises(DataFormatError, match="scores.jsonl:2: "):
        judge_results([], tmp_path, OpenAIJudge(base_url="http://127.0.0.1:9/v1", api_key="k"), path)


def test_well_formed_values_at_the_edges_are_read(tmp_path, capsys):
    edges = [line(key="b", sc_scores=[0, 10.0], pq_scores=[2.5]),
             line(key="c", status="failed", sc_scores=None, pq_scores=[3, 4]),
             line(key="d", status="missing_image", sc_scores=None, pq_scores=None, judge={"model": "x"})]
    path = tmp_path / "scores.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b"".join(edges))
    assert main(["bench", "stats", str(path), "--json", "--details"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["counts"]["en"]["full"]["total"] == {"scored": 2, "failed": 2}
    assert details["scores"]["en"]["full"]["color_alter"][:2] == [(7 + 0) / 2, (6 + 2.5) / 2]


PAIR = {"key": "a", "task_type": "color_alter", "instruction_language": "en", "models": ["m1", "m2"], "status": "ok",
        "games": [{"a": "m1", "b": "m2", "winner": "A"}, {"a": "m2", "b": "m1", "winner": "tie"}]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"models": "m1"}, "models must be a list of two names"), ({"models": [["m1"], "m2"]}, "models must be"),
     ({"status": None}, "status must be one of ok, failed"), ({"key": None}, "key must be a string"),
     ({"games": {"a": 1}}, "games must be a list"),
     ({"games": [{"a": "m1", "b": "m2", "winner": "C"}]}, r"games\[0\].winner must be A, B or tie, got 'C'"),
     ({"games": [{"a": "m1", "b": "m2", "winner": None}]}, r"games\[0\].winner .* got None"),
     ({"games": ["A"]}, r"games\[0\] must name the models")],
)
def test_a_bad_pairwise_line_is_refused_naming_it(changes, message, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, **changes}) + "\n")
    with pytest.raises(DataFormatError, match=f"pairs.jsonl:2: {message}"):
        read_pairwise(path)


def test_a_pairwise_file_of_binary_garbage_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(DataFormatError, match="pairs.jsonl:1: not a JSON object"):
        read_pairwise(path)
