"""Fixtures for the GEdit-Bench tests: a tiny GEdit-format Parquet copy written by the test itself."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

TASKS = ("background_change", "color_alter", "subject-add")


def png_bytes(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(sum(color))
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def gedit_rows(keys_per_task: int = 2, tasks=TASKS, languages=("en", "cn")) -> list[dict]:
    rows = []
    for t, task in enumerate(tasks):
        for k in range(keys_per_task):
            key = f"{task[:4]}{k:04d}"
            for language in languages:
                rows.append(
                    {
                        "key": key,
                        "task_type": task,
                        "instruction": f"make it {task} {k}" if language == "en" else f"把它变成 {task} {k}",
                        "instruction_language": language,
                        "input_image": {"bytes": png_bytes((40 * t, 80, 20 * k), (24, 16)), "path": None},
                        "input_image_raw": {"bytes": png_bytes((40 * t, 80, 20 * k), (48, 32)), "path": None},
                        "Intersection_exist": k % 2 == 0,
                    }
                )
    return rows


def write_gedit_copy(root, rows: list[dict], shards: int = 1) -> None:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        table = pa.Table.from_pylist(rows[i::shards])
        pq.write_table(table, data / f"train-{i:05d}-of-{shards:05d}.parquet")


@pytest.fixture
def make_gedit_copy():
    """``make_gedit_copy(root, rows, shards=1)`` writes ``rows`` (see ``gedit_rows``) as a GEdit-format copy."""
    return write_gedit_copy


@pytest.fixture
def make_gedit_rows():
    """``make_gedit_rows(keys_per_task=2, tasks=..., languages=("en", "cn"))``: rows of a GEdit-format copy."""
    return gedit_rows


@pytest.fixture
def gedit_copy(tmp_path):
    """A two-shard GEdit-format copy: 3 task groups x 2 keys x 2 languages (12 rows, 24x16 sources)."""
    root = tmp_path / "GEdit-Bench"
    write_gedit_copy(root, gedit_rows(), shards=2)
    return root


class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 with scripted replies.

    ``reply(request, call)`` returns ``(status, body)`` or ``(status, body, delay_seconds)`` for the ``call``-th
    request (0-based) with the same ``route(request)``; every request body is kept in ``requests``.
    """

    def __init__(self, reply, route=lambda request: None):
        self.reply = reply
        self.route = route
        self.requests: list[dict] = []
        self.calls: dict = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    route = server.route(body)
                    call = server.calls.get(route, 0)
                    server.calls[route] = call + 1
                status, payload, *delay = server.reply(body, call)
                if delay:
                    time.sleep(delay[0])
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    """``chat_server(reply, route=None)`` starts a :class:`ChatServer`; it is shut down after the test."""
    servers = []

    def start(reply, route=lambda request: None):
        servers.append(ChatServer(reply, route))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
