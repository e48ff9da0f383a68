"""Test clients and a live server for the serving tests."""

import socket
import threading
import time

import uvicorn
from fastapi.testclient import TestClient


def local_client(app, **kwargs) -> TestClient:
    """A test client that reaches ``app`` as http://localhost, a host name a loopback server answers to."""
    return TestClient(app, base_url="http://localhost", **kwargs)


class LiveServer:
    """The app served by uvicorn on a free loopback port in a thread."""

    def __init__(self, app):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()
