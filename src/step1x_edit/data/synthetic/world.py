"""Scenes of the synthetic world and their renderer.

A :class:`Scene` is a frozen description (background, shapes, an optional text sign, person and face); an edit
is a second scene made with :func:`dataclasses.replace`, and both are drawn by the same deterministic
:func:`render`. Whatever the edit leaves alone is therefore drawn with identical pixels, and whatever it
uncovers is exactly what the scene renders there. Drawing uses no anti-aliasing, so region masks are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..tasks.local import fit_font

RGB = tuple[int, int, int]

# Saturated object colours: name -> (RGB, Chinese name).
COLORS: dict[str, tuple[RGB, str]] = {
    "red": ((214, 39, 40), "红色"),
    "orange": ((245, 130, 20), "橙色"),
    "yellow": ((240, 200, 20), "黄色"),
    "green": ((44, 160, 44), "绿色"),
    "blue": ((31, 90, 210), "蓝色"),
    "purple": ((140, 60, 190), "紫色"),
    "pink": ((240, 100, 170), "粉色"),
    "cyan": ((20, 185, 205), "青色"),
    "brown": ((130, 80, 40), "棕色"),
}

SHAPES: dict[str, str] = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "五角星",
    "diamond": "菱形",
    "hexagon": "六边形",
    "cross": "十字形",
    "heart": "爱心",
    "moon": "月牙",
    "arrow": "箭头",
    "house": "房子",
}

# Materials: name -> (English phrase, Chinese phrase) used in instructions.
MATERIALS: dict[str, tuple[str, str]] = {
    "solid": ("plain matte", "哑光纯色"),
    "striped": ("striped", "条纹"),
    "polka_dot": ("polka-dotted", "波点"),
    "checkered": ("checkered", "格子"),
    "metallic": ("metallic", "金属"),
    "wooden": ("wooden", "木头"),
    "glass": ("glass-like", "透明玻璃"),
}

# Backgrounds: name -> (kind, colours, English phrase, Chinese phrase).
BACKGROUNDS: dict[str, tuple[str, tuple[RGB, ...], str, str]] = {
    "light_blue": ("solid", ((200, 225, 245),), "plain light blue", "纯浅蓝色"),
    "cream": ("solid", ((246, 238, 218),), "cream", "米白色"),
    "light_gray": ("solid", ((222, 222, 222),), "light gray", "浅灰色"),
    "mint": ("solid", ((205, 240, 218),), "mint green", "薄荷绿色"),
    "lavender": ("solid", ((230, 220, 246),), "lavender", "淡紫色"),
    "sunset": ("gradient", ((255, 196, 120), (236, 112, 150)), "a sunset gradient", "夕阳渐变色"),
    "sky": ("gradient", ((110, 170, 235), (225, 242, 255)), "a clear blue sky", "晴朗的蓝天"),
    "meadow": (
        "horizon",
        ((170, 215, 250), (110, 185, 85)),
        "a green meadow under a blue sky",
        "蓝天下的绿色草地",
    ),
    "beach": ("horizon", ((175, 218, 250), (236, 214, 160)), "a sandy beach", "沙滩"),
    "stripes": ("stripes", ((238, 238, 250), (205, 214, 240)), "striped wallpaper", "条纹壁纸"),
    "checker": ("checker", ((242, 242, 242), (205, 205, 205)), "a checkered floor pattern", "棋盘格图案"),
    "night_sky": ("gradient", ((22, 28, 72), (70, 66, 130)), "a dark night sky", "深色夜空"),
}

SKIN_TONES: tuple[RGB, ...] = (
    (255, 219, 172),
    (241, 194, 125),
    (224, 172, 105),
    (198, 134, 66),
    (141, 85, 36),
)
HAIR_COLORS: dict[str, tuple[RGB, str]] = {
    "black": ((30, 25, 25), "黑色"),
    "brown": ((101, 60, 30), "棕色"),
    "blonde": ((232, 196, 90), "金色"),
    "red": ((180, 60, 30), "红色"),
    "blue": ((40, 90, 210), "蓝色"),
    "pink": ((235, 110, 175), "粉色"),
    "white": ((236, 236, 236), "白色"),
}

# Arm angles (left, right) in degrees from pointing straight down, per pose.
POSES: dict[str, tuple[float, float]] = {
    "arms_down": (12.0, 12.0),
    "arms_up": (160.0, 160.0),
    "arms_out": (90.0, 90.0),
    "wave": (12.0, 150.0),
}


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cx: int
    cy: int
    radius: int
    material: str = "solid"
    angle: int = 0  # degrees, counter-clockwise


@dataclass(frozen=True)
class Sign:
    """A board with one word; the font size is fixed by the scene so a word swap keeps box and font."""

    word: str
    box: tuple[int, int, int, int]
    font_size: int
    board: RGB = (250, 250, 250)
    ink: RGB = (20, 20, 20)
    border: RGB = (60, 60, 60)

    def text_box(self) -> tuple[int, int, int, int]:
        """The inner rectangle where the word is drawn (inside the border)."""
        x0, y0, x1, y1 = self.box
        inset = max(2, (y1 - y0) // 10)
        return (x0 + inset, y0 + inset, x1 - inset, y1 - inset)


@dataclass(frozen=True)
class Person:
    cx: int
    foot_y: int
    height: int
    shirt: str
    pose: str = "arms_down"
    skin: RGB = SKIN_TONES[1]

    def box(self) -> tuple[int, int, int, int]:
        """A rectangle containing the person in any pose."""
        h = self.height
        return (
            self.cx - int(0.55 * h),
            self.foot_y - int(1.2 * h),
            self.cx + int(0.55 * h) + 1,
            self.foot_y + h // 12 + 2,
        )


@dataclass(frozen=True)
class Face:
    cx: int
    cy: int
    radius: int
    skin: RGB
    hair: str
    shirt: str
    long_hair: bool = False
    expression: str = "neutral"  # neutral, smile, surprised
    eyes_closed: bool = False
    glasses: bool = False
    hat: str | None = None
    blush: bool = False

    def feature_box(self, feature: str) -> tuple[int, int, int, int]:
        """A rectangle containing everything drawn for ``feature`` (what an edit of it may change)."""
        cx, cy, r = self.cx, self.cy, self.radius
        fractions = {
            "mouth": (-0.5, 0.2, 0.5, 0.75),
            "eyes": (-0.7, -0.45, 0.7, 0.15),
            "glasses": (-0.95, -0.5, 0.95, 0.2),
            "cheeks": (-0.85, 0.0, 0.85, 0.5),
            "hair": (-1.3, -1.35, 1.3, 1.7),
            "hat": (-1.45, -2.0, 1.45, -0.35),
        }[feature]
        x0, y0, x1, y1 = fractions
        return (int(cx + x0 * r) - 1, int(cy + y0 * r) - 1, int(cx + x1 * r) + 2, int(cy + y1 * r) + 2)


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    shapes: tuple[Shape, ...] = ()
    sign: Sign | None = None
    person: Person | None = None
    face: Face | None = None


# -- background ------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _background(name: str, width: int, height: int) -> Image.Image:
    kind, colors, _, _ = BACKGROUNDS[name]
    if kind == "solid":
        return Image.new("RGB", (width, height), colors[0])
    first, second = (np.array(color, dtype=np.float32) for color in colors[:2])
    y = np.arange(height, dtype=np.float32)[:, None, None]
    x = np.arange(width, dtype=np.float32)[None, :, None]
    if kind == "gradient":
        t = y / max(1, height - 1)
        array = np.broadcast_to((1 - t) * first + t * second, (height, width, 3))
    elif kind == "horizon":
        array = np.where(y < int(height * 0.55), first, second) * np.ones((1, width, 1), np.float32)
    elif kind == "stripes":
        period = max(8, width // 10)
        array = np.where((x // period) % 2 == 0, first, second) * np.ones((height, 1, 1), np.float32)
    elif kind == "checker":
        period = max(8, width // 8)
        array = np.where(((x // period) + (y // period)) % 2 == 0, first, second)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return Image.fromarray(np.round(array).astype(np.uint8), "RGB")


# -- shapes ----------------------------------------------------------------------------------------------
# Polygon outlines as (x, y) corners in units of the radius, y pointing up, all within the unit circle.
_A, _B = 0.33, 0.95
_CORNERS: dict[str, list[tuple[float, float]]] = {
    "cross": [
        (_A, _B),
        (_A, _A),
        (_B, _A),
        (_B, -_A),
        (_A, -_A),
        (_A, -_B),
        (-_A, -_B),
        (-_A, -_A),
        (-_B, -_A),
        (-_B, _A),
        (-_A, _A),
        (-_A, _B),
    ],
    "arrow": [
        (-0.95, 0.22),
        (0.25, 0.22),
        (0.25, 0.6),
        (0.95, 0.0),
        (0.25, -0.6),
        (0.25, -0.22),
        (-0.95, -0.22),
    ],
    "house": [(-0.6, -0.75), (0.6, -0.75), (0.6, 0.05), (0.0, 0.95), (-0.6, 0.05)],
}


def _polygon(kind: str, radius: int, angle: int) -> list[tuple[float, float]]:
    if kind == "square":
        points = [(radius, 45 + 90 * k) for k in range(4)]
    elif kind == "triangle":
        points = [(radius, 90 + 120 * k) for k in range(3)]
    elif kind == "star":
        points = [(radius if k % 2 == 0 else 0.45 * radius, 90 + 36 * k) for k in range(10)]
    elif kind == "diamond":
        points = [(radius * (0.72 if k % 2 == 0 else 1.0), 90 * k) for k in range(4)]
    elif kind == "hexagon":
        points = [(radius, 30 + 60 * k) for k in range(6)]
    elif kind in _CORNERS:
        corners = [(x * radius, y * radius) for x, y in _CORNERS[kind]]
        points = [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    center = radius + 1
    return [
        (
            center + r * math.cos(math.radians(theta + angle)),
            center - r * math.sin(math.radians(theta + angle)),
        )
        for r, theta in points
    ]


@lru_cache(maxsize=2048)
def shape_mask(kind: str, radius: int, angle: int) -> Image.Image:
    """Binary ("L", 0/255) mask of a shape in a (2r+3)² box centred at (r+1, r+1)."""
    size = 2 * radius + 3
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    c, r = radius + 1, radius
    if kind == "circle":
        draw.ellipse((1, 1, 2 * radius + 1, 2 * radius + 1), fill=255)
    elif kind == "heart":  # two lobes and a point, drawn upright then rotated
        for side in (-1, 1):
            x = c + side * 0.42 * r
            draw.ellipse((x - 0.48 * r, c - 0.78 * r, x + 0.48 * r, c + 0.18 * r), fill=255)
        draw.polygon(
            [(c - 0.88 * r, c - 0.12 * r), (c + 0.88 * r, c - 0.12 * r), (c, c + 0.92 * r)], fill=255
        )
    elif kind == "moon":  # a disc with an offset disc cut away
        draw.ellipse((c - 0.92 * r, c - 0.92 * r, c + 0.92 * r, c + 0.92 * r), fill=255)
        x, y = c + 0.42 * r, c - 0.2 * r
        draw.ellipse((x - 0.78 * r, y - 0.78 * r, x + 0.78 * r, y + 0.78 * r), fill=0)
    elif kind == "house":  # walls and roof with a door cut out
        draw.polygon(_polygon(kind, radius, 0), fill=255)
        draw.rectangle((c - 0.13 * r, c + 0.38 * r, c + 0.13 * r, c + 0.75 * r), fill=0)
    else:
        draw.polygon(_polygon(kind, radius, angle), fill=255)
        return mask
    return mask.rotate(angle, resample=Image.Resampling.NEAREST, center=(c, c)) if angle else mask


def _lighter(color: RGB, amount: float) -> RGB:
    return tuple(int(round(c + (255 - c) * amount)) for c in color)


def _darker(color: RGB, amount: float) -> RGB:
    return tuple(int(round(c * (1 - amount))) for c in color)


@lru_cache(maxsize=2048)
def _sprite(kind: str, radius: int, angle: int, material: str, color: str) -> tuple[Image.Image, Image.Image]:
    """(fill RGB, alpha L) of a shape with its material and a dark outline."""
    mask = shape_mask(kind, radius, angle)
    size = mask.size[0]
    rgb = COLORS[color][0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = max(4, size // 6)
    base = np.array(rgb, np.float32)
    light = np.array(_lighter(rgb, 0.6), np.float32)
    if material in ("solid", "glass"):
        fill = np.broadcast_to(base, (size, size, 3))
    elif material == "striped":
        fill = np.where((((xx + yy) // period) % 2 == 0)[..., None], base, light)
    elif material == "checkered":
        fill = np.where((((xx // period) + (yy // period)) % 2 == 0)[..., None], base, light)
    elif material == "polka_dot":
        cell = period * 1.5
        dx = (xx % cell) - cell / 2
        dy = (yy % cell) - cell / 2
        fill = np.where(
            (dx * dx + dy * dy < (cell * 0.28) ** 2)[..., None], np.array((250, 250, 250), np.float32), base
        )
    elif material == "metallic":
        t = (yy / max(1, size - 1))[..., None]
        shade = 1.25 - 0.75 * t
        band = np.exp(-(((xx - yy * 0.4 - size * 0.35) / (size * 0.08)) ** 2))[..., None]
        fill = np.clip(base * 0.55 * shade + 170 * band + 40, 0, 255)
    elif material == "wooden":
        center = size / 2
        rings = np.sin(np.hypot(xx - center * 0.6, (yy - center) * 0.35) / max(1.5, size / 28)) * 0.5 + 0.5
        wood_dark, wood_light = np.array((120, 72, 35), np.float32), np.array((196, 140, 80), np.float32)
        fill = wood_dark + (wood_light - wood_dark) * rings[..., None]
    else:
        raise ValueError(f"unknown material {material!r}")
    fill = np.ascontiguousarray(np.round(fill).astype(np.uint8))
    alpha = np.asarray(mask, np.uint8).copy()
    edge = (alpha > 0) & (np.asarray(mask.filter(ImageFilter.MinFilter(3 if radius < 20 else 5))) == 0)
    if material == "glass":
        alpha[alpha > 0] = 120
        fill = fill.copy()
        fill[edge] = _lighter(rgb, 0.7)
    else:
        fill = fill.copy()
        fill[edge] = _darker(rgb, 0.45) if material != "wooden" else (80, 45, 20)
    alpha[edge] = 255
    return Image.fromarray(fill, "RGB"), Image.fromarray(alpha, "L")


def shape_region(shape: Shape, width: int, height: int) -> np.ndarray:
    """Boolean canvas mask of the pixels a shape covers."""
    mask = Image.new("L", (width, height), 0)
    box_mask = shape_mask(shape.kind, shape.radius, shape.angle)
    mask.paste(box_mask, (shape.cx - shape.radius - 1, shape.cy - shape.radius - 1))
    return np.asarray(mask) > 0


def _draw_shape(canvas: Image.Image, shape: Shape) -> None:
    fill, alpha = _sprite(shape.kind, shape.radius, shape.angle, shape.material, shape.color)
    canvas.paste(fill, (shape.cx - shape.radius - 1, shape.cy - shape.radius - 1), alpha)


# -- sign, person, face ----------------------------------------------------------------------------------
def sign_font_size(words: list[str], box: tuple[int, int, int, int]) -> int:
    """The font size at which every word of ``words`` fits the sign's text box."""
    probe = Sign(words[0], box, 8)
    x0, y0, x1, y1 = probe.text_box()
    margin = max(1, (y1 - y0) // 8)
    return min(fit_font(word, x1 - x0 - 2 * margin, y1 - y0 - 2 * margin).size for word in words)


def _draw_sign(canvas: Image.Image, sign: Sign) -> None:
    from PIL import ImageFont

    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = sign.box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=sign.border)
    tx0, ty0, tx1, ty1 = sign.text_box()
    patch = Image.new("RGB", (tx1 - tx0, ty1 - ty0), sign.board)
    font = ImageFont.load_default(size=sign.font_size)
    ImageDraw.Draw(patch).text(
        ((tx1 - tx0) / 2, (ty1 - ty0) / 2), sign.word, font=font, fill=sign.ink, anchor="mm"
    )
    canvas.paste(patch, (tx0, ty0))


