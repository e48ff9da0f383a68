"""What a batch edit reads: the samples of a JSON-lines or CSV file, of a folder of images with an instructions
file, or of a data-engine store, as :class:`Sample` descriptions.

The file itself is checked as it is read (its format, its columns, each line's JSON): a problem there is one
:class:`~step1x_edit.errors.DataFormatError` naming the file and line, before any work. A sample's values (an
empty instruction, a step count out of range, an image that cannot be read) are not errors of the run: they
travel with the sample and end as a failed row naming the reason, so one bad sample never stops the others.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validate
from ..data.records import json_type, stable_int
from ..data.store import Store
from ..errors import DataFormatError, InvalidValueError, Step1XEditError
from ..models.presets import MAX_INFERENCE_STEPS, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL

# The settings a sample (a line of the input, or the command's defaults) may give; None means "the model's own".
SETTINGS = ("num_inference_steps", "guidance_scale", "size_level", "strength", "negative_prompt")
# The fields of a line of a JSON-lines or CSV input.
FIELDS = ("image", "instruction", "id", "seed", *SETTINGS)
# Image files a folder input picks up.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# The instructions file a folder input reads when none is named.
INSTRUCTIONS_FILE = "instructions.txt"
# Sample ids: what a line's ``id`` may be (they name the PNG files of --png-dir too).
SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._#/-]{0,199}")
# The most samples one run takes (their descriptions are held in memory).
MAX_SAMPLES = 10_000_000
# What the seed of a sample without one is derived from, beside its id and the run's seed.
SEED_SALT = "step1x-edit edit-batch"


@dataclass(frozen=True)
class Settings:
    """Edit settings; ``None`` fields fall through (a sample's to the command's, the command's to the model's)."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    size_level: int | None = None
    strength: float | None = None
    negative_prompt: str | None = None

    def __post_init__(self):
        check_settings(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTINGS}


