"""The MLLM annotator and verifier against a local OpenAI-compatible server that misbehaves on purpose."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from step1x_edit.data import (
    LocalExecutor,
    Pipeline,
    SyntheticConfig,
    generate_dataset,
    summarize,
    transform_store,
)
from step1x_edit.data.annotate.client import AnnotationError, ChatClient, ChatEndpoint, parse_json_reply
from step1x_edit.data.annotate.filters import checks_stage
from step1x_edit.data.annotate.mllm import MLLMAnnotator, MLLMVerifier, verify_stage


def _completion(content):
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "tiny",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _default_reply(messages):
    last = messages[-1]["content"]
    text = (
        last
        if isinstance(last, str)
        else " ".join(part.get("text", "") for part in last if part["type"] == "text")
    )
    if "instruction_en" in text:
        return json.dumps(
            {"instruction_en": "Make the red circle green.", "instruction_zh": "把红色圆形变成绿色。"}
        )
    if '"score"' in text:
        return '```json\n{"score": 8, "reason": "The edit matches."}\n```'
    return f"round {sum(m['role'] == 'assistant' for m in messages) + 1}: a red circle on a blue background"


class ScriptedServer:
    """Replies from ``script`` first (``("status", 429)``, ``("slow", seconds)``, ``("text", content)``,
    ``("garbage", body)``), then well-formed answers."""

    def __init__(self):
        self.script = []
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                action = server.script.pop(0) if server.script else ("default", None)
                if action[0] == "status":
                    self._send(
                        action[1], json.dumps({"error": {"message": "busy", "type": "server"}}).encode()
                    )
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                    content = _default_reply(body["messages"])
                elif action[0] == "garbage":
                    self._send(200, action[1].encode())
                    return
                elif action[0] == "text":
                    content = action[1]
                else:
                    content = _default_reply(body["messages"])
                self._send(200, json.dumps(_completion(content)).encode())

            def _send(self, status, payload):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    instance = ScriptedServer()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return generate_dataset(
        tmp_path_factory.mktemp("ann") / "s",
        4,
        SyntheticConfig(resolution=(64, 64), shard_size=2),
        LocalExecutor(1),
        progress=False,
    )


def _endpoint(server, **overrides):
    settings = {"timeout": 2.0, "max_retries": 4, "backoff": 0.001}
    settings.update(overrides)
    return ChatEndpoint(server.url, "tiny", "test-key", **settings)


def test_annotator_runs_rounds_that_each_see_the_previous_reply(server, store):
    record = next(store.iter_records())
    annotator = MLLMAnnotator(ChatClient(_endpoint(server)), concurrency=1)
    [annotated] = annotator([record])
    assert (
        annotated["instruction_en"] == "Make the red circle green."
        and annotated["instruction_zh"] == "把红色圆形变成绿色。"
    )
    assert len(server.requests) == 3
    assert len({request["seed"] for request in server.requests}) == 1  # one seed per sample, sent every round
    first_reply = "round 1: a red circle on a blue background"
    assert any(
        m["role"] == "assistant" and m["content"] == first_reply for m in server.requests[1]["messages"]
    )
    final_prompt = server.requests[2]["messages"][-1]["content"]
    assert record["task"] in final_prompt and "- " in final_prompt  # in-context exemplars for the task
    meta = json.loads(annotated["meta"])["annotation"]
    assert meta["status"] == "ok" and meta["previous"]["instruction_en"] == record["instruction_en"]


def test_rate_limits_server_errors_timeouts_and_malformed_replies_are_retried(server, store):
    server.script = [
        ("status", 429),
        ("status", 500),
        ("slow", 1.5),
        ("garbage", "not json at all"),
        ("text", "no json here"),
    ]
    sleeps = []
    client = ChatClient(_endpoint(server, timeout=0.5, max_retries=6), sleep=sleeps.append)
    [verified] = MLLMVerifier(client, concurrency=1)([next(store.iter_records())])
    assert (
        verified["scores"]["mllm_verify"] == 8.0
        and verified["score_reasons"]["mllm_verify"] == "The edit matches."
    )
    assert verified["reject_reasons"] == []
    assert sleeps == sorted(sleeps) and len(sleeps) == 5  # exponential backoff between six attempts


def test_a_reply_that_stays_malformed_is_recorded_without_losing_the_sample(server, store):
    server.script = [("text", '{"score": "eleven"}')] * 3
    record = next(store.iter_records())
    [verified] = MLLMVerifier(ChatClient(_endpoint(server, max_retries=2)), concurrency=1)([record])
    assert verified["sample_id"] == record["sample_id"] and "mllm_verify" not in verified["scores"]
    assert verified["reject_reasons"][0].startswith("mllm_verify_failed")
    server.script = [("text", "still not json")] * 3
    [annotated] = MLLMAnnotator(ChatClient(_endpoint(server, max_retries=0)), concurrency=1)([record])
    assert annotated["instruction_en"] == record["instruction_en"]
    assert json.loads(annotated["meta"])["annotation"]["status"] == "failed"


def test_low_score_becomes_a_reject_reason(server, store):
    server.script = [("text", '{"score": 3, "reason": "the wrong object changed"}')]
    [verified] = MLLMVerifier(ChatClient(_endpoint(server)), min_score=6)([next(store.iter_records())])
    assert verified["scores"]["mllm_verify"] == 3.0
    assert verified["reject_reasons"] == ["mllm_score_low: 3 < 6: the wrong object changed"]


def test_a_refused_request_fails_fast(server):
    server.script = [("status", 400)]
    client = ChatClient(_endpoint(server))
    with pytest.raises(AnnotationError, match="refused"):
        client.complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_filter_pipeline_scores_every_sample_into_a_new_store(server, store, tmp_path):
    server.script = [("text", '{"score": 2, "reason": "bad"}')]
    pipeline = Pipeline((checks_stage(), verify_stage(_endpoint(server), min_score=5, concurrency=1)))
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


def test_model_stage_in_two_spawned_workers_matches_one_worker(server, store, tmp_path):
    pipeline = Pipeline((verify_stage(_endpoint(server), concurrency=2),))
    one = transform_store(store.root, tmp_path / "one", pipeline, LocalExecutor(1), progress=False)
    two = transform_store(store.root, tmp_path / "two", pipeline, LocalExecutor(2), progress=False)
    assert list(two.iter_records()) == list(one.iter_records())
