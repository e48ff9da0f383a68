"""A fake OpenAI-compatible chat server for tests: ``POST /v1/chat/completions`` on 127.0.0.1 with scripted replies.

Each request gets the next reply from ``queue`` (first in, first out) while it holds any, otherwise the one the
``reply`` function returns. A reply is a :class:`Reply` (status, JSON body or raw bytes, delay, headers, and ways
to misbehave: a body cut short, a body trickled byte by byte) or a tuple ``(status, body)`` /
``(status, body, delay_seconds)``; a queued item may also be a function like ``reply``. Every request body is kept in ``requests``, in arrival order::

    with ChatServer(lambda request, call: Reply(body=completion("fine"))) as server:
        client = openai.OpenAI(base_url=server.url, api_key="k")
        ...
        assert len(server.requests) == 1

``reply(request, call)`` receives the parsed request body and how many requests with the same ``route(request)``
came before (0-based; ``route`` defaults to one route for all), so a test can script "fail the first call for
this sample, then succeed". Reply functions run one at a time; delays are waited out concurrently.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply: ``body`` is sent as JSON unless ``raw`` bytes are given; the server waits
    ``delay`` seconds before answering (long enough and the client times out). To misbehave, ``cut_after`` sends
    only that many bytes of the body (announcing its full length) and closes the connection, and ``trickle``
    waits that many seconds before each byte of the body."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    trickle: float = 0.0

    @classmethod
    def of(cls, value: Reply | tuple) -> Reply:
        """``value`` itself, or the reply a ``(status, body[, delay])`` tuple stands for."""
        if isinstance(value, Reply):
            return value
        status, body, *delay = value
        return cls(status, body, delay=delay[0] if delay else 0.0)

    def payload(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode()


ReplyFunction = Callable[[dict, int], Reply | tuple]


def completion(content: str | None, model: str = "tiny", finish_reason: str = "stop") -> dict:
    """A well-formed ``chat.completion`` body with one choice whose message is ``content``."""
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def error_body(message: str, kind: str = "server_error") -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind}}


def _unscripted(request: dict, call: int) -> Reply:
    return Reply(500, error_body("the test scripted no reply for this request"))


class ChatServer:
    """Serves ``POST /v1/chat/completions`` at ``url`` (``http://127.0.0.1:PORT/v1``) until :meth:`close`.

    Args:
        reply: ``reply(request, call) -> Reply | tuple`` for requests the queue does not answer; without it
            they get HTTP 500.
        replies: the initial ``queue``.
        route: ``route(request)`` groups requests for the ``call`` count.
    """

    def __init__(
        self,
        reply: ReplyFunction | None = None,
        replies: Iterable[Reply | tuple | ReplyFunction] = (),
        route: Callable[[dict], Hashable] = lambda request: None,
    ):
        self.reply = reply or _unscripted
        self.queue: deque[Reply | tuple | ReplyFunction] = deque(replies)
        self.route = route
        self.requests: list[dict] = []
        self.calls: dict[Hashable, int] = {}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def next_reply(self, request: dict) -> Reply:
        """Record ``request`` and script its reply (the handler calls this once per request)."""
        with self.lock:
            self.requests.append(request)
            route = self.route(request)
            call = self.calls.get(route, 0)
            self.calls[route] = call + 1
            scripted = self.queue.popleft() if self.queue else self.reply
            return Reply.of(scripted(request, call) if callable(scripted) else scripted)

    def close(self) -> None:
        """Stop serving and free the port (replies still waiting out a delay are abandoned)."""
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != PATH:
                self._send(Reply(404, error_body(f"no route {self.path}", "not_found")))
                return
            reply = server.next_reply(json.loads(body))
            if reply.delay:
                time.sleep(reply.delay)
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            payload = reply.payload()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.cut_after is not None:
                    payload = payload[: reply.cut_after]
                    self.close_connection = True
                chunks = [payload[i : i + 1] for i in range(len(payload))] if reply.trickle else [payload]
                for chunk in chunks:
                    if reply.trickle:
                        time.sleep(reply.trickle)
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)

    return Handler