def _draw_person(canvas: Image.Image, person: Person) -> None:
    draw = ImageDraw.Draw(canvas)
    h, cx, foot = person.height, person.cx, person.foot_y
    shirt = COLORS[person.shirt][0]
    limb = max(3, h // 12)
    hip_y, shoulder_y = foot - int(0.45 * h), foot - int(0.75 * h)
    head_r = int(0.13 * h)
    pants = (50, 60, 90)
    for side in (-1, 1):
        draw.line((cx + side * limb // 2, hip_y, cx + side * int(0.16 * h), foot), fill=pants, width=limb)
    left, right = POSES[person.pose]
    arm = 0.36 * h
    for side, angle in ((-1, left), (1, right)):
        sx = cx + side * int(0.1 * h)
        ex = sx + side * arm * math.sin(math.radians(angle))
        ey = shoulder_y + arm * math.cos(math.radians(angle))
        draw.line((sx, shoulder_y + limb // 2, ex, ey), fill=person.skin, width=max(2, limb - 1))
    draw.rectangle((cx - int(0.12 * h), shoulder_y, cx + int(0.12 * h), hip_y), fill=shirt)
    head_y = shoulder_y - head_r - 1
    draw.ellipse(
        (cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), fill=person.skin, outline=(60, 40, 30)
    )
    eye = max(1, head_r // 5)
    for side in (-1, 1):
        ex = cx + side * head_r // 2
        draw.ellipse((ex - eye, head_y - eye, ex + eye, head_y + eye), fill=(30, 30, 30))


def _draw_face(canvas: Image.Image, face: Face) -> None:
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = face.cx, face.cy, face.radius
    hair = HAIR_COLORS[face.hair][0]
    dark = (40, 30, 30)
    draw.ellipse((cx - 1.25 * r, cy + 1.05 * r, cx + 1.25 * r, cy + 2.6 * r), fill=COLORS[face.shirt][0])
    if face.long_hair:
        draw.rectangle((cx - 1.08 * r, cy - 0.3 * r, cx + 1.08 * r, cy + 1.3 * r), fill=hair)
    draw.rectangle((cx - 0.3 * r, cy + 0.7 * r, cx + 0.3 * r, cy + 1.15 * r), fill=face.skin)
    draw.ellipse((cx - r, cy - 1.1 * r, cx + r, cy + r), fill=face.skin)
    draw.chord((cx - 1.05 * r, cy - 1.2 * r, cx + 1.05 * r, cy + 0.2 * r), 180, 360, fill=hair)
    eye_y = cy - 0.15 * r
    for side in (-1, 1):
        ex = cx + side * 0.4 * r
        if face.eyes_closed:
            draw.arc(
                (ex - 0.17 * r, eye_y - 0.12 * r, ex + 0.17 * r, eye_y + 0.12 * r),
                0,
                180,
                fill=dark,
                width=max(1, r // 18),
            )
        else:
            draw.ellipse(
                (ex - 0.17 * r, eye_y - 0.12 * r, ex + 0.17 * r, eye_y + 0.12 * r),
                fill=(255, 255, 255),
                outline=dark,
            )
            draw.ellipse((ex - 0.07 * r, eye_y - 0.07 * r, ex + 0.07 * r, eye_y + 0.07 * r), fill=dark)
    draw.line((cx, cy, cx - 0.06 * r, cy + 0.18 * r), fill=_darker(face.skin, 0.35), width=max(1, r // 20))
    mouth_y = cy + 0.45 * r
    width = max(2, r // 14)
    if face.expression == "smile":
        draw.arc(
            (cx - 0.4 * r, mouth_y - 0.25 * r, cx + 0.4 * r, mouth_y + 0.2 * r),
            10,
            170,
            fill=(170, 40, 50),
            width=width,
        )
    elif face.expression == "surprised":
        draw.ellipse(
            (cx - 0.13 * r, mouth_y - 0.12 * r, cx + 0.13 * r, mouth_y + 0.18 * r), fill=(120, 30, 40)
        )
    else:
        draw.line((cx - 0.25 * r, mouth_y, cx + 0.25 * r, mouth_y), fill=(170, 40, 50), width=width)
    if face.blush:
        for side in (-1, 1):
            bx = cx + side * 0.58 * r
            draw.ellipse((bx - 0.17 * r, cy + 0.1 * r, bx + 0.17 * r, cy + 0.36 * r), fill=(240, 140, 150))
    if face.glasses:
        lens = 0.25 * r
        for side in (-1, 1):
            ex = cx + side * 0.4 * r
            draw.ellipse(
                (ex - lens, eye_y - lens, ex + lens, eye_y + lens),
                outline=(20, 20, 20),
                width=max(2, r // 14),
            )
        draw.line((cx - 0.15 * r, eye_y, cx + 0.15 * r, eye_y), fill=(20, 20, 20), width=max(2, r // 16))
        for side in (-1, 1):
            draw.line(
                (cx + side * 0.65 * r, eye_y, cx + side * 0.92 * r, eye_y - 0.1 * r),
                fill=(20, 20, 20),
                width=max(2, r // 16),
            )
    if face.hat is not None:
        color = COLORS[face.hat][0]
        draw.rectangle((cx - 0.75 * r, cy - 1.95 * r, cx + 0.75 * r, cy - 0.75 * r), fill=color)
        draw.rectangle((cx - 1.4 * r, cy - 0.85 * r, cx + 1.4 * r, cy - 0.45 * r), fill=_darker(color, 0.25))


def _scaled(scene: Scene, factor: int) -> Scene:
    """The same scene drawn ``factor`` times larger (every coordinate and size multiplied)."""
    f = factor
    sign = scene.sign
    if sign is not None:
        sign = replace(sign, box=tuple(v * f for v in sign.box), font_size=sign.font_size * f)
    person = scene.person
    if person is not None:
        person = replace(person, cx=person.cx * f, foot_y=person.foot_y * f, height=person.height * f)
    face = scene.face
    if face is not None:
        face = replace(face, cx=face.cx * f, cy=face.cy * f, radius=face.radius * f)
    shapes = tuple(replace(s, cx=s.cx * f, cy=s.cy * f, radius=s.radius * f) for s in scene.shapes)
    return replace(
        scene,
        width=scene.width * f,
        height=scene.height * f,
        shapes=shapes,
        sign=sign,
        person=person,
        face=face,
    )


def render(scene: Scene, supersample: int = 1) -> Image.Image:
    """Draw ``scene`` as an RGB image (deterministic: same scene, same pixels). ``supersample > 1`` draws it that
    many times larger and averages down, for anti-aliased edges; a pixel then changes under an edit only if it
    touches the edited region (see :func:`grow_mask`)."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    large = _scaled(scene, supersample) if supersample > 1 else scene
    canvas = _background(large.background, large.width, large.height).copy()
    for shape in large.shapes:
        _draw_shape(canvas, shape)
    if large.sign is not None:
        _draw_sign(canvas, large.sign)
    if large.person is not None:
        _draw_person(canvas, large.person)
    if large.face is not None:
        _draw_face(canvas, large.face)
    return canvas.reduce(supersample) if supersample > 1 else canvas


_FACE_FEATURES = {
    "expression": "mouth",
    "eyes_closed": "eyes",
    "glasses": "glasses",
    "hair": "hair",
    "hat": "hat",
    "blush": "cheeks",
}


def _box(region: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    region[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True


def edit_region(before: Scene, after: Scene, supersample: int = 1) -> np.ndarray:
    """Boolean (H, W) mask of every pixel the edit ``before`` → ``after`` may change, derived from the scenes:
    shapes that differ, the sign's text box, the person's box, the face features that differ, and for a new
    background everything not hidden by an opaque shape. With ``supersample > 1`` it is computed at the drawing
    resolution and a pixel is included when any of its sub-pixels is."""
    if (before.width, before.height) != (after.width, after.height):
        raise ValueError("the two scenes differ in size")
    if supersample > 1:
        before, after = _scaled(before, supersample), _scaled(after, supersample)
    width, height = before.width, before.height
    region = np.zeros((height, width), dtype=bool)
    for shape in set(before.shapes) ^ set(after.shapes):
        region |= shape_region(shape, width, height)
    if before.background != after.background:
        covered = np.zeros_like(region)
        for shape in set(before.shapes) & set(after.shapes):
            if shape.material != "glass":
                covered |= shape_region(shape, width, height)
        region |= ~covered
    if before.sign != after.sign:
        only_word = (
            before.sign is not None
            and after.sign is not None
            and replace(before.sign, word=after.sign.word) == after.sign
        )
        for sign in (before.sign, after.sign):
            if sign is not None:
                _box(region, sign.text_box() if only_word else sign.box)
    if before.person != after.person:
        for person in (before.person, after.person):
            if person is not None:
                _box(region, person.box())
    if before.face != after.face:
        if before.face is None or after.face is None:
            raise ValueError("adding or removing a whole face is not a supported edit")
        for name, feature in _FACE_FEATURES.items():
            if getattr(before.face, name) != getattr(after.face, name):
                _box(region, before.face.feature_box(feature))
        changed = {
            f.name for f in fields(before.face) if getattr(before.face, f.name) != getattr(after.face, f.name)
        }
        if changed - set(_FACE_FEATURES):
            raise ValueError(f"face edits of {sorted(changed - set(_FACE_FEATURES))} are not supported")
    if supersample > 1:
        region = region.reshape(height // supersample, supersample, width // supersample, supersample).any(
            axis=(1, 3)
        )
    return region
