"""Bad and unusual input images get a clear error or a documented conversion to upright 8-bit RGB."""

import numpy as np
import pytest
from PIL import Image

from step1x_edit.errors import InvalidImageError
from step1x_edit.image_io import load_image


def test_missing_file_is_reported_by_name(tmp_path):
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(tmp_path / "absent.png")


def test_non_image_file_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a PNG")
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(path)


def test_truncated_png_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InvalidImageError, match="truncated or corrupt|cannot open"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # a few KB on disk, 400 megapixels once decoded
    assert path.stat().st_size < 200_000
    with pytest.raises(InvalidImageError, match="decompression bomb|above the limit"):
        load_image(path)


def test_image_above_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(InvalidImageError, match="above the limit"):
        load_image(path, max_pixels=300 * 299)


@pytest.mark.parametrize("mode", ["CMYK", "L", "1", "P", "YCbCr", "LA", "RGBA"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    image = Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_transparent_pixels_are_flattened_onto_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = np.asarray(load_image(image))
    assert tuple(loaded[0, 0]) == (255, 0, 0)
    assert tuple(loaded[1, 1]) == (255, 255, 255)


def test_palette_transparency_is_flattened(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    image.save(path, transparency=1)
    assert tuple(np.asarray(load_image(path))[0, 0]) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((8, 8), 32768, dtype=np.uint16)
    Image.fromarray(values).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.dtype == np.uint8
    assert 126 <= loaded[0, 0, 0] <= 129  # half of full scale, not clipped to 255


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_image_file_bytes_load_like_the_file(tmp_path):
    path = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(path)
    from_bytes = load_image(path.read_bytes())
    assert from_bytes.mode == "RGB"
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(path)))


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"%PDF-1.4 not an image", "not an image"), (None, "decompression bomb|above the limit")],
)
def test_bad_image_bytes_are_refused(tmp_path, payload, message):
    if payload is None:  # a bomb: a small PNG that declares 400 megapixels
        path = tmp_path / "bomb.png"
        Image.new("1", (20000, 20000)).save(path)
        payload = path.read_bytes()
    with pytest.raises(InvalidImageError, match=message):
        load_image(payload)
