"""Bilingual instruction templates and referring expressions for the synthetic world.

English and Chinese templates are drawn independently (same meaning, varied wording). Objects are referred to by
whatever identifies them uniquely in the scene: colour, shape, colour + shape, position or size.
"""

from __future__ import annotations

import random

from .world import COLORS, SHAPES, Shape

Phrase = tuple[str, str]  # (English, Chinese)

TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "subject_addition": (
        [
            "Add {new} {where}.",
            "Put {new} {where}.",
            "Place {new} {where}.",
            "Draw {new} {where}.",
            "Insert {new} {where}.",
        ],
        ["在{where}添加{new}。", "在{where}放上{new}。", "在{where}画上{new}。", "往{where}加入{new}。"],
    ),
    "subject_removal": (
        [
            "Remove the {obj}.",
            "Delete the {obj}.",
            "Take away the {obj}.",
            "Erase the {obj} from the picture.",
            "Get rid of the {obj}.",
        ],
        ["去掉{obj}。", "删除{obj}。", "把{obj}移除。", "从画面中擦掉{obj}。", "把{obj}拿走。"],
    ),
    "subject_replacement": (
        [
            "Replace the {obj} with {new}.",
            "Swap the {obj} for {new}.",
            "Turn the {obj} into {new}.",
            "Change the {obj} to {new}.",
        ],
        ["把{obj}换成{new}。", "将{obj}替换为{new}。", "用{new}替换{obj}。", "把{obj}变成{new}。"],
    ),
    "background_change": (
        [
            "Change the background to {bg}.",
            "Replace the background with {bg}.",
            "Switch the background to {bg}.",
            "Make the background {bg}.",
        ],
        ["把背景换成{bg}。", "将背景替换为{bg}。", "背景改成{bg}。", "把背景变为{bg}。"],
    ),
    "color_alteration": (
        [
            "Make the {obj} {color}.",
            "Change the color of the {obj} to {color}.",
            "Paint the {obj} {color}.",
            "Recolor the {obj} {color}.",
            "Turn the {obj} {color}.",
        ],
        [
            "把{obj}变成{color}。",
            "将{obj}的颜色改为{color}。",
            "把{obj}涂成{color}。",
            "把{obj}换成{color}。",
        ],
    ),
    "material_modification": (
        [
            "Make the {obj} {material}.",
            "Give the {obj} a {material} look.",
            "Change the texture of the {obj} to {material}.",
            "Make the {obj} look {material}.",
        ],
        [
            "把{obj}变成{material}材质。",
            "将{obj}的材质改为{material}。",
            "让{obj}看起来是{material}的。",
            "给{obj}换成{material}质感。",
        ],
    ),
    "text_modification": (
        [
            'Change the text "{old}" to "{new}".',
            'Replace the word "{old}" with "{new}".',
            'Make the sign say "{new}" instead of "{old}".',
            'Edit the sign so it reads "{new}".',
        ],
        [
            "把文字“{old}”改成“{new}”。",
            "将“{old}”替换为“{new}”。",
            "让牌子上的字从“{old}”变成“{new}”。",
            "把招牌上的文字改为“{new}”。",
        ],
    ),
}

SIZES: dict[str, Phrase] = {
    "small": ("small", "小"),
    "medium": ("medium-sized", "中等大小的"),
    "large": ("large", "大"),
}

GRID_POSITIONS: dict[tuple[int, int], Phrase] = {
    (0, 0): ("in the top left corner", "左上角"),
    (1, 0): ("at the top", "上方"),
    (2, 0): ("in the top right corner", "右上角"),
    (0, 1): ("on the left side", "左侧"),
    (1, 1): ("in the middle", "画面中间"),
    (2, 1): ("on the right side", "右侧"),
    (0, 2): ("in the bottom left corner", "左下角"),
    (1, 2): ("at the bottom", "下方"),
    (2, 2): ("in the bottom right corner", "右下角"),
}


def pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def sentence(en: str, zh: str) -> Phrase:
    """End an English phrase with a period and a Chinese one with "。" (the task templates already do)."""
    return (en if en.endswith((".", "!")) else en + "."), (zh if zh.endswith("。") else zh + "。")


def fill(task: str, rng: random.Random, en: dict[str, str], zh: dict[str, str]) -> Phrase:
    """Fill a random English and a random Chinese template of ``task``."""
    en_templates, zh_templates = TEMPLATES[task]
    return pick(rng, en_templates).format(**en), pick(rng, zh_templates).format(**zh)


def shape_phrase(shape: Shape, with_article: bool = False, size: str | None = None) -> Phrase:
    """ "red circle" / "红色圆形" (optionally "a large red circle" / "一个大红色圆形")."""
    color_en, color_zh = shape.color, COLORS[shape.color][1]
    en = f"{color_en} {shape.kind}"
    zh = f"{color_zh}{SHAPES[shape.kind]}"
    if size is not None:
        en = f"{SIZES[size][0]} {en}"
        zh = f"{SIZES[size][1]}{zh}"
    if with_article:
        en = f"{'an' if en[0] in 'aeiou' else 'a'} {en}"
        zh = f"一个{zh}"
    return en, zh


def position_phrase(cx: float, cy: float, width: int, height: int) -> Phrase:
    column = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    return GRID_POSITIONS[(column, row)]


def size_name(radius: int, width: int, height: int) -> str:
    fraction = radius / min(width, height)
    return "small" if fraction < 0.11 else "medium" if fraction < 0.15 else "large"


def refer(shape: Shape, others: list[Shape], rng: random.Random) -> Phrase:
    """A referring expression (without article) that picks out ``shape`` among ``shape`` + ``others``."""
    color_zh, kind_zh = COLORS[shape.color][1], SHAPES[shape.kind]
    options: list[Phrase] = [shape_phrase(shape)]  # colour + shape is unique by construction
    if all(other.color != shape.color for other in others):
        options.append((f"{shape.color} shape", f"{color_zh}图形"))
        options.append((f"{shape.color} object", f"{color_zh}物体"))
    if all(other.kind != shape.kind for other in others):
        options.append((shape.kind, kind_zh))
    if others:
        margin = shape.radius
        if all(shape.cx + margin < other.cx for other in others):
            options.append((f"{shape.kind} on the left", f"左边的{kind_zh}"))
            options.append(("leftmost shape", "最左边的图形"))
        if all(shape.cx - margin > other.cx for other in others):
            options.append((f"{shape.kind} on the right", f"右边的{kind_zh}"))
            options.append(("rightmost shape", "最右边的图形"))
        if all(shape.cy + margin < other.cy for other in others):
            options.append(("topmost shape", "最上面的图形"))
        if all(shape.cy - margin > other.cy for other in others):
            options.append(("bottom shape", "最下面的图形"))
        if all(shape.radius > 1.3 * other.radius for other in others):
            options.append((f"big {shape.color} {shape.kind}", f"大的{color_zh}{kind_zh}"))
            options.append(("largest shape", "最大的图形"))
        if all(shape.radius * 1.3 < other.radius for other in others):
            options.append(("smallest shape", "最小的图形"))
    return options[rng.randrange(len(options))]
