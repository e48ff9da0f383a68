"""GEdit-Bench from a local copy of the ``stepfun-ai/GEdit-Bench`` Parquet files.

The copy is a directory holding the dataset's Parquet shards anywhere below it (the Hub layout is
``data/train-00000-of-0000N.parquet``). Each row is one edit request with the fields ``key, task_type,
instruction, instruction_language, input_image, input_image_raw, Intersection_exist``; image columns are
Hugging Face ``Image`` structs (``{"bytes", "path"}``).

:func:`load_gedit` checks the copy before anything runs: required columns, every numbered shard present,
no duplicate (key, language), and - unless ``allow_partial`` - exactly the published 606 samples per
language with the published count per task group. The selected samples keep their images encoded in memory
(about the size of the Parquet files) and decode them on access.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import DataFormatError

LANGUAGES: tuple[str, ...] = ("en", "cn")

# Samples per task group and language in the published benchmark (606 per language).
TASK_COUNTS: dict[str, int] = {
    "background_change": 40,
    "color_alter": 40,
    "material_alter": 40,
    "motion_change": 40,
    "ps_human": 70,
    "style_change": 60,
    "subject-add": 60,
    "subject-remove": 57,
    "subject-replace": 60,
    "text_change": 99,
    "tone_transfer": 40,
}
TASK_TYPES: tuple[str, ...] = tuple(TASK_COUNTS)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "key",
    "task_type",
    "instruction",
    "instruction_language",
    "input_image",
    "input_image_raw",
    "Intersection_exist",
)
_SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.parquet$")


@dataclass(frozen=True)
class GEditSample:
    """One benchmark row; images are kept encoded and decoded on access."""

    key: str
    task_type: str
    instruction: str
    language: str
    intersection_exist: bool
    input_image_bytes: bytes
    input_image_raw_bytes: bytes | None

    @property
    def input_image(self) -> Image.Image:
        """The pre-resized source image (about 512x512 area), RGB."""
        return _decode(self.input_image_bytes, self)

    @property
    def input_image_raw(self) -> Image.Image | None:
        """The original-resolution source image, RGB (``None`` if the copy lacks it)."""
        return None if self.input_image_raw_bytes is None else _decode(self.input_image_raw_bytes, self)

    def source_image(self, column: str = "input_image") -> Image.Image:
        """The source image from ``column`` (``input_image`` or ``input_image_raw``; the latter falls back to
        ``input_image`` for a copy without raw images)."""
        if column == "input_image_raw" and self.input_image_raw_bytes is not None:
            return self.input_image_raw
        if column in ("input_image", "input_image_raw"):
            return self.input_image
        raise ValueError(f"unknown source column {column!r}; choose input_image or input_image_raw")


def _decode(data: bytes, sample: GEditSample) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:
        raise DataFormatError(f"GEdit-Bench sample {sample.key} ({sample.language}): unreadable image: {error}") from error
    return image.convert("RGB")


def _image_bytes(value: object, column: str, key: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, bytes) or not value:
        raise DataFormatError(f"GEdit-Bench sample {key}: column {column} holds no image bytes")
    return value


def parquet_files(root: str | os.PathLike) -> list[Path]:
    """The Parquet shards of a GEdit-Bench copy, checking that numbered shards are all present."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"GEdit-Bench copy {root} is not a directory")
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise DataFormatError(f"no Parquet files under {root}; expected a local copy of stepfun-ai/GEdit-Bench")
    groups: dict[tuple[Path, str, int], set[int]] = {}
    for file in files:
        match = _SHARD_NAME.match(file.name)
        if match:
            group = (file.parent, match["prefix"], int(match["total"]))
            groups.setdefault(group, set()).add(int(match["index"]))
    for (parent, prefix, total), indices in groups.items():
        missing = sorted(set(range(total)) - indices)
        if missing:
            names = ", ".join(f"{prefix}-{i:05d}-of-{total:05d}.parquet" for i in missing)
            raise DataFormatError(f"incomplete GEdit-Bench copy in {parent}: missing shard(s) {names}")
    return files


def load_gedit(
    root: str | os.PathLike,
    languages: list[str] | tuple[str, ...] | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    allow_partial: bool = False,
) -> list[GEditSample]:
    """Load the benchmark from ``root``, keeping only ``languages`` and ``tasks`` (default: all).

    Raises :class:`DataFormatError` for a missing column or shard, a duplicated (key, language), and - unless
    ``allow_partial`` - for per-group counts that differ from the published benchmark.
    """
    import pyarrow.parquet as pq

    for value, known, what in ((languages, LANGUAGES, "language"), (tasks, TASK_TYPES, "task")):
        unknown = sorted(set(value or ()) - set(known))
        if unknown:
            raise DataFormatError(f"unknown GEdit-Bench {what}(s) {unknown}; known: {list(known)}")
    samples: list[GEditSample] = []
    for file in parquet_files(root):
        try:
            table = pq.read_table(file)
        except Exception as error:
            raise DataFormatError(f"cannot read Parquet file {file}: {error}") from error
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DataFormatError(f"{file} lacks GEdit-Bench column(s) {missing}; found {table.column_names}")
        for row in table.select(list(REQUIRED_COLUMNS)).to_pylist():
            key = str(row["key"])
            samples.append(
                GEditSample(
                    key=key,
                    task_type=str(row["task_type"]),
                    instruction=str(row["instruction"]),
                    language=str(row["instruction_language"]),
                    intersection_exist=bool(row["Intersection_exist"]),
                    input_image_bytes=_image_bytes(row["input_image"], "input_image", key),
                    input_image_raw_bytes=_image_bytes(row["input_image_raw"], "input_image_raw", key),
                )
            )
    _check(samples, root, allow_partial)
    return [
        s
        for s in samples
        if (languages is None or s.language in languages) and (tasks is None or s.task_type in tasks)
    ]


def _check(samples: list[GEditSample], root: str | os.PathLike, allow_partial: bool) -> None:
    duplicates = [k for k, n in Counter((s.key, s.language) for s in samples).items() if n > 1]
    if duplicates:
        raise DataFormatError(f"GEdit-Bench copy {root} repeats (key, language) pairs, e.g. {duplicates[:3]}")
    if any(s.input_image_bytes is None for s in samples):
        raise DataFormatError(f"GEdit-Bench copy {root} has rows without input_image")
    bad_language = sorted({s.language for s in samples} - set(LANGUAGES))
    if bad_language:
        raise DataFormatError(f"GEdit-Bench copy {root} has unknown instruction_language value(s) {bad_language}")
    if allow_partial:
        return
    counts = Counter((s.language, s.task_type) for s in samples)
    problems = [
        f"{language}/{task}: {counts.get((language, task), 0)} of {expected}"
        for language in LANGUAGES
        for task, expected in TASK_COUNTS.items()
        if counts.get((language, task), 0) != expected
    ]
    problems += [f"{language}/{task}: unknown task type" for language, task in counts if task not in TASK_COUNTS]
    if problems:
        raise DataFormatError(
            f"GEdit-Bench copy {root} differs from the published benchmark ({len(samples)} rows, expected "
            f"{2 * sum(TASK_COUNTS.values())}): {'; '.join(problems[:6])}"
            f"{' ...' if len(problems) > 6 else ''}. Pass allow_partial (--allow-partial) to use it anyway."
        )