def check_settings(settings: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidValueError` naming the field unless every setting given (not None) is in range."""
    # Imported here, not at the top: the command line reads this module to list its flags.
    from ..pipeline import MAX_PROMPT_CHARS

    checks = {
        "num_inference_steps": lambda value: validate.integer("num_inference_steps", value, 1, MAX_INFERENCE_STEPS),
        "guidance_scale": lambda value: validate.number("guidance_scale", value, 0.0),
        "size_level": lambda value: validate.integer("size_level", value, MIN_SIZE_LEVEL, MAX_SIZE_LEVEL),
        "strength": lambda value: validate.number("strength", value, 0.0, 1.0, low_open=True),
        "negative_prompt": lambda value: validate.text("negative_prompt", value, MAX_PROMPT_CHARS),
    }
    for name, value in settings.items():
        if value is not None:
            checks[name](value)


@dataclass(frozen=True)
class Sample:
    """One edit to make. ``image`` is a path (absolute), or with ``in_store`` the Parquet shard of a data-engine
    store that holds the source under ``sample_id``; ``origin`` says where the source came from in the input's
    own terms (a path relative to the input, or ``SHARD/SAMPLE_ID``). ``problem``, when set, is why the sample
    cannot be edited (it is recorded as failed)."""

    sample_id: str
    image: str
    origin: str
    instruction: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    in_store: bool = False
    problem: str | None = None

    def identity(self) -> dict[str, Any]:
        """What decides this sample's result (not where the input folder happens to be): part of its shard's key."""
        return {"sample_id": self.sample_id, "origin": self.origin, "instruction": self.instruction,
                "seed": self.seed, "settings": self.settings, "problem": self.problem}


def derived_seed(sample_id: str, run_seed: int) -> int:
    """The seed of a sample that gives none: a hash of its id and the run's seed (same id, same seed, anywhere)."""
    return stable_int(SEED_SALT, run_seed, sample_id)


def read_samples(path: str | os.PathLike, *, run_seed: int = 0, instructions: str | os.PathLike | None = None,
                 language: str = "en", include_rejected: bool = False) -> tuple[list[Sample], dict[str, Any]]:
    """The samples of the input at ``path`` and what identifies the input beyond them (a store's config hash):

    - a ``.jsonl`` or ``.csv`` file with ``image`` (a path relative to the file's folder), ``instruction`` and
      optionally ``id``, ``seed`` and the settings of :data:`SETTINGS`;
    - a folder of images and an instructions file (``instructions``, default ``FOLDER/instructions.txt``, one
      instruction a line): every image is edited with every instruction;
    - a data-engine store (a folder with ``store.json``): its ``source_image`` with its ``instruction_en`` or
      ``instruction_zh`` (``language``), rejected rows skipped unless ``include_rejected``.
    """
    validate.integer("seed", run_seed, 0, validate.MAX_SEED)
    if language not in ("en", "zh"):
        raise InvalidValueError(f"language must be 'en' or 'zh', got {language!r}")
    source = Path(path)
    if not source.exists():
        raise DataFormatError(f"input {source} does not exist; give a .jsonl or .csv file, a folder of images or a "
                              "data store")
    if instructions is not None and not (source.is_dir() and not (source / "store.json").exists()):
        raise InvalidValueError("an instructions file applies to a folder of images only")
    if source.is_dir() and (source / "store.json").exists():
        samples, identity = _read_store(source, run_seed, language, include_rejected)
    elif source.is_dir():
        samples, identity = _read_folder(source, run_seed, instructions), {}
    elif source.suffix.lower() in (".jsonl", ".csv"):
        samples, identity = _read_table_file(source, run_seed), {}
    else:
        raise DataFormatError(f"input {source}: expected a .jsonl or .csv file, a folder of images or a data store "
                              f"(a folder with store.json), got a {source.suffix or 'extensionless'} file")
    if not samples:
        raise DataFormatError(f"input {source} holds no samples")
    _check_unique([sample.sample_id for sample in samples], source)
    return samples, identity


def png_name(sample_id: str) -> str:
    """The file name of a sample's edited PNG (``--png-dir``): its id with ``/`` and ``#`` as ``_``."""
    return re.sub(r"[/#]", "_", sample_id) + ".png"


def _check_unique(ids: list[str], source: Path) -> None:
    seen: dict[str, str] = {}
    for sample_id in ids:
        name = png_name(sample_id)
        if name in seen:
            same = "twice" if seen[name] == sample_id else f"and {seen[name]!r} (both saved as {name})"
            raise DataFormatError(f"input {source}: sample id {sample_id!r} appears {same}; ids must be unique")
        seen[name] = sample_id
    if len(ids) > MAX_SAMPLES:
        raise DataFormatError(f"input {source} holds {len(ids):,} samples; the limit of one run is {MAX_SAMPLES:,}")


# -- JSON lines and CSV ------------------------------------------------------------------------------------
def _read_table_file(path: Path, run_seed: int) -> list[Sample]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise DataFormatError(f"cannot read {path}: {error.strerror or error}") from None
    rows = _jsonl_rows(path, text) if path.suffix.lower() == ".jsonl" else _csv_rows(path, text)
    return [_sample_from_row(path, where, index, row, run_seed) for index, (where, row) in enumerate(rows)]


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DataFormatError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: each line must be a JSON object, got {json_type(row)}")
        rows.append((where, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    rows = []
    try:
        if reader.fieldnames is None:
            return []
        _check_fields(f"{path} (header)", reader.fieldnames)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataFormatError(f"{where}: more cells than the header has columns")
            # An empty cell leaves an optional field out; an empty instruction stays, to be recorded as failed.
            rows.append((where, {key: value for key, value in row.items()
                                 if value not in (None, "") or key in ("image", "instruction")}))
    except csv.Error as error:
        raise DataFormatError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    return rows


def _check_fields(where: str, names) -> None:
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {unknown}; the fields are {', '.join(FIELDS)}")
    missing = [name for name in ("image", "instruction") if name not in names]
    if missing:
        raise DataFormatError(f"{where}: missing {' and '.join(missing)}")


def _sample_from_row(path: Path, where: str, index: int, row: dict[str, Any], run_seed: int) -> Sample:
    _check_fields(where, row)
    image = row["image"]
    if not isinstance(image, str) or not image.strip():
        raise DataFormatError(f"{where}: 'image' must be a path (text), got {json_type(image)}")
    sample_id = row.get("id", f"row-{index:07d}")
    if not isinstance(sample_id, str) or not SAMPLE_ID.fullmatch(sample_id):
        raise DataFormatError(f"{where}: 'id' must be 1 to 200 letters, digits or . _ # / - (starting with a letter "
                              f"or digit), got {sample_id!r}")
    from_csv = path.suffix.lower() == ".csv"
    problem = None
    values: dict[str, Any] = {}
    try:
        for name in ("seed", *SETTINGS):
            if name in row:
                values[name] = _parse(name, row[name]) if from_csv else row[name]
        check_settings({name: values[name] for name in SETTINGS if name in values})
        if "seed" in values:
            validate.integer("seed", values["seed"], 0, validate.MAX_SEED)
    except Step1XEditError as error:
        problem = str(error)
    instruction = row["instruction"]
    if not isinstance(instruction, str):
        problem = problem or f"instruction must be text, got {json_type(instruction)}"
        instruction = ""
    seed = values.get("seed") if problem is None else None
    return Sample(sample_id=sample_id, image=str((path.parent / image).resolve()), origin=image,
                  instruction=instruction, seed=derived_seed(sample_id, run_seed) if seed is None else seed,
                  settings={name: values[name] for name in SETTINGS if name in values} if problem is None else {},
                  problem=problem)


def _parse(name: str, text: str):
    """A CSV cell as the type its column holds (checked for range later)."""
    if name == "negative_prompt":
        return text
    try:
        if name in ("seed", "num_inference_steps", "size_level"):
            return int(text.strip())
        value = float(text)
    except ValueError:
        kind = "an integer" if name in ("seed", "num_inference_steps", "size_level") else "a number"
        raise InvalidValueError(f"{name} must be {kind}, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidValueError(f"{name} must be a finite number, got {text!r}")
    return value


# -- a folder of images ------------------------------------------------------------------------------------
def _read_folder(folder: Path, run_seed: int, instructions: str | os.PathLike | None) -> list[Sample]:
    instructions_path = Path(instructions) if instructions is not None else folder / INSTRUCTIONS_FILE
    if not instructions_path.is_file():
        raise DataFormatError(f"no instructions file {instructions_path}: write one instruction a line there, or "
                              "name the file with --instructions")
    try:
        lines = instructions_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{instructions_path} is not UTF-8 text (byte {error.start})") from None
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not texts:
        raise DataFormatError(f"{instructions_path} holds no instructions (one a line; # starts a comment)")
    images = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                    and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    samples = []
    for image in images:
        relative = image.relative_to(folder).as_posix()
        for number, instruction in enumerate(texts):
            sample_id = f"{relative}#{number}"
            samples.append(Sample(sample_id=sample_id, image=str(image.resolve()), origin=relative,
                                  instruction=instruction, seed=derived_seed(sample_id, run_seed)))
    if not samples:
        raise DataFormatError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return samples


# -- a data-engine store -----------------------------------------------------------------------------------
def _read_store(root: Path, run_seed: int, language: str, include_rejected: bool):
    store = Store(root)
    column = f"instruction_{language}"
    samples = []
    for shard in store.shards(verify=True):
        for record in store.read_shard(shard.name, ["sample_id", column, "reject_reasons"]):
            if record["reject_reasons"] and not include_rejected:
                continue
            sample_id = record["sample_id"]
            samples.append(Sample(sample_id=sample_id, image=str(store.shard_path(shard.name).resolve()),
                                  origin=f"{shard.name}/{sample_id}", instruction=record[column] or "",
                                  seed=derived_seed(sample_id, run_seed), in_store=True))
    return samples, {"input_store": store.config_hash, "language": language, "include_rejected": include_rejected}
