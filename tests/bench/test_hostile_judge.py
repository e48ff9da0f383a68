"""A judge endpoint that answers badly in every way a hostile or broken server can: each bad reply is retried, then
the sample is recorded as failed with the reason - the run never crashes, never scores 0 and never guesses.

Every case runs ``step1x-edit bench judge`` (or ``bench pairwise``) end to end against the fake chat server on
loopback, serving that one kind of bad reply to every request.
"""

import json
import re

import pytest
import torch
from PIL import Image

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges import openai_judge
from step1x_edit.bench.judges.transformers_judge import TransformersJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.stats import read_scores
from step1x_edit.cli import main
from step1x_edit.testing.chat_server import Reply, completion, error_body

GOOD = '{"score": [7, 8], "reasoning": "fine"}'
TIMEOUT = 0.3
REPLY_LIMIT = 64 * 1024  # MAX_REPLY_BYTES during these tests


def with_choices(choices) -> dict:
    return {**completion(GOOD), "choices": choices}


def with_message(message: dict, finish_reason: str = "stop") -> dict:
    return with_choices([{"index": 0, "message": message, "finish_reason": finish_reason}])


# kind -> (what the server sends to every request, the reason recorded for every attempt)
BAD_REPLIES = {
    "html_body": (Reply(raw=b"<html><body>502 Bad Gateway</body></html>"), "the response is not JSON"),
    "empty_body": (Reply(raw=b""), "the response is not JSON"),
    "truncated_json": (Reply(raw=json.dumps(completion(GOOD)).encode()[:60]), "the response is not JSON"),
    "binary_garbage": (Reply(raw=bytes(range(256)) * 4), "the response is not JSON"),
    "deeply_nested_json": (Reply(raw=b"[" * 20_000 + b"]" * 20_000), "the response is not JSON"),
    "huge_integer": (Reply(raw=b'{"choices": ' + b"9" * 5000 + b"}"), "the response is not JSON"),
    "connection_cut_mid_body": (Reply(body=completion(GOOD), cut_after=30), "peer closed connection"),
    "oversized_body": (Reply(body=completion(GOOD + " " * REPLY_LIMIT)), f"larger than {REPLY_LIMIT} bytes"),
    "json_array": (Reply(body=[completion(GOOD)]), "the response has no choices"),
    "json_string": (Reply(body="hello"), "the response has no choices"),
    "error_object_with_200": (Reply(body=error_body("overloaded")), "the response has no choices"),
    "choices_empty": (Reply(body=with_choices([])), "the response has no choices"),
    "choices_null": (Reply(body=with_choices(None)), "the response has no choices"),
    "choice_not_object": (Reply(body=with_choices(["7, 8"])), "the response has no choices"),
    "message_missing": (Reply(body=with_choices([{"index": 0, "finish_reason": "stop"}])), "has no message"),
    "message_not_object": (Reply(body=with_choices([{"index": 0, "message": GOOD}])), "has no message"),
    "content_null": (Reply(body=completion(None)), r"empty reply \(finish_reason=stop\)"),
    "content_missing": (Reply(body=with_message({"role": "assistant"})), "empty reply"),
    "content_number": (Reply(body=completion(7)), "the reply's content is int, not text"),
    "content_list": (Reply(body=completion([{"type": "text", "text": GOOD}])), "content is list, not text"),
    "content_object": (Reply(body=completion({"score": [7, 8]})), "content is dict, not text"),
    "refusal": (Reply(body=with_message({"role": "assistant", "content": None, "refusal": "I can't."})),
                "judge refused"),
    "content_filter": (Reply(body=completion(None, finish_reason="content_filter")),
                       r"judge refused \(finish_reason=content_filter\)"),
    "prose": (Reply(body=completion("The edit looks great, I'd say high marks.")), "no score in the reply"),
    "no_score_key": (Reply(body=completion('{"reasoning": "fine"}')), 'no "score"'),
    "score_null": (Reply(body=completion('{"score": null}')), r"score\[0\] must be a number from 0 to 10, got None"),
    "score_11": (Reply(body=completion('{"score": [11, 8]}')), r"score\[0\] .* got 11"),
    "score_negative": (Reply(body=completion('{"score": [7, -1]}')), r"score\[1\] .* got -1"),
    "score_1e308": (Reply(body=completion('{"score": [1e308, 8]}')), r"score\[0\] .* got 1e\+308"),
    "score_nan": (Reply(body=completion('{"score": [NaN, 8]}')), r"score\[0\] .* got nan"),
    "score_string": (Reply(body=completion('{"score": ["7", "8"]}')), r"score\[0\] .* got '7'"),
    "score_bool": (Reply(body=completion('{"score": [true, 8]}')), r"score\[0\] .* got True"),
    "score_empty_list": (Reply(body=completion('{"score": []}')), "must be a list of 1 to 2 scores"),
    "score_too_many": (Reply(body=completion('{"score": [7, 8, 9]}')), "must be a list of 1 to 2 scores"),
    "score_huge_integer": (Reply(body=completion('{"score": [' + "9" * 5000 + "]}")), "JSON cannot be read"),
    "http_500_not_json": (Reply(500, raw=b"<html>oops</html>"), "HTTP 500"),
    "http_500_lone_surrogate": (Reply(500, raw=b'{"error": {"message": "bad \\udc80 news"}}'), "HTTP 500"),
    "too_slow": (Reply(body=completion(GOOD), delay=6 * TIMEOUT), "Timeout|timed out"),
    "trickled_past_timeout": (Reply(body=completion(GOOD), trickle=0.02), f"longer than the {TIMEOUT} s timeout"),
}


