"""Algorithmic styles: pixel art, posterize, pencil sketch and emboss, as pure functions of an image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def pixel_art(image: Image.Image, block: int | None = None, colors: int = 16) -> Image.Image:
    """Big square pixels with a small palette. ``block`` defaults to 1/24 of the shorter side."""
    width, height = image.size
    block = block or max(2, min(width, height) // 24)
    small = image.resize((max(1, width // block), max(1, height // block)), Image.Resampling.BOX)
    small = small.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
    return small.resize((width, height), Image.Resampling.NEAREST)


def posterize(image: Image.Image, bits: int = 2) -> Image.Image:
    """Flat poster colours: ``bits`` bits per channel."""
    return ImageOps.posterize(image.convert("RGB"), bits)


def pencil_sketch(image: Image.Image, radius: float = 3.0) -> Image.Image:
    """Grey pencil drawing: colour-dodge of the greyscale image with its blurred negative."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    blurred = np.asarray(
        ImageOps.invert(image.convert("L")).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32
    )
    sketch = np.clip(grey * 255.0 / np.maximum(255.0 - blurred, 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(sketch, "L").convert("RGB")


def emboss(image: Image.Image) -> Image.Image:
    """Grey stone-relief look."""
    return image.convert("L").filter(ImageFilter.EMBOSS).convert("RGB")


def apply_style(image: Image.Image, style: str) -> Image.Image:
    try:
        function = STYLES[style][0]
    except KeyError:
        raise ValueError(f"unknown style {style!r}; choose one of {sorted(STYLES)}") from None
    return function(image)


# name -> (function, English phrases, Chinese phrases)
STYLES = {
    "pixel_art": (
        pixel_art,
        [
            "Turn the image into pixel art",
            "Make it look like a retro 8-bit game",
            "Render the picture as pixel art",
        ],
        ["把图片变成像素画", "让它看起来像复古8位游戏画面", "用像素风格重绘这张图"],
    ),
    "posterize": (
        posterize,
        [
            "Posterize the image",
            "Make it look like a flat-color poster",
            "Reduce the image to a few bold colors",
        ],
        ["对图片做色调分离", "让它看起来像平涂海报", "把图片简化成几种鲜明的颜色"],
    ),
    "pencil_sketch": (
        pencil_sketch,
        [
            "Turn the image into a pencil sketch",
            "Make it look hand-drawn in pencil",
            "Convert the picture to a sketch",
        ],
        ["把图片变成铅笔素描", "让它看起来像铅笔手绘", "将图片转换为素描风格"],
    ),
    "emboss": (
        emboss,
        [
            "Apply an emboss effect",
            "Make it look like a carved stone relief",
            "Give the image an embossed look",
        ],
        ["添加浮雕效果", "让它看起来像石刻浮雕", "给图片做成浮雕风格"],
    ),
}
