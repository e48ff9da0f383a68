"""Example source images with suggested instructions, for READMEs and first runs.

The instructions are edits the built-in demo model makes visibly (backgrounds and text; see its model card), so
a first run shows a change.
"""

from __future__ import annotations

import json
import os

from ...validate import integer
from ..limits import MAX_SIDE, MIN_SIDE
from ..store import make_folder
from .world import Face, Person, Scene, Shape, Sign, render, sign_font_size


def example_scenes(resolution: int = 256) -> list[tuple[str, Scene, str, str]]:
    """(name, scene, English instruction, Chinese instruction) for four hand-placed scenes."""
    s = resolution
    shapes = Scene(
        s,
        s,
        "sunset",
        (
            Shape("circle", "red", int(0.3 * s), int(0.35 * s), int(0.15 * s)),
            Shape("square", "blue", int(0.7 * s), int(0.4 * s), int(0.15 * s)),
            Shape("triangle", "yellow", int(0.5 * s), int(0.75 * s), int(0.14 * s)),
        ),
    )
    box = (int(0.15 * s), int(0.38 * s), int(0.85 * s), int(0.62 * s))
    sign = Scene(
        s,
        s,
        "cream",
        sign=Sign(
            "OPEN",
            box,
            sign_font_size(["OPEN", "CLOSED"], box),
            (30, 110, 60),
            (255, 255, 255),
            (230, 230, 230),
        ),
    )
    person = Scene(s, s, "meadow", person=Person(s // 2, int(0.92 * s), int(0.56 * s), "orange", "arms_down"))
    face = Scene(s, s, "light_gray", face=Face(s // 2, s // 2, int(0.21 * s), (241, 194, 125), "brown", "blue"))
    return [
        ("shapes", shapes, "Change the background to cream.", "把背景换成米白色。"),
        ("sign", sign, 'Change the text "OPEN" to "CLOSED".', "把文字“OPEN”改成“CLOSED”。"),
        ("person", person, "Change the background to lavender.", "把背景换成淡紫色。"),
        ("portrait", face, "Change the background to a dark night sky.", "把背景换成深色夜空。"),
    ]


def render_example_images(
    out_dir: str | os.PathLike, resolution: int = 256, antialias: bool = False
) -> list[dict[str, str]]:
    """Write ``NAME.png`` for each example scene and ``examples.json`` listing paths and instructions.
    Use the same ``antialias`` setting as the data a model was trained on, to stay in its distribution."""
    integer("resolution", resolution, MIN_SIDE, MAX_SIDE)
    out = make_folder(out_dir, "output folder")
    entries = []
    for name, scene, en, zh in example_scenes(resolution):
        path = out / f"{name}.png"
        render(scene, 2 if antialias else 1).save(path)
        entries.append({"path": str(path), "instruction_en": en, "instruction_zh": zh})
    (out / "examples.json").write_text(json.dumps(entries, ensure_ascii=False, indent=2), encoding="utf-8")
    return entries