@pytest.fixture(autouse=True)
def small_reply_limit(monkeypatch):
    monkeypatch.setattr(openai_judge, "MAX_REPLY_BYTES", REPLY_LIMIT)


@pytest.fixture
def one_sample(make_gedit_copy, make_gedit_rows, tmp_path):
    """A one-sample benchmark copy and a results directory holding its edit: (bench, results)."""
    bench = tmp_path / "GEdit-Bench"
    make_gedit_copy(bench, make_gedit_rows(keys_per_task=1, tasks=("color_alter",), languages=("en",)))
    results = tmp_path / "results" / "flipper"
    samples = load_gedit(bench, allow_partial=True)
    generate(samples, lambda image, instruction, seed: image.transpose(Image.FLIP_LEFT_RIGHT), results, shard=(0, 1),
             progress=False)
    return bench, results


def judge_argv(bench, results, scores, server) -> list[str]:
    return ["bench", "judge", "--bench", str(bench), "--allow-partial", "--results", str(results), "--scores",
            str(scores), "--base-url", server.url, "--judge-model", "judge", "--timeout", str(TIMEOUT),
            "--attempts", "2", "--retry-delay", "0"]


@pytest.mark.parametrize("kind", BAD_REPLIES)
def test_a_bad_judge_reply_is_retried_then_recorded_as_failed_with_the_reason(kind, one_sample, chat_server, tmp_path,
                                                                             capsys):
    bench, results = one_sample
    reply, reason = BAD_REPLIES[kind]
    server = chat_server(lambda request, call: reply)
    scores = tmp_path / "scores.jsonl"
    assert main(judge_argv(bench, results, scores, server)) == 0
    captured = capsys.readouterr()
    assert "judged: 1 failed; 0 already in" in captured.out and "Traceback" not in captured.err
    assert len(server.requests) == 4  # (SC, PQ) x 2 attempts
    (record,) = read_scores(scores)
    assert record["status"] == "failed" and record["sc_scores"] is None and record["pq_scores"] is None
    for question in ("sc", "pq"):
        errors = [attempt["error"] for attempt in record["attempts"][question]]
        assert len(errors) == 2 and all(re.search(reason, error) for error in errors), errors
    # The scores file stays readable: the failure is counted, nothing is averaged.
    assert main(["bench", "stats", str(scores), "--json", "--details"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["counts"]["en"]["full"]["total"] == {"scored": 0, "failed": 1}
    assert details["scores"]["en"]["full"] == {}


def test_a_bad_reply_followed_by_a_good_one_is_scored(one_sample, chat_server, tmp_path, capsys):
    bench, results = one_sample
    queue = [BAD_REPLIES["html_body"][0], Reply(body=completion(GOOD)), BAD_REPLIES["score_string"][0],
             Reply(body=completion('{"score": [9, 6]}'))]
    server = chat_server(None)
    server.queue.extend(queue)
    scores = tmp_path / "scores.jsonl"
    assert main(judge_argv(bench, results, scores, server)) == 0
    assert "judged: 1 ok" in capsys.readouterr().out
    (record,) = read_scores(scores)
    assert (record["status"], record["sc_scores"], record["pq_scores"]) == ("ok", [7, 8], [9, 6])
    assert [a["error"] is None for a in record["attempts"]["sc"]] == [False, True]
    assert "'7'" in record["attempts"]["pq"][0]["error"]


def test_a_reply_with_a_lone_surrogate_is_written_and_read_back(one_sample, chat_server, tmp_path, capsys):
    bench, results = one_sample
    content = '{"score": [7, 8], "reasoning": "odd \udc80 text"}'  # sent as a JSON escape; no UTF-8 holds it raw
    server = chat_server(lambda request, call: Reply(body=completion(content)))
    scores = tmp_path / "scores.jsonl"
    assert main(judge_argv(bench, results, scores, server)) == 0
    assert "judged: 1 ok" in capsys.readouterr().out
    scores.read_bytes().decode("utf-8")  # the file is valid UTF-8
    (record,) = read_scores(scores)
    assert record["status"] == "ok" and "\udc80" in record["attempts"]["sc"][0]["reply"]


@pytest.mark.parametrize("kind", ["html_body", "content_null", "content_number", "prose", "connection_cut_mid_body"])
def test_pairwise_judging_records_a_bad_reply_as_failed(kind, one_sample, chat_server, tmp_path, capsys):
    bench, results = one_sample
    other = results.parent / "copy"
    samples = load_gedit(bench, allow_partial=True)
    generate(samples, lambda image, instruction, seed: image, other, shard=(0, 1), progress=False)
    reply, reason = BAD_REPLIES[kind]
    if kind == "prose":
        reason = "no winner"
    server = chat_server(lambda request, call: reply)
    out = tmp_path / "pairs.jsonl"
    argv = ["bench", "pairwise", "--bench", str(bench), "--allow-partial", "--results", str(results), str(other),
            "--out", str(out), "--base-url", server.url, "--judge-model", "m", "--timeout", str(TIMEOUT),
            "--attempts", "2", "--retry-delay", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "0 games, 1 failed judgements" in captured.out and "Traceback" not in captured.err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "failed"
    assert all(g["winner"] is None and len(g["attempts"]) == 2 for g in record["games"])
    assert all(re.search(reason, a["error"]) for g in record["games"] for a in g["attempts"])


class _Inputs(dict):
    def to(self, device):
        return self


class ScriptedVLM:
    """A stand-in for a transformers VLM and its processor whose generated text is ``reply``."""

    device = "cpu"

    def __init__(self, reply: str):
        self.reply = reply

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "prompt"

    def __call__(self, text, images, return_tensors):
        return _Inputs(input_ids=torch.zeros((1, 3), dtype=torch.long))

    def generate(self, input_ids, do_sample, max_new_tokens):
        return torch.zeros((1, 5), dtype=torch.long)

    def batch_decode(self, tokens, skip_special_tokens):
        return [self.reply]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [('{"score": [11, 5]}', r"score\[0\] .* got 11"), ('{"score": ["7", "8"]}', r"got '7'"),
     ('{"score": [NaN, 5]}', "got nan"), ("", "empty reply"), ("no idea", "no score in the reply")],
)
def test_the_transformers_judge_refuses_bad_scores_like_the_http_judge(reply, reason, one_sample, tmp_path):
    bench, results = one_sample
    vlm = ScriptedVLM(reply)
    judge = TransformersJudge(vlm, vlm, name="scripted")
    scores = tmp_path / "scores.jsonl"
    summary = judge_results(load_gedit(bench, allow_partial=True), results, judge, scores,
                            policy=RetryPolicy(attempts=2, initial_delay=0.0), progress=False)
    assert summary.asked == {"failed": 1}
    (record,) = read_scores(scores)
    assert all(re.search(reason, a["error"]) for q in ("sc", "pq") for a in record["attempts"][q])
