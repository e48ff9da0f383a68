"""Test clients for the serving tests."""

from fastapi.testclient import TestClient


def local_client(app, **kwargs) -> TestClient:
    """A test client that reaches ``app`` as http://localhost, a host name a loopback server answers to."""
    return TestClient(app, base_url="http://localhost", **kwargs)
