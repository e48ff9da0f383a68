"""The 11 editing tasks in the synthetic world: each draws a scene, edits it, and renders both with exact ground
truth, a mask of the edited region (for local tasks) and a bilingual instruction.

Entry point: :func:`generate_sample` (``task``, ``seed``, resolution) → :class:`EditSample`. The same arguments
always give the same pixels and words.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from ..tasks.style import STYLES, apply_style
from ..tasks.tone import TONE_INVERSES, TONE_OPS, apply_tone
from ..taxonomy import TASKS
from .language import fill, pick, position_phrase, refer, sentence, shape_phrase, size_name
from .world import (
    BACKGROUNDS,
    COLORS,
    HAIR_COLORS,
    MATERIALS,
    POSES,
    SHAPES,
    SKIN_TONES,
    Face,
    Person,
    Scene,
    Shape,
    Sign,
    edit_region,
    render,
    sign_font_size,
)

# Tasks whose edit is confined to the mask (every pixel outside it is identical in source and target).
LOCAL_TASKS = frozenset(TASKS) - {"style_transfer", "tone_transformation"}

WORD_PAIRS: tuple[tuple[str, str], ...] = (
    ("OPEN", "CLOSED"),
    ("SALE", "SOLD"),
    ("STOP", "GO"),
    ("HOT", "COLD"),
    ("YES", "NO"),
    ("IN", "OUT"),
    ("EXIT", "ENTER"),
    ("DAY", "NIGHT"),
    ("CAFE", "BAR"),
    ("PUSH", "PULL"),
    ("LEFT", "RIGHT"),
    ("UP", "DOWN"),
    ("WIN", "LOSE"),
    ("FAST", "SLOW"),
    ("NEW", "OLD"),
    ("ON", "OFF"),
    ("BOOKS", "TOYS"),
    ("HELLO", "BYE"),
    ("MILK", "TEA"),
    ("PARK", "ZOO"),
    ("RAIN", "SUN"),
    ("FREE", "PAID"),
    ("LOVE", "HOPE"),
    ("CAT", "DOG"),
    ("BAKERY", "FLOWERS"),
    ("HOTEL", "MOTEL"),
    ("NORTH", "SOUTH"),
    ("PIZZA", "PASTA"),
    ("2024", "2025"),
)
SIGN_STYLES: tuple[tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((250, 250, 250), (20, 20, 20), (60, 60, 60)),
    ((30, 110, 60), (255, 255, 255), (230, 230, 230)),
    ((200, 30, 40), (255, 255, 255), (120, 20, 20)),
    ((250, 215, 40), (20, 20, 20), (40, 40, 40)),
    ((25, 60, 140), (255, 255, 255), (200, 200, 220)),
)

POSE_PHRASES: dict[str, tuple[list[str], list[str]]] = {
    "arms_down": (
        [
            "Make the person lower their arms.",
            "Have the person put their arms down.",
            "Let the person's arms hang down.",
        ],
        ["让这个人放下双臂。", "让人物把手臂放下来。", "让人物双臂自然下垂。"],
    ),
    "arms_up": (
        [
            "Make the person raise both arms.",
            "Have the person put both hands up in the air.",
            "Make the person lift their arms above their head.",
        ],
        ["让这个人举起双臂。", "让人物把双手举过头顶。", "让人物高举双手。"],
    ),
    "arms_out": (
        [
            "Make the person stretch their arms out to the sides.",
            "Have the person spread both arms wide.",
            "Make the person hold their arms out horizontally.",
        ],
        ["让这个人向两侧伸开双臂。", "让人物张开双臂。", "让人物把双臂水平伸展。"],
    ),
    "wave": (
        [
            "Make the person wave with one hand.",
            "Have the person raise one arm to wave.",
            "Make the person wave hello.",
        ],
        ["让这个人挥手。", "让人物举起一只手打招呼。", "让人物挥手致意。"],
    ),
}

PORTRAIT_PHRASES: dict[str, tuple[list[str], list[str]]] = {
    "smile": (
        ["Make the person smile.", "Give the person a big smile.", "Make the face look happy."],
        ["让这个人微笑。", "让人物露出笑容。", "把表情改成开心的笑脸。"],
    ),
    "neutral": (
        ["Make the person stop smiling.", "Give the person a neutral expression."],
        ["让这个人不要笑。", "把表情改成平静的样子。"],
    ),
    "surprised": (
        [
            "Make the person look surprised.",
            "Give the face a surprised expression.",
            "Make the person open their mouth in surprise.",
        ],
        ["让这个人看起来很惊讶。", "把表情改成惊讶。", "让人物惊讶地张开嘴。"],
    ),
    "add_glasses": (
        ["Add glasses to the person.", "Put a pair of glasses on the face.", "Give the person glasses."],
        ["给这个人戴上眼镜。", "给人物加一副眼镜。", "让人物戴上眼镜。"],
    ),
    "remove_glasses": (
        ["Remove the glasses.", "Take off the person's glasses.", "Make the person not wear glasses."],
        ["去掉眼镜。", "摘掉人物的眼镜。", "让人物不戴眼镜。"],
    ),
    "hair": (
        ["Dye the hair {color}.", "Change the hair color to {color}.", "Make the person's hair {color}."],
        ["把头发染成{color}。", "将发色改为{color}。", "让人物的头发变成{color}。"],
    ),
    "hat": (
        ["Put a {color} hat on the person.", "Add a {color} hat.", "Give the person a {color} top hat."],
        ["给这个人戴上一顶{color}的帽子。", "加一顶{color}帽子。", "给人物戴一顶{color}礼帽。"],
    ),
    "close_eyes": (
        ["Make the person close their eyes.", "Close the person's eyes.", "Make the eyes closed."],
        ["让这个人闭上眼睛。", "把眼睛改成闭着的。", "让人物闭眼。"],
    ),
    "open_eyes": (
        ["Make the person open their eyes.", "Open the person's eyes."],
        ["让这个人睁开眼睛。", "把眼睛改成睁开的。"],
    ),
    "blush": (
        ["Add rosy cheeks.", "Give the person blush on the cheeks.", "Add pink blush makeup."],
        ["给脸颊加上腮红。", "让脸颊变得红润。", "给人物画上粉色腮红。"],
    ),
}

# Rotations that visibly change a shape: kind -> degrees (180 reads as "upside down").
ROTATIONS = {
    "triangle": 180,
    "star": 180,
    "heart": 180,
    "house": 180,
    "cross": 45,
    "square": 45,
    "diamond": 90,
    "arrow": 90,
}

MOVE_PHRASES = {
    "left": ("to the left", "向左"),
    "right": ("to the right", "向右"),
    "up": ("up", "向上"),
    "down": ("down", "向下"),
}


@dataclass
class EditSample:
    """One synthetic triplet. ``mask`` (mode "L", 255 = edited) is set for local tasks; ``meta`` records the
    scene parameters of the edit and, where the reverse edit makes sense, its task and instructions."""

    task: str
    source: Image.Image
    target: Image.Image
    instruction_en: str
    instruction_zh: str
    mask: Image.Image | None
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)
    sample_id: str = ""


@dataclass(frozen=True)
class _Edit:
    """Two scenes and what turns one into the other. For global edits both scenes are the same and
    ``global_op`` is ("style" | "tone", name, inverse): the rendered source is transformed instead."""

    source: Scene
    target: Scene
    instruction: tuple[str, str]
    meta: dict[str, Any]
    global_op: tuple[str, str, bool] | None = None


# -- scene building --------------------------------------------------------------------------------------
def canvas_size(
    rng: random.Random, resolution: int | tuple[int, int], aspect_ratios: Sequence[float]
) -> tuple[int, int]:
    """Width and height, multiples of 16, with area near a side drawn from ``resolution`` (an int or a range)."""
    low, high = (resolution, resolution) if isinstance(resolution, int) else resolution
    if low < 64 or high < low:
        raise ValueError(f"resolution must be >= 64 and a valid range, got {resolution}")
    side = rng.randrange(low // 16, high // 16 + 1) * 16
    aspect = aspect_ratios[rng.randrange(len(aspect_ratios))]
    width = max(64, int(round(side * aspect**0.5 / 16)) * 16)
    height = max(64, int(round(side / aspect**0.5 / 16)) * 16)
    return width, height


def _overlaps(cx: int, cy: int, radius: int, box: tuple[int, int, int, int], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return (
        cx + radius + gap > x0
        and cx - radius - gap < x1
        and cy + radius + gap > y0
        and cy - radius - gap < y1
    )


def place_shapes(
    rng: random.Random,
    width: int,
    height: int,
    count: int,
    materials: Sequence[str] = ("solid",),
    avoid: Sequence[tuple[int, int, int, int]] = (),
    radius_range: tuple[float, float] = (0.09, 0.17),
) -> list[Shape]:
    """Up to ``count`` non-overlapping shapes with distinct (colour, kind) pairs, clear of the ``avoid`` boxes."""
    side = min(width, height)
    shapes: list[Shape] = []
    colors = list(COLORS)
    rng.shuffle(colors)
    for _ in range(count * 40):
        if len(shapes) == count:
            break
        radius = int(side * rng.uniform(*radius_range))
        cx = rng.randrange(radius + 2, width - radius - 2)
        cy = rng.randrange(radius + 2, height - radius - 2)
        if any((cx - s.cx) ** 2 + (cy - s.cy) ** 2 < (radius + s.radius + 5) ** 2 for s in shapes):
            continue
        if any(_overlaps(cx, cy, radius, box, 4) for box in avoid):
            continue
        color = colors[len(shapes) % len(colors)] if rng.random() < 0.8 else rng.choice(colors)
        kind = rng.choice(list(SHAPES))
        if any(s.color == color and s.kind == kind for s in shapes):
            continue
        shapes.append(Shape(kind, color, cx, cy, radius, rng.choice(list(materials)), 0))
    return shapes


def _light_background(rng: random.Random) -> str:
    return rng.choice([name for name in BACKGROUNDS if name != "night_sky"])


def _shape_scene(
    rng: random.Random, width: int, height: int, low: int = 2, high: int = 4, materials=("solid",)
) -> Scene:
    for _ in range(20):
        shapes = place_shapes(rng, width, height, rng.randint(low, high), materials)
        if len(shapes) >= low:
            return Scene(width, height, rng.choice(list(BACKGROUNDS)), tuple(shapes))
    raise RuntimeError(f"could not place {low} shapes on a {width}x{height} canvas")


def _sign(rng: random.Random, width: int, height: int, words: Sequence[str]) -> Sign:
    box_w = int(width * rng.uniform(0.55, 0.8))
    box_h = int(height * rng.uniform(0.2, 0.28))
    x0 = rng.randrange(2, width - box_w - 1)
    y0 = rng.randrange(2, height - box_h - 1)
    box = (x0, y0, x0 + box_w, y0 + box_h)
    board, ink, border = rng.choice(SIGN_STYLES)
    return Sign(words[0], box, sign_font_size(list(words), box), board, ink, border)


def _person(rng: random.Random, width: int, height: int, pose: str) -> Person:
    person_h = int(height * rng.uniform(0.5, 0.6))
    cx = rng.randrange(int(width * 0.3), int(width * 0.7) + 1)
    return Person(cx, int(height * 0.92), person_h, rng.choice(list(COLORS)), pose, rng.choice(SKIN_TONES))


def _face(rng: random.Random, width: int, height: int) -> Face:
    radius = int(min(width, height) * rng.uniform(0.2, 0.23))
    return Face(
        cx=width // 2 + rng.randint(-width // 14, width // 14),
        cy=int(height * 0.5),
        radius=radius,
        skin=rng.choice(SKIN_TONES),
        hair=rng.choice(list(HAIR_COLORS)),
        shirt=rng.choice(list(COLORS)),
        long_hair=rng.random() < 0.5,
    )


def _random_scene(rng: random.Random, width: int, height: int) -> Scene:
    kind = rng.random()
    if kind < 0.4:
        return _shape_scene(rng, width, height, 2, 4, tuple(MATERIALS))
    if kind < 0.6:
        sign = _sign(rng, width, height, [rng.choice(WORD_PAIRS)[0]])
        shapes = place_shapes(rng, width, height, rng.randint(0, 2), avoid=[sign.box])
        return Scene(width, height, _light_background(rng), tuple(shapes), sign=sign)
    if kind < 0.8:
        return Scene(
            width,
            height,
            rng.choice(["meadow", "beach", "sky"]),
            person=_person(rng, width, height, rng.choice(list(POSES))),
        )
    return Scene(width, height, _light_background(rng), face=_face(rng, width, height))


# -- the tasks -------------------------------------------------------------------------------------------
def _removal(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _shape_scene(rng, width, height, 2, 4)
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    others = [s for i, s in enumerate(scene.shapes) if i != index]
    cleared = replace(scene, shapes=tuple(others))
    ref_en, ref_zh = refer(shape, others, rng)
    new_en, new_zh = shape_phrase(shape, with_article=True, size=size_name(shape.radius, width, height))
    where_en, where_zh = position_phrase(shape.cx, shape.cy, width, height)
    addition = fill(
        "subject_addition", rng, {"new": new_en, "where": where_en}, {"new": new_zh, "where": where_zh}
    )
    return _Edit(
        scene,
        cleared,
        fill("subject_removal", rng, {"obj": ref_en}, {"obj": ref_zh}),
        {
            "background": scene.background,
            "object": asdict(shape),
            "reverse": {
                "task": "subject_addition",
                "instruction_en": addition[0],
                "instruction_zh": addition[1],
            },
        },
    )


def _addition(rng: random.Random, width: int, height: int) -> _Edit:
    removal = _removal(rng, width, height)
    reverse = removal.meta["reverse"]
    meta = {
        "background": removal.meta["background"],
        "object": removal.meta["object"],
        "reverse": {
            "task": "subject_removal",
            "instruction_en": removal.instruction[0],
            "instruction_zh": removal.instruction[1],
        },
    }
    return _Edit(
        removal.target,
        removal.source,
        (reverse["instruction_en"], reverse["instruction_zh"]),
        meta,
    )


def _replacement(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _shape_scene(rng, width, height, 1, 4)
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    others = [s for i, s in enumerate(scene.shapes) if i != index]
    taken = {(s.color, s.kind) for s in others}
    while True:
        kind = rng.choice([k for k in SHAPES if k != shape.kind])
        color = shape.color if rng.random() < 0.5 else rng.choice(list(COLORS))
        if (color, kind) not in taken:
            break
    new = replace(shape, kind=kind, color=color)
    edited = replace(scene, shapes=tuple(new if i == index else s for i, s in enumerate(scene.shapes)))
    ref_en, ref_zh = refer(shape, others, rng)
    new_en, new_zh = shape_phrase(new, with_article=True)
    return _Edit(
        scene,
        edited,
        fill("subject_replacement", rng, {"obj": ref_en, "new": new_en}, {"obj": ref_zh, "new": new_zh}),
        {"object": asdict(shape), "new": asdict(new)},
    )


def _background(rng: random.Random, width: int, height: int) -> _Edit:
    materials = [m for m in MATERIALS if m != "glass"]
    scene = _shape_scene(rng, width, height, 1, 4, materials)
    new = rng.choice([name for name in BACKGROUNDS if name != scene.background])
    _, _, bg_en, bg_zh = BACKGROUNDS[new]
    return _Edit(
        scene,
        replace(scene, background=new),
        fill("background_change", rng, {"bg": bg_en}, {"bg": bg_zh}),
        {"from": scene.background, "to": new},
    )


def _color(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _shape_scene(rng, width, height, 1, 4)
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    others = [s for i, s in enumerate(scene.shapes) if i != index]
    choices = [
        c for c in COLORS if c != shape.color and (c, shape.kind) not in {(s.color, s.kind) for s in others}
    ]
    new = replace(shape, color=rng.choice(choices))
    edited = replace(scene, shapes=tuple(new if i == index else s for i, s in enumerate(scene.shapes)))
    ref_en, ref_zh = refer(shape, others, rng)
    instruction = fill(
        "color_alteration",
        rng,
        {"obj": ref_en, "color": new.color},
        {"obj": ref_zh, "color": COLORS[new.color][1]},
    )
    back_en, back_zh = refer(new, others, rng)
    reverse = fill(
        "color_alteration",
        rng,
        {"obj": back_en, "color": shape.color},
        {"obj": back_zh, "color": COLORS[shape.color][1]},
    )
    return _Edit(
        scene,
        edited,
        instruction,
        {
            "object": asdict(shape),
            "new_color": new.color,
            "reverse": {
                "task": "color_alteration",
                "instruction_en": reverse[0],
                "instruction_zh": reverse[1],
            },
        },
    )


def _material(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _shape_scene(rng, width, height, 1, 4)
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    if rng.random() < 0.3:
        shape = replace(shape, material=rng.choice(["striped", "polka_dot", "checkered", "metallic"]))
        scene = replace(scene, shapes=tuple(shape if i == index else s for i, s in enumerate(scene.shapes)))
    others = [s for i, s in enumerate(scene.shapes) if i != index]
    material = rng.choice([m for m in MATERIALS if m != shape.material])
    new = replace(shape, material=material)
    edited = replace(scene, shapes=tuple(new if i == index else s for i, s in enumerate(scene.shapes)))
    ref_en, ref_zh = refer(shape, others, rng)
    material_en, material_zh = MATERIALS[material]
    instruction = fill(
        "material_modification",
        rng,
        {"obj": ref_en, "material": material_en},
        {"obj": ref_zh, "material": material_zh},
    )
    return _Edit(
        scene,
        edited,
        instruction,
        {"object": asdict(shape), "material": material},
    )


def _text(rng: random.Random, width: int, height: int) -> _Edit:
    old, new = rng.choice(WORD_PAIRS)
    if rng.random() < 0.5:
        old, new = new, old
    sign = _sign(rng, width, height, [old, new])
    shapes = place_shapes(rng, width, height, rng.randint(0, 2), avoid=[sign.box])
    scene = Scene(width, height, _light_background(rng), tuple(shapes), sign=sign)
    edited = replace(scene, sign=replace(sign, word=new))
    instruction = fill("text_modification", rng, {"old": old, "new": new}, {"old": old, "new": new})
    reverse = fill("text_modification", rng, {"old": new, "new": old}, {"old": new, "new": old})
    return _Edit(
        scene,
        edited,
        instruction,
        {
            "old": old,
            "new": new,
            "box": list(sign.text_box()),
            "font_size": sign.font_size,
            "reverse": {
                "task": "text_modification",
                "instruction_en": reverse[0],
                "instruction_zh": reverse[1],
            },
        },
    )


def _motion(rng: random.Random, width: int, height: int) -> _Edit:
    if rng.random() < 0.5:
        start, end = rng.sample(list(POSES), 2)
        person = _person(rng, width, height, start)
        shapes = place_shapes(
            rng, width, height, rng.randint(0, 2), avoid=[person.box()], radius_range=(0.07, 0.11)
        )
        scene = Scene(width, height, rng.choice(["meadow", "beach", "sky"]), tuple(shapes), person=person)
        edited = replace(scene, person=replace(person, pose=end))
        en, zh = POSE_PHRASES[end]
        back_en, back_zh = POSE_PHRASES[start]
        return _Edit(
            scene,
            edited,
            (pick(rng, en), pick(rng, zh)),
            {
                "pose_from": start,
                "pose_to": end,
                "reverse": {
                    "task": "motion_change",
                    "instruction_en": pick(rng, back_en),
                    "instruction_zh": pick(rng, back_zh),
                },
            },
        )
    for _ in range(50):
        scene = _shape_scene(rng, width, height, 1, 3)
        index = rng.randrange(len(scene.shapes))
        shape = scene.shapes[index]
        others = [s for i, s in enumerate(scene.shapes) if i != index]
        ref_en, ref_zh = refer(shape, others, rng)
        if shape.kind in ROTATIONS and rng.random() < 0.35:
            angle = ROTATIONS[shape.kind]
            new = replace(shape, angle=angle)
            if angle == 180:
                instruction = (f"Turn the {ref_en} upside down.", f"把{ref_zh}上下颠倒过来。")
            else:
                instruction = (f"Rotate the {ref_en} by {angle} degrees.", f"把{ref_zh}旋转{angle}度。")
        else:
            direction = rng.choice(list(MOVE_PHRASES))
            step = int(shape.radius * rng.uniform(1.5, 2.5))
            dx, dy = {"left": (-step, 0), "right": (step, 0), "up": (0, -step), "down": (0, step)}[direction]
            new = replace(shape, cx=shape.cx + dx, cy=shape.cy + dy)
            inside = (
                new.radius + 2 <= new.cx < width - new.radius - 2
                and new.radius + 2 <= new.cy < height - new.radius - 2
            )
            clear = all(
                (new.cx - s.cx) ** 2 + (new.cy - s.cy) ** 2 >= (new.radius + s.radius + 5) ** 2
                for s in others
            )
            if not (inside and clear):
                continue
            move_en, move_zh = MOVE_PHRASES[direction]
            instruction = (
                pick(
                    rng,
                    [
                        f"Move the {ref_en} {move_en}.",
                        f"Shift the {ref_en} {move_en}.",
                        f"Slide the {ref_en} {move_en}.",
                    ],
                ),
                pick(
                    rng,
                    [
                        f"把{ref_zh}{move_zh}移动。",
                        f"将{ref_zh}{move_zh}挪一点。",
                        f"把{ref_zh}往{move_zh[1]}移。",
                    ],
                ),
            )
        edited = replace(scene, shapes=tuple(new if i == index else s for i, s in enumerate(scene.shapes)))
        return _Edit(scene, edited, instruction, {"object": asdict(shape), "new": asdict(new)})
    raise RuntimeError("could not find a free spot to move a shape")


def _portrait(rng: random.Random, width: int, height: int) -> _Edit:
    face = _face(rng, width, height)
    edit = rng.choice(["smile", "surprised", "glasses", "hair", "hat", "eyes", "blush"])
    words: dict[str, str] = {}
    if edit == "smile":
        if rng.random() < 0.25:
            face, new, phrase = replace(face, expression="smile"), face, "neutral"
        else:
            new, phrase = replace(face, expression="smile"), "smile"
        feature = "mouth"
    elif edit == "surprised":
        new, phrase, feature = replace(face, expression="surprised"), "surprised", "mouth"
    elif edit == "glasses":
        if rng.random() < 0.3:
            face, new, phrase = replace(face, glasses=True), face, "remove_glasses"
        else:
            new, phrase = replace(face, glasses=True), "add_glasses"
        feature = "glasses"
    elif edit == "hair":
        color = rng.choice([c for c in HAIR_COLORS if c != face.hair])
        new, phrase, feature = replace(face, hair=color), "hair", "hair"
        words = {"en": color, "zh": HAIR_COLORS[color][1]}
    elif edit == "hat":
        color = rng.choice(list(COLORS))
        new, phrase, feature = replace(face, hat=color), "hat", "hat"
        words = {"en": color, "zh": COLORS[color][1]}
    elif edit == "eyes":
        if rng.random() < 0.3:
            face, new, phrase = replace(face, eyes_closed=True), face, "open_eyes"
        else:
            new, phrase = replace(face, eyes_closed=True), "close_eyes"
        feature = "eyes"
    else:
        new, phrase, feature = replace(face, blush=True), "blush", "cheeks"
    background = _light_background(rng)
    en, zh = PORTRAIT_PHRASES[phrase]
    instruction = (
        pick(rng, en).format(color=words.get("en", "")),
        pick(rng, zh).format(color=words.get("zh", "")),
    )
    return _Edit(
        Scene(width, height, background, face=face),
        Scene(width, height, background, face=new),
        instruction,
        {"edit": phrase, "feature": feature},
    )


def _style(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _random_scene(rng, width, height)
    style = rng.choice(list(STYLES))
    _, en, zh = STYLES[style]
    instruction = sentence(pick(rng, en), pick(rng, zh))
    return _Edit(scene, scene, instruction, {"style": style}, ("style", style, False))


def _tone(rng: random.Random, width: int, height: int) -> _Edit:
    scene = _random_scene(rng, width, height)
    op = rng.choice(list(TONE_OPS))
    inverse = op in TONE_INVERSES and rng.random() < 0.3
    en, zh = TONE_INVERSES[op] if inverse else TONE_OPS[op][1:]
    instruction = sentence(pick(rng, en), pick(rng, zh))
    return _Edit(scene, scene, instruction, {"tone": op, "inverse": inverse}, ("tone", op, inverse))


_GENERATORS: dict[str, Callable[[random.Random, int, int], _Edit]] = {
    "subject_addition": _addition,
    "subject_removal": _removal,
    "subject_replacement": _replacement,
    "background_change": _background,
    "color_alteration": _color,
    "material_modification": _material,
    "text_modification": _text,
    "motion_change": _motion,
    "portrait_editing": _portrait,
    "style_transfer": _style,
    "tone_transformation": _tone,
}


def _edit(task: str, seed: int, resolution: int | tuple[int, int], aspect_ratios: Sequence[float]) -> _Edit:
    if task not in _GENERATORS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    rng = random.Random(seed)
    width, height = canvas_size(rng, resolution, aspect_ratios)
    return _GENERATORS[task](rng, width, height)


def edit_scenes(
    task: str,
    seed: int,
    resolution: int | tuple[int, int] = (128, 256),
    aspect_ratios: Sequence[float] = (1.0,),
) -> tuple[Scene, Scene]:
    """The source and target scenes of the triplet :func:`generate_sample` makes with the same arguments (what is
    drawn where, e.g. to locate the shape an instruction names). A global edit (style, tone) has the same scene on
    both sides: its change is applied to the rendered image."""
    edit = _edit(task, seed, resolution, aspect_ratios)
    return edit.source, edit.target


def generate_sample(
    task: str,
    seed: int,
    resolution: int | tuple[int, int] = (128, 256),
    aspect_ratios: Sequence[float] = (1.0,),
    sample_id: str | None = None,
    antialias: bool = False,
) -> EditSample:
    """Make one triplet of ``task`` from ``seed``. ``resolution`` is a side length or a (min, max) range
        (multiples of 16 are used); ``aspect_ratios`` are width/height ratios to draw from. ``antialias`` draws at
        twice the size and averages down (smooth edges). The mask of a local task is derived from the two scenes
    (:func:`~.world.edit_region`) at the drawing resolution, so it is exact either way."""
    edit = _edit(task, seed, resolution, aspect_ratios)
    supersample = 2 if antialias else 1
    source = render(edit.source, supersample)
    if edit.global_op is None:
        target = render(edit.target, supersample)
    else:
        kind, name, inverse = edit.global_op
        transformed = apply_style(source, name) if kind == "style" else apply_tone(source, name)
        source, target = (transformed, source) if inverse else (source, transformed)
    mask = None
    if task in LOCAL_TASKS:
        region = edit_region(edit.source, edit.target, supersample)
        mask = Image.fromarray(region.astype(np.uint8) * 255, "L")
    return EditSample(
        task,
        source,
        target,
        edit.instruction[0],
        edit.instruction[1],
        mask,
        seed,
        edit.meta,
        sample_id if sample_id is not None else f"{task}-{seed}",
    )


def reverse_sample(sample: EditSample) -> EditSample:
    """The reverse edit (target → source), for tasks where it makes sense (removal ↔ addition, recolouring,
    text swaps, pose changes). Raises ``ValueError`` when ``sample`` has no reverse."""
    reverse = sample.meta.get("reverse")
    if reverse is None:
        raise ValueError(f"{sample.task} sample {sample.sample_id!r} has no meaningful reverse edit")
    meta = {key: value for key, value in sample.meta.items() if key != "reverse"}
    meta["reversed_from"] = sample.sample_id
    return EditSample(
        reverse["task"],
        sample.target,
        sample.source,
        reverse["instruction_en"],
        reverse["instruction_zh"],
        sample.mask,
        sample.seed,
        meta,
        f"{sample.sample_id}-rev",
    )
