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


@pytest.fixture
def printed_warnings(monkeypatch):
    """Warnings displayed as Python displays them outside pytest (written to stderr), not recorded by pytest."""
    import sys
    import warnings

    def display(message) -> None:
        sys.stderr.write(warnings.formatwarning(message.message, message.category, message.filename,
                                                message.lineno, message.line))

    display.__module__ = "warnings"  # what Python's own display reports
    monkeypatch.setattr(warnings, "showwarning", warnings._showwarning_orig)
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", display)
