"""VIEScore judging over real HTTP against a local OpenAI-compatible server that misbehaves in every usual way.

Failures (refusals, unparseable replies, persistent server errors) are retried, then recorded as failed with
their raw replies - never scored - and excluded from the means with counts reported; transient problems (slow
replies past the client timeout, 429, 500, a malformed reply) are retried until they succeed.
"""

import base64
import io
import json

import pytest
from PIL import Image

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges.base import JudgeCallError, JudgeUnavailable
from step1x_edit.bench.judges.openai_judge import OpenAIJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.layout import edit_path
from step1x_edit.bench.stats import compute_statistics, read_scores
from step1x_edit.bench.viescore import pq_prompt, prompt_hashes, sc_prompt
from step1x_edit.cli import main

# Behaviour of the judge server for the sample with each id (the id is painted into the edit's red channel).
BEHAVIOURS = ["ok", "repairable", "refused", "unparseable", "slow", "rate_limited", "server_error", "malformed",
              "ok", "ok", "ok", "missing_edit"]
EXPECTED_STATUS = {"ok": "ok", "repairable": "ok", "refused": "failed", "unparseable": "failed", "slow": "ok",
                   "rate_limited": "ok", "server_error": "failed", "malformed": "ok", "missing_edit": "missing_image"}
ATTEMPTS = 3
TIMEOUT = 0.5
FAST_RETRIES = RetryPolicy(attempts=ATTEMPTS, initial_delay=0.01, max_delay=0.02)


def chat_reply(content, refusal=None, finish_reason="stop"):
    message = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [choice]}


