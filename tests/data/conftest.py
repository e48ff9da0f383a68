"""Shared fixtures of the data tests: a local OpenAI-compatible chat server that misbehaves on request."""

import json

import pytest

from step1x_edit.testing.chat_server import ChatServer, Reply, completion, error_body


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


def _well_formed(request, call=0, delay=0.0):
    return Reply(body=completion(_default_reply(request["messages"])), delay=delay)


def _scripted(action):
    kind, *args = action
    if kind == "status":
        return Reply(args[0], error_body("busy", "server"), headers=args[1] if len(args) > 1 else {})
    if kind == "slow":
        return lambda request, call: _well_formed(request, delay=args[0])
    if kind == "garbage":
        return Reply(raw=args[0].encode())
    if kind == "text":
        return Reply(body=completion(args[0]))
    raise ValueError(f"unknown scripted action {action!r}")


class ScriptedServer(ChatServer):
    """Replies from ``script`` first (``("status", 429)`` or ``("status", 429, {header: value})``,
    ``("slow", seconds)``, ``("text", content)``, ``("garbage", body)``), then well-formed answers."""

    def __init__(self):
        super().__init__(_well_formed)

    @property
    def script(self):
        return list(self.queue)

    @script.setter
    def script(self, actions):
        with self.lock:
            self.queue.clear()
            self.queue.extend(map(_scripted, actions))


@pytest.fixture
def chat_server():
    with ScriptedServer() as instance:
        yield instance
