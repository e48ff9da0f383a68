"""Reading user images safely: format, size and mode checks, EXIF orientation, conversion to 8-bit RGB.

Every image that enters the pipeline, the CLI or the benchmark goes through :func:`load_image`, so bad input
fails once, here, with a message that says what is wrong and what to do about it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Largest image accepted, in pixels (about 8k x 8k). Anything larger is refused before it is decoded, which
# also protects against decompression bombs: a tiny file that claims a gigantic size.
MAX_IMAGE_PIXELS = 8192 * 8192

# Background used when flattening transparent images (RGBA, LA, palette with transparency).
TRANSPARENT_BACKGROUND = (255, 255, 255)


def load_image(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``source`` (a path, the bytes of an image file such as an upload, or a PIL image) and return it as an
    8-bit RGB image, upright.

    Handling of unusual input, by design:
    - EXIF orientation is applied, so the image is edited as a viewer shows it.
    - CMYK, YCbCr, LAB, greyscale, 1-bit and palette images are converted to RGB.
    - Transparent images (RGBA, LA, palette with transparency) are flattened onto white.
    - 16-bit and 32-bit integer/float greyscale images are rescaled to 8 bits (not clipped).
    - Files that are not images, truncated or corrupt files, and images larger than ``max_pixels`` (including
      decompression bombs) raise :class:`InvalidImageError`.
    """
    from .errors import InvalidImageError

    if isinstance(source, Image.Image):
        image = source
        name = "image"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "the uploaded image"
        if not source:
            raise InvalidImageError("the uploaded image is empty (0 bytes)")
        image = _open(io.BytesIO(source), name)
    else:
        path = Path(source)
        name = str(path)
        try:
            exists, is_file = path.exists(), path.is_file()
        except OSError as error:  # a name too long for the file system, say
            raise InvalidImageError(f"cannot open {path}: {error.strerror or error}") from None
        if not exists:
            raise InvalidImageError(f"image file not found: {path}")
        if not is_file:
            raise InvalidImageError(f"not a file: {path}")
        image = _open(path, name)

    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}; "
            "downscale it first"
        )
    if width == 0 or height == 0:
        raise InvalidImageError(f"{name} has an empty size {width}x{height}")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"{name} is truncated or corrupt: {error}") from error
    return _to_rgb(image)


def _open(file, name: str) -> Image.Image:
    """``Image.open`` with every failure, a decompression bomb included, as :class:`InvalidImageError`."""
    from .errors import InvalidImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file)
    except UnidentifiedImageError as error:
        raise InvalidImageError(f"{name} is not an image file Pillow can read") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImageError(f"{name} declares an enormous size (possible decompression bomb): {error}") from error
    except OSError as error:
        raise InvalidImageError(f"cannot open {name}: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see :func:`load_image` for the rules)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        grey = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
