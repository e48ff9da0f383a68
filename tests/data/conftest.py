"""Shared fixtures of the data tests: a local OpenAI-compatible chat server that misbehaves on request."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


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
    """Replies from ``script`` first (``("status", 429)`` or ``("status", 429, {header: value})``, ``("slow", seconds)``, ``("text", content)``,
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
                    error = json.dumps({"error": {"message": "busy", "type": "server"}}).encode()
                    self._send(action[1], error, *action[2:])
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

            def _send(self, status, payload, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
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
def chat_server():
    instance = ScriptedServer()
    yield instance
    instance.close()
