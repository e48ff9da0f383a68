"""Local edits on any image given a user-supplied mask or box: recolouring a region and replacing text.

Pixels outside the mask (or box) are left bit-identical, so the pair is exact ground truth for the edit.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import InvalidImageError


def _check_mask(image: Image.Image, mask: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if array.shape[:2] != (image.size[1], image.size[0]):
        raise InvalidImageError(
            f"mask is {array.shape[1]}x{array.shape[0]} but the image is {image.size[0]}x{image.size[1]}"
        )
    selected = array > 127 if array.dtype != bool else array
    if not selected.any():
        raise InvalidImageError("mask selects no pixels")
    return selected


def recolor_region(
    image: Image.Image, mask: Image.Image | np.ndarray, color: tuple[int, int, int]
) -> Image.Image:
    """Give the masked region the hue of ``color`` while keeping each pixel's brightness (shading survives).
    Near-grey targets (white, black, grey) set saturation to zero and rescale brightness towards ``color``."""
    selected = _check_mask(image, mask)
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32)
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255.0 for channel in color))
    region = hsv[selected]
    if saturation < 0.15:
        region[:, 1] = 0
        target_value = value * 255.0
        mean_value = max(float(region[:, 2].mean()), 1.0)
        region[:, 2] = np.clip(region[:, 2] * target_value / mean_value, 0, 255)
    else:
        region[:, 0] = hue * 255.0
        region[:, 1] = np.maximum(region[:, 1], saturation * 255.0 * 0.85)
    hsv[selected] = region
    recolored = Image.fromarray(np.round(hsv).astype(np.uint8), "HSV").convert("RGB")
    out = np.asarray(image.convert("RGB")).copy()
    out[selected] = np.asarray(recolored)[selected]
    return Image.fromarray(out, "RGB")


def fit_font(
    text: str, box_width: int, box_height: int, max_size: int | None = None
) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at the largest size at which ``text`` fits the box (no font files needed)."""
    size = max_size or box_height
    while size > 6:
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(text)
        if right - left <= box_width and bottom - top <= box_height:
            return font
        size -= 1
    return ImageFont.load_default(size=6)


def replace_text(
    image: Image.Image,
    box: tuple[int, int, int, int],
    text: str,
    text_color: tuple[int, int, int] | None = None,
    fill: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Erase ``box`` (x0, y0, x1, y1) with its border colour and write ``text`` centred in it.

    ``fill`` defaults to the median colour of the box border; ``text_color`` to the box pixel farthest from it
    (the old text's ink). Only pixels inside the box change.
    """
    x0, y0, x1, y1 = (int(value) for value in box)
    width, height = image.size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InvalidImageError(f"text box {box} lies outside the {width}x{height} image")
    if not text.strip():
        raise ValueError("replacement text is empty")
    rgb = image.convert("RGB")
    patch = np.asarray(rgb.crop((x0, y0, x1, y1)), dtype=np.int32)
    border = np.concatenate([patch[0], patch[-1], patch[:, 0], patch[:, -1]])
    background = tuple(int(v) for v in np.median(border, axis=0)) if fill is None else fill
    if text_color is None:
        distance = np.abs(patch - np.array(background)).sum(axis=2)
        y, x = np.unravel_index(int(distance.argmax()), distance.shape)
        text_color = tuple(int(v) for v in patch[y, x])
    patch_image = Image.new("RGB", (x1 - x0, y1 - y0), background)
    margin = max(1, (y1 - y0) // 8)
    font = fit_font(text, x1 - x0 - 2 * margin, y1 - y0 - 2 * margin)
    ImageDraw.Draw(patch_image).text(
        ((x1 - x0) / 2, (y1 - y0) / 2), text, font=font, fill=text_color, anchor="mm"
    )
    out = rgb.copy()
    out.paste(patch_image, (x0, y0))  # drawing on a patch guarantees nothing outside the box changes
    return out