def sample_id(request) -> int:
    """The sample id painted into the last image of a request (the edit)."""
    url = request["messages"][0]["content"][-1]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return round(image.convert("RGB").getpixel((image.width // 2, image.height // 2))[0] / 20)


def question(request) -> str:
    return "sc" if len(request["messages"][0]["content"]) == 3 else "pq"


def good_scores(identity: int, kind: str) -> list[int]:
    return [identity % 11, 9] if kind == "sc" else [8, (identity + 3) % 11]


def scripted_reply(request, call):
    identity, kind = sample_id(request), question(request)
    behaviour = BEHAVIOURS[identity]
    good = chat_reply(json.dumps({"score": good_scores(identity, kind), "reasoning": "fine"}))
    if behaviour == "repairable":
        sc, pq = good_scores(identity, kind)
        return chat_reply(f"Here you go.\n||V^=^V||\n{{\nscore: [{sc}, {pq}],\nreasoning: 'ok',\n}}\n||V^=^V||")
    if behaviour == "refused":
        if call % 2:
            return chat_reply(None, finish_reason="content_filter")
        return chat_reply(None, refusal="I'm sorry, I can't help with that.")
    if behaviour == "unparseable":
        return chat_reply("The edit looks nice overall, I would rate it highly.")
    if behaviour == "slow" and call == 0:
        return (*good, 3 * TIMEOUT)
    if behaviour == "rate_limited" and call == 0:
        return 429, {"error": {"message": "Rate limit reached", "type": "rate_limit", "code": "429"}}
    if behaviour == "server_error":
        return 500, {"error": {"message": "internal error", "type": "server_error"}}
    if behaviour == "malformed" and call == 0:
        return chat_reply('{"score": [7, oops')
    return good


def paint_id_editor(ids: dict[str, int]):
    def edit(image, instruction, seed):
        return Image.new("RGB", image.size, (20 * ids[instruction], 100, 150))

    return edit


@pytest.fixture
def edited_bench(gedit_copy, tmp_path):
    """The tiny copy's samples, their edits (painted with the sample id) and the results directory."""
    samples = load_gedit(gedit_copy, allow_partial=True)
    ids = {s.instruction: i for i, s in enumerate(samples)}
    results = tmp_path / "results" / "painter"
    generate(samples, paint_id_editor(ids), results, shard=(0, 1), progress=False)
    edit_path(results, samples[BEHAVIOURS.index("missing_edit")]).unlink()
    return samples, results


def test_failures_are_retried_then_recorded_as_failed_and_excluded(edited_bench, chat_server, tmp_path):
    samples, results = edited_bench
    server = chat_server(scripted_reply, route=lambda r: (sample_id(r), question(r)))
    judge = OpenAIJudge(model="judge-under-test", base_url=server.url, api_key="k", timeout=TIMEOUT, concurrency=4)
    scores_path = tmp_path / "scores.jsonl"
    summary = judge_results(samples, results, judge, scores_path, policy=FAST_RETRIES, progress=False)

    assert summary.asked == {"ok": 8, "failed": 3, "missing_image": 1}
    records = {r["key"] + r["instruction_language"]: r for r in read_scores(scores_path)}
    for identity, sample in enumerate(samples):
        record = records[sample.key + sample.language]
        behaviour = BEHAVIOURS[identity]
        assert record["status"] == EXPECTED_STATUS[behaviour], behaviour
        assert record["judge"] == {"kind": "openai", "model": "judge-under-test", "endpoint": server.url + "/",
                                   "temperature": "0.0"}
        assert record["prompt_sha256"] == prompt_hashes() and record["image_prep"] == "upstream"
        if record["status"] == "ok":
            assert record["sc_scores"] == good_scores(identity, "sc")
            assert record["pq_scores"] == good_scores(identity, "pq")
        if record["status"] == "failed":
            assert record["sc_scores"] is None and len(record["attempts"]["sc"]) == ATTEMPTS
    # Raw replies of failed judgements are kept for inspection.
    unparseable = records[samples[BEHAVIOURS.index("unparseable")].key + samples[3].language]
    assert all("rate it highly" in a["reply"] for a in unparseable["attempts"]["pq"])
    refused = records[samples[2].key + samples[2].language]["attempts"]["sc"]
    assert refused[0]["reply"] == "I'm sorry, I can't help with that." and "content_filter" in refused[1]["error"]
    # Each persistent failure was asked ATTEMPTS times per question; transient ones twice.
    for behaviour, calls in (("server_error", ATTEMPTS), ("refused", ATTEMPTS), ("slow", 2), ("rate_limited", 2),
                             ("malformed", 2), ("ok", 1), ("repairable", 1)):
        identity = BEHAVIOURS.index(behaviour)
        assert server.calls[(identity, "sc")] == server.calls[(identity, "pq")] == calls, behaviour
    assert (BEHAVIOURS.index("missing_edit"), "sc") not in server.calls

    # The requests follow the official GPT judge: text first, then JPEG images; temperature 0.
    sample = samples[0]
    sc_request = next(r for r in server.requests if sample_id(r) == 0 and question(r) == "sc")
    content = sc_request["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": sc_prompt(sample.instruction)}
    assert all(c["image_url"]["url"].startswith("data:image/jpeg;base64,") for c in content[1:])
    assert sc_request["temperature"] == 0.0 and sc_request["model"] == "judge-under-test"
    pq_request = next(r for r in server.requests if sample_id(r) == 0 and question(r) == "pq")
    assert pq_request["messages"][0]["content"][0]["text"] == pq_prompt()

    # Failed and missing samples are excluded from the means and counted.
    stats = compute_statistics(read_scores(scores_path), bootstrap=0)
    failed = sum(c["failed"] for lang in stats.counts.values() for c in [lang["full"]["total"]])
    scored = sum(c["scored"] for lang in stats.counts.values() for c in [lang["full"]["total"]])
    assert (scored, failed) == (8, 4)
    for language in ("en", "cn"):
        for group, (sc, _, _) in stats.scores[language]["full"].items():
            if group == "average":
                continue
            ok = [i for i, s in enumerate(samples) if s.language == language and s.task_type == group
                  and EXPECTED_STATUS[BEHAVIOURS[i]] == "ok"]
            assert sc == pytest.approx(sum(min(good_scores(i, "sc")) for i in ok) / len(ok))


def test_interrupted_run_resumes_asking_only_missing_samples(edited_bench, chat_server, tmp_path):
    every_sample, results = edited_bench
    samples = [s for i, s in enumerate(every_sample) if BEHAVIOURS[i] == "ok"]  # four well-behaved samples
    server = chat_server(scripted_reply, route=lambda r: sample_id(r))
    judge = OpenAIJudge(model="judge-under-test", base_url=server.url, api_key="k", timeout=5, concurrency=1)

    class Interrupting:
        info, max_concurrency = judge.info, 1

        def __init__(self):
            self.calls = 0

        def complete(self, prompt, images):
            self.calls += 1
            if self.calls >= 5:  # Ctrl-C from the third sample's first question on
                raise KeyboardInterrupt
            return judge.complete(prompt, images)

    scores_path = tmp_path / "scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        judge_results(samples, results, Interrupting(), scores_path, policy=FAST_RETRIES, progress=False)
    assert len(read_scores(scores_path)) == 2
    with scores_path.open("a") as handle:
        handle.write('{"key": "half-written')  # a line cut short by the interruption
    asked_before = len(server.requests)

    summary = judge_results(samples, results, judge, scores_path, policy=FAST_RETRIES, progress=False)
    assert summary.asked == {"ok": 2} and summary.skipped == 2
    new_requests = server.requests[asked_before:]
    assert len(new_requests) == 4  # two samples x (SC, PQ)
    assert {sample_id(r) for r in new_requests} == {every_sample.index(s) for s in samples[2:]}
    assert len(read_scores(scores_path)) == 4 and scores_path.read_text().count("\n") == 4

    # A third run has nothing left to ask.
    assert judge_results(samples, results, judge, scores_path, policy=FAST_RETRIES, progress=False).asked == {}
    assert len(server.requests) == asked_before + 4


def test_cli_judges_results_and_reports_failure_counts(edited_bench, chat_server, gedit_copy, tmp_path, capsys):
    _, results = edited_bench
    server = chat_server(scripted_reply, route=lambda r: (sample_id(r), question(r)))
    scores_path = tmp_path / "painter.jsonl"
    argv = ["bench", "judge", "--bench", str(gedit_copy), "--allow-partial", "--results", str(results),
            "--scores", str(scores_path), "--base-url", server.url, "--judge-model", "judge-under-test",
            "--timeout", str(TIMEOUT), "--attempts", str(ATTEMPTS), "--retry-delay", "0.01", "--concurrency", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "judged: 3 failed, 1 missing_image, 8 ok; 0 already in" in out

    assert main(["bench", "stats", str(scores_path), "--json", "--details"]) == 0
    details = json.loads(capsys.readouterr().out)
    totals = [details["counts"][lang]["full"]["total"] for lang in ("en", "cn")]
    assert sum(t["failed"] for t in totals) == 4 and sum(t["scored"] for t in totals) == 8

    assert main(["bench", "report", "--scores", f"painter={scores_path}", "--out", str(tmp_path / "report"),
                 "--bench", str(gedit_copy), "--results-root", str(results.parent), "--allow-partial"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| painter |" in report and "failed" in report
    assert Image.open(tmp_path / "report" / "scores_en.png").size[0] > 400
    assert Image.open(tmp_path / "report" / "examples" / "color_alter.png").size[1] == 2 * (192 + 18)
    assert "<table>" in (tmp_path / "report" / "report.html").read_text()


def test_unreachable_endpoint_is_a_call_error(tmp_path):
    judge = OpenAIJudge(base_url="http://127.0.0.1:9/v1", api_key="k", timeout=0.5)
    with pytest.raises(JudgeCallError, match="Connection"):
        judge.complete("hello", [])


def test_rejected_credentials_stop_the_run_instead_of_failing_every_sample(edited_bench, chat_server, tmp_path):
    samples, results = edited_bench
    server = chat_server(lambda request, call: (401, {"error": {"message": "Incorrect API key provided"}}))
    judge = OpenAIJudge(model="judge-under-test", base_url=server.url, api_key="wrong", concurrency=1)
    with pytest.raises(JudgeUnavailable, match="HTTP 401.*Incorrect API key"):
        judge_results(samples, results, judge, tmp_path / "scores.jsonl", policy=FAST_RETRIES, progress=False)
    assert len(server.requests) == 1
    assert not (tmp_path / "scores.jsonl").exists() or not (tmp_path / "scores.jsonl").read_text()


def test_judge_waits_as_long_as_the_server_asks_after_a_rate_limit(chat_server, monkeypatch):
    from step1x_edit.bench import judging
    from step1x_edit.testing.chat_server import Reply

    server = chat_server(
        lambda request, call: Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.25"})
        if call == 0
        else chat_reply('{"score": [7, 8], "reasoning": "fine"}')
    )
    waits = []
    monkeypatch.setattr(judging.time, "sleep", waits.append)
    judge = OpenAIJudge(model="judge", base_url=server.url, api_key="k", timeout=5)
    policy = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=1.0)
    answer, attempts = judging.ask(judge, "prompt", [Image.new("RGB", (8, 8))], policy)
    assert answer == [7, 8]
    assert len(attempts) == 2 and "429" in attempts[0]["error"]
    assert waits == [0.25]  # the server's Retry-After, not the policy's 0.01 s backoff
