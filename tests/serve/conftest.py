import threading
from pathlib import Path

import pytest

from step1x_edit.pipeline import load_pipeline


@pytest.fixture(scope="session")
def example() -> Path:
    """A bundled example image (256 x 256 shapes) to edit."""
    return Path(__file__).resolve().parents[2] / "examples" / "shapes.png"


@pytest.fixture(scope="session")
def demo_pipeline():
    """The built-in demo model (loads in seconds, edits in a fraction of one on the CPU)."""
    return load_pipeline(device="cpu")


class GatedPipeline:
    """The demo pipeline, but each call waits until ``release`` is set (``entered`` says a call is running): lets a
    test hold an edit in progress."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, **kwargs):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the gated edit"
        return self.pipeline(**kwargs)


@pytest.fixture
def gated_pipeline(demo_pipeline) -> GatedPipeline:
    return GatedPipeline(demo_pipeline)
