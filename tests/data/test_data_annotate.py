"""The MLLM annotator and verifier against a local OpenAI-compatible server that misbehaves on purpose."""

import json

import pytest

from step1x_edit.data import (
    LocalExecutor,
    Pipeline,
    Store,
    SyntheticConfig,
    generate_dataset,
    summarize,
    transform_store,
)
from step1x_edit.data.annotate.client import AnnotationError, ChatClient, ChatEndpoint, parse_json_reply
from step1x_edit.data.annotate.filters import checks_stage
from step1x_edit.data.annotate.mllm import MLLMAnnotator, MLLMVerifier, verify_stage


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return generate_dataset(
        tmp_path_factory.mktemp("ann") / "s",
        4,
        SyntheticConfig(resolution=(64, 64), shard_size=2),
        LocalExecutor(1),
        progress=False,
    )


def _endpoint(chat_server, **overrides):
    settings = {"timeout": 2.0, "max_retries": 4, "backoff": 0.001}
    settings.update(overrides)
    return ChatEndpoint(chat_server.url, "tiny", "test-key", **settings)


def test_annotator_runs_rounds_that_each_see_the_previous_reply(chat_server, store):
    record = next(store.iter_records())
    annotator = MLLMAnnotator(ChatClient(_endpoint(chat_server)), concurrency=1)
    [annotated] = annotator([record])
    assert (
        annotated["instruction_en"] == "Make the red circle green."
        and annotated["instruction_zh"] == "把红色圆形变成绿色。"
    )
    assert len(chat_server.requests) == 3
    assert (
        len({request["seed"] for request in chat_server.requests}) == 1
    )  # one seed per sample, sent every round
    first_reply = "round 1: a red circle on a blue background"
    assert any(
        m["role"] == "assistant" and m["content"] == first_reply for m in chat_server.requests[1]["messages"]
    )
    final_prompt = chat_server.requests[2]["messages"][-1]["content"]
    assert record["task"] in final_prompt and "- " in final_prompt  # in-context exemplars for the task
    meta = json.loads(annotated["meta"])["annotation"]
    assert meta["status"] == "ok" and meta["previous"]["instruction_en"] == record["instruction_en"]


def test_rate_limits_server_errors_timeouts_and_malformed_replies_are_retried(chat_server, store):
    chat_server.script = [
        ("status", 429),
        ("status", 500),
        ("slow", 3.0),
        ("garbage", "not json at all"),
        ("text", "no json here"),
    ]
    sleeps = []
    client = ChatClient(_endpoint(chat_server, timeout=1.0, max_retries=6), sleep=sleeps.append)
    [verified] = MLLMVerifier(client, concurrency=1)([next(store.iter_records())])
    assert (
        verified["scores"]["mllm_verify"] == 8.0
        and verified["score_reasons"]["mllm_verify"] == "The edit matches."
    )
    assert verified["reject_reasons"] == []
    assert sleeps == sorted(sleeps) and len(sleeps) == 5  # exponential backoff between six attempts


def test_a_reply_that_stays_malformed_is_recorded_without_losing_the_sample(chat_server, store):
    chat_server.script = [("text", '{"score": "eleven"}')] * 3
    record = next(store.iter_records())
    [verified] = MLLMVerifier(ChatClient(_endpoint(chat_server, max_retries=2)), concurrency=1)([record])
    assert verified["sample_id"] == record["sample_id"] and "mllm_verify" not in verified["scores"]
    assert verified["reject_reasons"][0].startswith("mllm_verify_failed")
    chat_server.script = [("text", "still not json")] * 3
    [annotated] = MLLMAnnotator(ChatClient(_endpoint(chat_server, max_retries=0)), concurrency=1)([record])
    assert annotated["instruction_en"] == record["instruction_en"]
    assert json.loads(annotated["meta"])["annotation"]["status"] == "failed"


def test_low_score_becomes_a_reject_reason(chat_server, store):
    chat_server.script = [("text", '{"score": 3, "reason": "the wrong object changed"}')]
    [verified] = MLLMVerifier(ChatClient(_endpoint(chat_server)), min_score=6)([next(store.iter_records())])
    assert verified["scores"]["mllm_verify"] == 3.0
    assert verified["reject_reasons"] == ["mllm_score_low: 3 < 6: the wrong object changed"]


def test_retry_after_header_sets_the_wait(chat_server):
    chat_server.script = [("status", 429, {"Retry-After": "3"}), ("status", 503)]
    sleeps = []
    client = ChatClient(_endpoint(chat_server, max_backoff=60.0), sleep=sleeps.append)
    assert client.complete([{"role": "user", "content": "hi"}]).startswith("round 1")
    assert sleeps == [3.0, 0.002]  # the server's wait, then our own backoff


def test_a_refused_request_fails_fast(chat_server):
    chat_server.script = [("status", 400)]
    client = ChatClient(_endpoint(chat_server))
    with pytest.raises(AnnotationError, match="refused"):
        client.complete([{"role": "user", "content": "hi"}])
    assert len(chat_server.requests) == 1


def test_filter_pipeline_scores_every_sample_into_a_new_store(chat_server, store, tmp_path):
    chat_server.script = [("text", '{"score": 2, "reason": "bad"}')]
    pipeline = Pipeline((checks_stage(), verify_stage(_endpoint(chat_server), min_score=5, concurrency=1)))
    out = transform_store(store.root, tmp_path / "filtered", pipeline, LocalExecutor(1), progress=False)
    summary = summarize(out)
    assert (
        summary["total"] == 4
        and summary["rejected"] == 1
        and summary["reject_reasons"] == {"mllm_score_low": 1}
    )
    assert all("changed_fraction" in r["scores"] and "mllm_verify" in r["scores"] for r in out.iter_records())
    assert out.manifest()["parent"]["config_hash"] == store.config_hash


def test_json_is_found_inside_fences_and_prose():
    assert parse_json_reply('Sure!\n```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_reply('The answer is {"a": 2}.') == {"a": 2}
    with pytest.raises(ValueError):
        parse_json_reply("[1, 2]")


def test_model_stage_in_two_spawned_workers_matches_one_worker(chat_server, store, tmp_path):
    pipeline = Pipeline((verify_stage(_endpoint(chat_server), concurrency=2),))
    one = transform_store(store.root, tmp_path / "one", pipeline, LocalExecutor(1), progress=False)
    two = transform_store(store.root, tmp_path / "two", pipeline, LocalExecutor(2), progress=False)
    assert list(two.iter_records()) == list(one.iter_records())


def test_annotate_and_filter_commands_talk_to_the_endpoint(chat_server, store, tmp_path, capsys):
    from step1x_edit.cli import main

    annotated, filtered = tmp_path / "annotated", tmp_path / "filtered"
    common = [
        "--endpoint",
        chat_server.url,
        "--model",
        "tiny",
        "--workers",
        "1",
        "--quiet",
        "--max-retries",
        "1",
    ]
    assert main(["data", "annotate", str(store.root), "--out", str(annotated), *common]) == 0
    assert {r["instruction_zh"] for r in Store(annotated).iter_records()} == {"把红色圆形变成绿色。"}
    chat_server.script = [("text", '{"score": 1, "reason": "wrong"}')]
    assert main(["data", "filter", str(annotated), "--out", str(filtered), "--min-score", "5", *common]) == 0
    assert "4 samples, 1 rejected" in capsys.readouterr().out
    assert (
        main(
            ["data", "annotate", str(store.root), "--out", str(tmp_path / "x"), "--endpoint", chat_server.url]
        )
        == 2
    )
