"""Building stores: synthetic generation, model-free edits of a photo folder, and derived stores.

Each builder plans shards (deterministic ids and seeds; the task of sample ``i`` is ``tasks[i % len(tasks)]``),
wraps the work in a :class:`~.stages.Pipeline` and hands it to an executor. Sample ids and seeds depend on the
config and the sample index only, so a rerun of the same command redoes just the unfinished shards, and a run
with a larger ``count`` keeps every sample of the smaller one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..validate import MAX_SEED, integer, number
from .errors import DataConfigError
from .executors import LocalExecutor, RayExecutor, ShardSpec, run_pipeline
from .limits import MAX_ASPECT, MAX_COUNT, MAX_PHOTO_SIDE, MAX_SHARD_SIZE, MAX_SIDE, MIN_SIDE
from .records import json_type, make_record, stable_hash, stable_int, string_field
from .stages import Pipeline, Record, Stage
from .store import Store, deduplicate
from .synthetic.generators import TASKS, generate_sample
from .synthetic.world import COLORS

SYNTHETIC_GENERATOR = "step1x-edit-synthetic"
SYNTHETIC_VERSION = "1.0"
FOLDER_GENERATOR = "step1x-edit-photo-ops"
FOLDER_VERSION = "1.0"
REGION_GENERATOR = "step1x-edit-region-ops"
REGION_VERSION = "1.0"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def parse_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list (or a sequence) of task names, validated."""
    names = (
        list(TASKS)
        if tasks == "all"
        else [t.strip() for t in tasks.split(",")]
        if isinstance(tasks, str)
        else list(tasks)
    )
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise DataConfigError(f"unknown task(s) {unknown or names}; choose from: all, {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic dataset except its size."""

    tasks: tuple[str, ...] = TASKS
    resolution: tuple[int, int] = (128, 256)
    aspect_ratios: tuple[float, ...] = (1.0,)
    seed: int = 0
    shard_size: int = 256
    antialias: bool = False

    def __post_init__(self) -> None:
        parse_tasks(self.tasks)
        integer("shard_size", self.shard_size, 1, MAX_SHARD_SIZE)
        integer("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.resolution, (tuple, list)) or len(self.resolution) != 2:
            raise DataConfigError(f"resolution must be a range (min, max), got {self.resolution!r}")
        low, high = (integer("resolution", side, MIN_SIDE, MAX_SIDE) for side in self.resolution)
        if high < low:
            raise DataConfigError(f"resolution must be a range (min, max) with min <= max, got {self.resolution}")
        if not self.aspect_ratios:
            raise DataConfigError("aspect ratios must not be empty")
        for ratio in self.aspect_ratios:
            number("aspect ratio", ratio, 1 / MAX_ASPECT, MAX_ASPECT)


class RenderSynthetic:
    """Stage function: seed records (``sample_id``, ``task``, ``seed``) → full records."""

    def __init__(self, config: SyntheticConfig, generator: dict[str, str]):
        self.config = config
        self.generator = generator

    def __call__(self, batch: list[Record]) -> list[Record]:
        out = []
        for seed_record in batch:
            config = self.config
            sample = generate_sample(
                seed_record["task"],
                seed_record["seed"],
                config.resolution,
                config.aspect_ratios,
                antialias=config.antialias,
            )
            out.append(
                make_record(
                    sample_id=seed_record["sample_id"],
                    task=sample.task,
                    source=sample.source,
                    target=sample.target,
                    instruction_en=sample.instruction_en,
                    instruction_zh=sample.instruction_zh,
                    mask=sample.mask,
                    generator=self.generator,
                    seed=sample.seed,
                    provenance={"license": "CC0-1.0 (procedurally generated)"},
                    meta=sample.meta,
                )
            )
        return out


def synthetic_pipeline(config: SyntheticConfig) -> tuple[Pipeline, str]:
    """The one-stage generation pipeline and its config hash."""
    fingerprint = {"generator": SYNTHETIC_GENERATOR, "version": SYNTHETIC_VERSION, **asdict(config)}
    config_hash = stable_hash(fingerprint, length=12)
    generator = {"name": SYNTHETIC_GENERATOR, "version": SYNTHETIC_VERSION, "config_hash": config_hash}
    stage = Stage(
        "render_synthetic",
        RenderSynthetic(config, generator),
        version=SYNTHETIC_VERSION,
        config=fingerprint,
        batch_size=64,
    )
    return Pipeline((stage,)), config_hash


def plan_synthetic(count: int, config: SyntheticConfig, config_hash: str) -> list[ShardSpec]:
    """Shards of seed records for samples ``0 .. count-1``."""
    integer("count", count, 1, MAX_COUNT)
    shards = []
    for start in range(0, count, config.shard_size):
        indices = range(start, min(count, start + config.shard_size))
        records = tuple(
            {
                "sample_id": f"{config_hash[:8]}-{index:08d}",
                "task": config.tasks[index % len(config.tasks)],
                "seed": stable_int(config.seed, index),
            }
            for index in indices
        )
        shards.append(
            ShardSpec(
                f"part-{start // config.shard_size:05d}", stable_hash(indices.start, indices.stop), records
            )
        )
    return shards


def generate_dataset(
    out_dir: str | os.PathLike,
    count: int,
    config: SyntheticConfig = SyntheticConfig(),
    executor: LocalExecutor | RayExecutor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Store:
    """Generate ``count`` synthetic triplets into ``out_dir`` (resumable; see the module docstring)."""
    integer("count", count, 1, MAX_COUNT)
    pipeline, config_hash = synthetic_pipeline(config)
    manifest = {
        "config_hash": config_hash,
        "generator": SYNTHETIC_GENERATOR,
        "version": SYNTHETIC_VERSION,
        "config": asdict(config),
        "pipeline": pipeline.fingerprint()[0]["name"],
    }
    store = Store.create(out_dir, manifest, overwrite=overwrite)
    run_pipeline(pipeline, plan_synthetic(count, config, config_hash), store, executor, progress)
    deduplicate(store)
    return store


# -- photos ----------------------------------------------------------------------------------------------
def _load_downscaled(path: str, max_side: int):
    """The photo at ``path`` as RGB, shrunk (Lanczos) so its longer side is at most ``max_side``, and the scale
    applied (1.0 when it already fits; boxes given in original pixels are multiplied by it)."""
    from PIL import Image

    from ..image_io import load_image

    image = load_image(path)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1:
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image, scale


class _PhotoStage:
    """Shared part of the stage functions that turn user photos into triplets: the generator tag, the size cap and
    how a photo-derived record is built (provenance from the photo's path and licence)."""

    def __init__(self, generator: dict[str, str], max_side: int):
        self.generator = generator
        self.max_side = max_side

    def _record(self, item: Record, source, target, instruction: tuple[str, str], **fields) -> Record:
        return make_record(
            sample_id=item["sample_id"],
            task=item["task"],
            source=source,
            target=target,
            instruction_en=instruction[0],
            instruction_zh=instruction[1],
            generator=self.generator,
            provenance={"source_path": item["path"], "license": item.get("license")},
            **fields,
        )


class RenderPhotoOps(_PhotoStage):
    """Stage function: photo paths → tone or style triplets (the operation is drawn from the sample seed)."""

    def __call__(self, batch: list[Record]) -> list[Record]:
        import random

        from .synthetic.language import sentence
        from .tasks.style import STYLES, apply_style
        from .tasks.tone import TONE_OPS, apply_tone

        out = []
        for item in batch:
            image, _ = _load_downscaled(item["path"], self.max_side)
            rng = random.Random(item["seed"])
            if item["task"] == "tone_transformation":
                op = rng.choice(list(TONE_OPS))
                target, (_, en, zh) = apply_tone(image, op), TONE_OPS[op]
            else:
                op = rng.choice(list(STYLES))
                target, (_, en, zh) = apply_style(image, op), STYLES[op]
            instruction = sentence(rng.choice(en), rng.choice(zh))
            out.append(self._record(item, image, target, instruction, seed=item["seed"], meta={"op": op}))
        return out


def generate_from_photos(
    out_dir: str | os.PathLike,
    photo_dir: str | os.PathLike,
    tasks: Sequence[str] = ("tone_transformation", "style_transfer"),
    seed: int = 0,
    max_side: int = 1024,
    shard_size: int = 64,
    license: str | None = None,
    executor: LocalExecutor | RayExecutor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Store:
    """One tone and/or style triplet per photo of ``photo_dir`` (recursively), no model needed."""
    integer("seed", seed, 0, MAX_SEED)
    integer("max_side", max_side, MIN_SIDE, MAX_PHOTO_SIDE)
    integer("shard_size", shard_size, 1, MAX_SHARD_SIZE)
    allowed = {"tone_transformation", "style_transfer"}
    if not set(tasks) <= allowed:
        raise DataConfigError(f"photo folders support {sorted(allowed)} without a model; got {list(tasks)}")
    root = Path(photo_dir)
    if not root.is_dir():
        raise DataFormatError(f"photo folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataFormatError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    fingerprint = {
        "generator": FOLDER_GENERATOR,
        "version": FOLDER_VERSION,
        "tasks": list(tasks),
        "seed": seed,
        "max_side": max_side,
        "shard_size": shard_size,
        "root": str(root.resolve()),
    }
    config_hash = stable_hash(fingerprint, length=12)
    generator = {"name": FOLDER_GENERATOR, "version": FOLDER_VERSION, "config_hash": config_hash}
    items = []
    for path in paths:
        relative = str(path.relative_to(root))
        for task in tasks:
            items.append(
                {
                    "sample_id": f"{config_hash[:8]}-{hashlib.sha1(f'{relative}:{task}'.encode()).hexdigest()[:16]}",
                    "task": task,
                    "seed": stable_int(seed, relative, task),
                    "path": str(path),
                    "license": license,
                }
            )
    stage = Stage(
        "photo_ops",
        RenderPhotoOps(generator, max_side),
        version=FOLDER_VERSION,
        config=fingerprint,
        batch_size=8,
    )
    return _run_items(out_dir, items, fingerprint, stage, shard_size, executor, overwrite, progress)


def _run_items(out_dir, items, fingerprint, stage, shard_size, executor, overwrite, progress) -> Store:
    """Shard ``items`` (each with a ``path`` whose size and mtime enter the shard key) and run ``stage``."""
    shards = []
    for start in range(0, len(items), shard_size):
        chunk = tuple(items[start : start + shard_size])
        key = stable_hash(
            [(item, os.path.getsize(item["path"]), os.path.getmtime(item["path"])) for item in chunk]
        )
        shards.append(ShardSpec(f"part-{start // shard_size:05d}", key, chunk))
    manifest = {
        "config_hash": stable_hash(fingerprint, length=12),
        "generator": fingerprint["generator"],
        "config": fingerprint,
    }
    store = Store.create(out_dir, manifest, overwrite)
    run_pipeline(Pipeline((stage,)), shards, store, executor, progress)
    deduplicate(store)
    return store


# Neutral colours are allowed for real images in addition to the synthetic palette: name -> (RGB, Chinese).
REGION_COLORS = {
    **COLORS,
    "white": ((245, 245, 245), "白色"),
    "black": ((25, 25, 25), "黑色"),
    "gray": ((128, 128, 128), "灰色"),
}


class RenderRegionEdits(_PhotoStage):
    """Stage function: region-edit specs (colour alteration with a mask, text replacement in a box) → triplets."""

    def __call__(self, batch: list[Record]) -> list[Record]:
        from PIL import Image

        from ..image_io import load_image
        from .tasks.local import recolor_region, replace_text

        out = []
        for item in batch:
            image, scale = _load_downscaled(item["path"], self.max_side)
            if item["task"] == "color_alteration":
                mask = load_image(item["mask"]).convert("L").resize(image.size, Image.Resampling.NEAREST)
                rgb, color_zh = REGION_COLORS[item["color"]]
                target = recolor_region(image, mask, rgb)
                obj_en, obj_zh = (
                    item.get("object") or "selected object",
                    item.get("object_zh") or "选中的物体",
                )
                instruction = (f"Make the {obj_en} {item['color']}.", f"把{obj_zh}变成{color_zh}。")
            else:
                box = tuple(round(value * scale) for value in item["box"])
                target = replace_text(image, box, item["text"])
                mask = Image.new("L", image.size, 0)
                mask.paste(255, box)
                old = item.get("old_text")
                instruction = (
                    (f'Change the text "{old}" to "{item["text"]}".', f"把文字“{old}”改成“{item['text']}”。")
                    if old
                    else (f'Change the text to "{item["text"]}".', f"把文字改成“{item['text']}”。")
                )
            out.append(
                self._record(
                    item,
                    image,
                    target,
                    instruction,
                    mask=mask,
                    seed=None,
                    meta={
                        key: item[key]
                        for key in ("color", "object", "box", "text", "old_text")
                        if item.get(key) is not None
                    },
                )
            )
        return out


def generate_region_edits(
    out_dir: str | os.PathLike,
    spec_path: str | os.PathLike,
    max_side: int = 1024,
    shard_size: int = 64,
    executor: LocalExecutor | RayExecutor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Store:
    """Colour and text edits of real images from a JSON-lines spec, one edit per line (relative paths are
    relative to the spec file)::

        {"image": "car.jpg", "task": "color_alteration", "mask": "car_mask.png", "color": "green",
         "object": "car", "object_zh": "汽车"}
        {"image": "shop.jpg", "task": "text_modification", "box": [40, 10, 200, 60], "text": "CLOSED",
         "old_text": "OPEN"}

    Pixels outside the mask (or box) stay identical; ``license`` may be given per line.
    """
    integer("max_side", max_side, MIN_SIDE, MAX_PHOTO_SIDE)
    integer("shard_size", shard_size, 1, MAX_SHARD_SIZE)
    spec = Path(spec_path)
    try:
        lines = spec.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataFormatError(f"cannot read region-edit spec {spec}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"region-edit spec {spec} is not UTF-8 text (byte {error.start})") from None
    items = []
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{spec}:{line_number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{where}: not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {json_type(entry)}")
        task = entry.get("task")
        required = {
            "color_alteration": ("image", "mask", "color"),
            "text_modification": ("image", "box", "text"),
        }.get(task) if isinstance(task, str) else None
        if required is None:
            raise DataFormatError(
                f"{where}: task must be color_alteration or text_modification, got {task!r}"
            )
        missing = [key for key in required if key not in entry]
        if missing:
            raise DataFormatError(f"{where}: {task} needs {', '.join(missing)}")
        for field in ("image", "mask", "color", "text", "old_text", "object", "object_zh", "license"):
            if field in entry:
                string_field(entry, field, where)
        if task == "color_alteration" and entry["color"] not in REGION_COLORS:
            raise DataFormatError(
                f"{where}: color must be one of {', '.join(REGION_COLORS)}, got {entry['color']!r}"
            )
        if task == "text_modification":
            box = entry["box"]
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(type(value) is int and value >= 0 for value in box)
                and box[0] < box[2]
                and box[1] < box[3]
            ):
                raise DataFormatError(
                    f"{where}: box must be [x0, y0, x1, y1] in pixels with x0 < x1 and y0 < y1, got {box!r}"
                )
            if not entry["text"].strip():
                raise DataFormatError(f"{where}: text is empty")
        item = {key: value for key, value in entry.items() if key != "image"}
        item["path"] = str(spec.parent / entry["image"])
        if "mask" in item:
            item["mask"] = str(spec.parent / item["mask"])
        for key in ("path", "mask"):
            if key in item and not Path(item[key]).is_file():
                raise DataFormatError(f"{where}: file not found: {item[key]}")
        item["sample_id"] = f"region-{stable_hash(item)}"
        items.append(item)
    if not items:
        raise DataFormatError(f"{spec} lists no edits")
    fingerprint = {
        "generator": REGION_GENERATOR,
        "version": REGION_VERSION,
        "spec": str(spec.resolve()),
        "max_side": max_side,
        "shard_size": shard_size,
    }
    generator = {
        "name": REGION_GENERATOR,
        "version": REGION_VERSION,
        "config_hash": stable_hash(fingerprint, length=12),
    }
    stage = Stage(
        "region_edits",
        RenderRegionEdits(generator, max_side),
        version=REGION_VERSION,
        config=fingerprint,
        batch_size=8,
    )
    return _run_items(out_dir, items, fingerprint, stage, shard_size, executor, overwrite, progress)


# -- derived stores --------------------------------------------------------------------------------------
def transform_store(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pipeline: Pipeline,
    executor: LocalExecutor | RayExecutor | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> Store:
    """Apply ``pipeline`` to every shard of the store at ``input_dir`` and write the result to ``out_dir``
    (same shard names; resumable). The output manifest records the parent store and the pipeline."""
    source = Store(input_dir)
    parent = source.manifest()
    if Path(input_dir).resolve() == Path(out_dir).resolve():
        raise DataFormatError("the output store must be a different directory from the input store")
    inputs = source.shards(verify=True)  # a damaged input shard is named here, not half-read by a worker
    config_hash = pipeline.config_hash({"parent": parent["config_hash"], **(extra or {})})
    manifest = {
        "config_hash": config_hash,
        "parent": {"path": str(Path(input_dir).resolve()), "config_hash": parent["config_hash"]},
        "pipeline": pipeline.fingerprint(),
        "generator": parent.get("generator"),
    }
    store = Store.create(out_dir, manifest, overwrite=overwrite)
    shards = [
        ShardSpec(
            info.name,
            stable_hash(info.key, info.rows, _file_sha(source.marker_path(info.name))),
            input_path=str(info.path),
        )
        for info in inputs
    ]
    run_pipeline(pipeline, shards, store, executor, progress)
    return store


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
