import shutil
from pathlib import Path

import pytest
from batch_files import write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder with two example images (256 x 256 shapes, a sign) and a file that is not an image."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "shapes.png", folder / "shapes.png")
    shutil.copy(EXAMPLES / "sign.png", folder / "sign.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


@pytest.fixture
def pairs(images) -> Path:
    """Five good samples over two images (two working sizes of one, settings of their own)."""
    return write_jsonl(images / "pairs.jsonl", [
        {"image": "shapes.png", "instruction": "Make the red circle green."},
        {"image": "sign.png", "instruction": 'Change the text "OPEN" to "CLOSED".', "seed": 7},
        {"image": "shapes.png", "instruction": "Make the background blue.", "seed": 3},
        {"image": "shapes.png", "instruction": "Remove the star.", "size_level": 64},
        {"image": "sign.png", "instruction": "Make it night.", "num_inference_steps": 2, "id": "night"},
    ])
