"""Fixtures for the GEdit-Bench tests: a tiny GEdit-format Parquet copy written by the test itself."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from step1x_edit.testing.chat_server import ChatServer

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


@pytest.fixture
def chat_server():
    """``chat_server(reply, route=None)`` starts a :class:`~step1x_edit.testing.chat_server.ChatServer` answering
    ``reply(request, call) -> (status, body[, delay])``; it is shut down after the test."""
    servers = []

    def start(reply, route=lambda request: None):
        servers.append(ChatServer(reply, route=route))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
