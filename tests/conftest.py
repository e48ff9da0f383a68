"""Shared test configuration: CPU only, no network, deterministic."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def shared_dir() -> str:
    """The shared reference material (fixtures, protocol) beside the repository."""
    path = os.path.abspath(os.environ.get("STEP1X_SHARED_DIR", SHARED))
    if not os.path.isdir(path):
        pytest.skip(f"shared reference directory not found at {path}")
    return path
