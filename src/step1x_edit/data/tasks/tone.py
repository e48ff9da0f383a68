"""Tone transformations: exposure, white balance, colour grades, haze and night, as pure functions of an image.

Each operation takes an RGB PIL image and returns one of the same size. :data:`TONE_OPS` names them with the
bilingual phrases the instruction templates use.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _as_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8), "RGB")


def exposure(image: Image.Image, stops: float) -> Image.Image:
    """Scale linear-ish brightness by ``2**stops`` (positive brightens)."""
    return _to_image(_as_float(image) * (2.0**stops))


def white_balance(image: Image.Image, warmth: float) -> Image.Image:
    """Shift colour temperature: ``warmth > 0`` warmer (more red, less blue), ``< 0`` cooler."""
    gains = np.array([1.0 + 0.25 * warmth, 1.0 + 0.05 * warmth, 1.0 - 0.25 * warmth], dtype=np.float32)
    return _to_image(_as_float(image) * gains)


def grade(image: Image.Image, look: str) -> Image.Image:
    """Apply a named colour grade: ``"sepia"``, ``"black_and_white"`` or ``"teal_orange"``."""
    rgb = _as_float(image)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if look == "black_and_white":
        return _to_image(np.repeat(luma[..., None], 3, axis=2))
    if look == "sepia":
        tint = np.array([1.07, 0.86, 0.62], dtype=np.float32)
        return _to_image(luma[..., None] * tint + 0.04)
    if look == "teal_orange":
        shadows = np.array([0.0, 0.35, 0.45], dtype=np.float32)
        highlights = np.array([1.0, 0.62, 0.28], dtype=np.float32)
        weight = luma[..., None]
        toned = (1 - weight) * shadows + weight * highlights
        return _to_image(0.55 * rgb + 0.45 * toned * (0.6 + 0.8 * weight))
    raise ValueError(f"unknown grade {look!r}; choose sepia, black_and_white or teal_orange")


def haze(
    image: Image.Image, density: float = 0.6, airlight: tuple[int, int, int] = (222, 224, 230)
) -> Image.Image:
    """Atmospheric haze ``I = J·t + A·(1 − t)`` with transmission falling towards the top of the frame
    (the top is treated as farther away when no depth map is available)."""
    rgb = _as_float(image)
    height = rgb.shape[0]
    depth = np.linspace(1.0, 0.35, height, dtype=np.float32)[:, None, None]  # top far, bottom near
    transmission = np.exp(-density * 2.0 * depth)
    light = np.array(airlight, dtype=np.float32) / 255.0
    return _to_image(rgb * transmission + light * (1 - transmission))


def night(image: Image.Image, darkness: float = 0.7) -> Image.Image:
    """Night look: darker, desaturated, blue-shifted."""
    rgb = _as_float(image)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    desaturated = 0.45 * rgb + 0.55 * luma[..., None]
    tint = np.array([0.55, 0.7, 1.15], dtype=np.float32)
    return _to_image(desaturated * tint * (1.0 - darkness) + np.array([0.0, 0.01, 0.05], dtype=np.float32))


def apply_tone(image: Image.Image, op: str) -> Image.Image:
    """Apply the named operation of :data:`TONE_OPS` with its default strength."""
    try:
        function = TONE_OPS[op][0]
    except KeyError:
        raise ValueError(f"unknown tone operation {op!r}; choose one of {sorted(TONE_OPS)}") from None
    return function(image)


# name -> (function with default strength, English phrases, Chinese phrases)
TONE_OPS = {
    "brighten": (
        lambda image: exposure(image, 0.8),
        [
            "Brighten the image",
            "Increase the exposure",
            "Make the picture brighter",
            "Lighten the whole photo",
        ],
        ["把图片调亮", "提高曝光", "让画面更明亮", "整体提亮照片"],
    ),
    "darken": (
        lambda image: exposure(image, -1.0),
        ["Darken the image", "Lower the exposure", "Make the picture darker", "Reduce the brightness"],
        ["把图片调暗", "降低曝光", "让画面更暗一些", "降低亮度"],
    ),
    "warm": (
        lambda image: white_balance(image, 0.8),
        ["Make the colors warmer", "Give the image a warm tone", "Warm up the white balance"],
        ["让色调更暖", "给图片加上暖色调", "把白平衡调暖"],
    ),
    "cool": (
        lambda image: white_balance(image, -0.8),
        ["Make the colors cooler", "Give the image a cool blue tone", "Cool down the white balance"],
        ["让色调更冷", "给图片加上冷色调", "把白平衡调冷"],
    ),
    "sepia": (
        lambda image: grade(image, "sepia"),
        ["Apply a sepia tone", "Make it look like an old sepia photo", "Give the image a vintage brown tint"],
        ["加上复古棕褐色调", "让它看起来像一张老照片", "添加怀旧的棕色色调"],
    ),
    "black_and_white": (
        lambda image: grade(image, "black_and_white"),
        ["Convert the image to black and white", "Make the picture grayscale", "Remove all the color"],
        ["把图片转成黑白", "将画面变为灰度", "去掉所有颜色"],
    ),
    "teal_orange": (
        lambda image: grade(image, "teal_orange"),
        ["Apply a teal and orange color grade", "Give it a cinematic teal-orange look"],
        ["应用青橙色调", "调成电影感的青橙色调"],
    ),
    "haze": (
        haze,
        ["Add haze to the scene", "Make it foggy", "Cover the scene in a light mist"],
        ["给场景加上薄雾", "让画面变得雾蒙蒙的", "添加一层轻雾"],
    ),
    "night": (
        night,
        ["Make it look like night", "Turn the scene into a night scene", "Change the time to night"],
        ["让画面看起来像夜晚", "把场景变成夜景", "把时间改成晚上"],
    ),
}

# Inverse edits: the degraded image is the source, the clean image the target.
TONE_INVERSES = {
    "darken": (
        ["Brighten this underexposed photo", "Fix the exposure, it is too dark", "Restore normal brightness"],
        ["把这张曝光不足的照片调亮", "修正曝光，画面太暗了", "恢复正常亮度"],
    ),
    "haze": (
        ["Remove the haze", "Clear the fog from the scene", "Dehaze the image"],
        ["去除雾气", "清除场景中的雾", "给图片去雾"],
    ),
}
