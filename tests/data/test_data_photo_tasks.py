"""Model-free edits of real images: tone and style on a folder of photos; recolouring and text given a mask/box."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from step1x_edit.data import LocalExecutor, generate_from_photos, iter_samples, summarize
from step1x_edit.data.errors import DataConfigError
from step1x_edit.data.tasks.local import recolor_region, replace_text
from step1x_edit.data.tasks.style import STYLES, apply_style
from step1x_edit.data.tasks.tone import TONE_OPS, apply_tone
from step1x_edit.errors import DataFormatError, InvalidImageError


def _photo(seed=0, size=(96, 72)):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None] * np.ones(
        (size[1], 1, 3), np.float32
    )
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("op", sorted(TONE_OPS))
def test_tone_operations_keep_size_and_change_the_image(op):
    photo = _photo()
    toned = apply_tone(photo, op)
    assert toned.size == photo.size and toned.mode == "RGB"
    assert not np.array_equal(np.asarray(toned), np.asarray(photo))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_keep_size_and_change_the_image(style):
    photo = _photo()
    styled = apply_style(photo, style)
    assert styled.size == photo.size and not np.array_equal(np.asarray(styled), np.asarray(photo))


def test_recolor_changes_only_the_masked_region_and_keeps_shading():
    photo = _photo()
    mask = np.zeros((72, 96), bool)
    mask[10:40, 20:60] = True
    recolored = np.asarray(recolor_region(photo, mask, (0, 200, 0)))
    original = np.asarray(photo)
    assert np.array_equal(recolored[~mask], original[~mask])
    assert (recolored[mask][:, 1] >= recolored[mask][:, 0]).mean() > 0.9  # now green-dominant
    with pytest.raises(InvalidImageError, match="selects no pixels"):
        recolor_region(photo, np.zeros((72, 96), bool), (0, 200, 0))


def test_replace_text_changes_only_the_box():
    image = Image.new("RGB", (160, 80), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 140, 60), fill=(250, 250, 250))
    draw.text((80, 40), "OPEN", fill=(10, 10, 10), anchor="mm")
    edited = replace_text(image, (22, 22, 139, 59), "CLOSED")
    before, after = np.asarray(image), np.asarray(edited)
    outside = np.ones((80, 160), bool)
    outside[22:59, 22:139] = False
    assert np.array_equal(before[outside], after[outside]) and not np.array_equal(before, after)
    with pytest.raises(InvalidImageError, match="outside"):
        replace_text(image, (0, 0, 500, 10), "X")


def test_photo_folder_becomes_tone_and_style_triplets(tmp_path):
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    for index in range(3):
        _photo(index).save(photos / f"p{index}.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    store = generate_from_photos(
        tmp_path / "store",
        tmp_path / "photos",
        license="CC-BY-4.0",
        executor=LocalExecutor(1),
        progress=False,
    )
    summary = summarize(store)
    assert summary["per_task"] == {"style_transfer": 3, "tone_transformation": 3}
    record = next(store.iter_records())
    assert record["provenance"]["license"] == "CC-BY-4.0" and record["provenance"]["source_path"].endswith(
        ".jpg"
    )
    assert all(sample.instruction_zh for sample in iter_samples(store.root, None))
    with pytest.raises(DataConfigError, match="without a model"):
        generate_from_photos(
            tmp_path / "bad", tmp_path / "photos", tasks=("subject_removal",), progress=False
        )


def test_region_spec_builds_colour_and_text_triplets_that_only_touch_the_region(tmp_path):
    from step1x_edit.data.generate import generate_region_edits

    photo = _photo(size=(120, 90))
    photo.save(tmp_path / "photo.png")
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (10, 10, 50, 40))
    mask.save(tmp_path / "mask.png")
    lines = [
        {
            "image": "photo.png",
            "task": "color_alteration",
            "mask": "mask.png",
            "color": "green",
            "object": "car",
            "object_zh": "汽车",
        },
        {
            "image": "photo.png",
            "task": "text_modification",
            "box": [60, 50, 110, 80],
            "text": "CLOSED",
            "old_text": "OPEN",
        },
    ]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))
    store = generate_region_edits(
        tmp_path / "store", tmp_path / "edits.jsonl", executor=LocalExecutor(1), progress=False
    )
    samples = {s.task: s for s in iter_samples(store.root, None)}
    assert samples["color_alteration"].instruction_zh == "把汽车变成绿色。"
    assert samples["text_modification"].instruction_en == 'Change the text "OPEN" to "CLOSED".'
    for sample in samples.values():
        changed = (np.asarray(sample.source) != np.asarray(sample.target)).any(axis=2)
        region = np.asarray(sample.mask) > 0
        assert changed.any() and not (changed & ~region).any()
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"image": "photo.png", "task": "color_alteration", "mask": "mask.png"})
    )
    with pytest.raises(DataFormatError, match="needs color"):
        generate_region_edits(tmp_path / "bad_store", tmp_path / "bad.jsonl", progress=False)
