"""The Parquet store: atomic shard writes with completion markers, reading, splits, dedup and inspection.

Layout of a store directory::

    store.json                    what produced it: generator, pipeline fingerprint, config hash
    shards/part-00000.parquet     rows in :data:`~step1x_edit.data.records.SCHEMA`
    shards/part-00000.done.json   completion marker: row count, input key, config hash, file sha256

A shard is written to a temporary name and renamed, then its marker is written the same way. A shard counts
as done only when its marker exists and matches the current config hash and input key, so an interrupted run
rerun with the same command redoes exactly the unfinished shards: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from ..errors import DataFormatError
from .records import COLUMNS, decode_png, records_to_table, split_of, table_to_records

STORE_FORMAT = "step1x-edit-store/1"
MANIFEST = "store.json"
SHARD_DIR = "shards"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@dataclass(frozen=True)
class ShardInfo:
    """A completed shard: its Parquet path and its marker's contents."""

    name: str
    path: Path
    rows: int
    key: str


class Store:
    """A store directory (see the module docstring). ``Store(path)`` opens; :meth:`create` starts or resumes one."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR

    # -- creation and manifest -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict[str, Any], overwrite: bool = False) -> Store:
        """Create ``root`` for ``manifest`` (must hold ``config_hash``), or reopen it when it was made by the same
        config. A directory made by a different config is refused unless ``overwrite`` (which clears shards)."""
        store = cls(root)
        store.shard_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = store.root / MANIFEST
        if manifest_path.exists():
            existing = store.manifest()
            if existing.get("config_hash") != manifest["config_hash"]:
                if not overwrite:
                    raise DataFormatError(
                        f"{store.root} holds a dataset made with a different configuration "
                        f"(config hash {existing.get('config_hash')} vs {manifest['config_hash']}); "
                        "use another output directory or pass --overwrite"
                    )
                for path in store.shard_dir.iterdir():
                    path.unlink()
        payload = {"format": STORE_FORMAT, **manifest}
        _atomic_write_bytes(manifest_path, json.dumps(payload, indent=2, sort_keys=True).encode("utf-8"))
        return store

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataFormatError(
                f"{self.root} is not a data store (no {MANIFEST}); create one with `data generate`"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path} is not valid JSON: {error}") from error
        if manifest.get("format") != STORE_FORMAT:
            raise DataFormatError(f"{path} has format {manifest.get('format')!r}, expected {STORE_FORMAT!r}")
        return manifest

    @property
    def config_hash(self) -> str:
        return self.manifest()["config_hash"]

    # -- shards ----------------------------------------------------------------------------------------
    def shard_path(self, name: str) -> Path:
        return self.shard_dir / f"{name}.parquet"

    def marker_path(self, name: str) -> Path:
        return self.shard_dir / f"{name}.done.json"

    def is_done(self, name: str, key: str) -> bool:
        """True when shard ``name`` was completed for input ``key`` under the current config hash."""
        marker = self.marker_path(name)
        if not marker.is_file() or not self.shard_path(name).is_file():
            return False
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return False
        return data.get("key") == key and data.get("config_hash") == self.config_hash

    def write_shard(
        self, name: str, records: list[dict[str, Any]], key: str, config_hash: str
    ) -> dict[str, Any]:
        """Write ``records`` as shard ``name`` atomically, then its marker. Returns the marker contents."""
        records = sorted(records, key=lambda record: record["sample_id"])
        table = records_to_table(records)
        path = self.shard_path(name)
        marker = self.marker_path(name)
        marker.unlink(missing_ok=True)  # a stale marker must never vouch for a new file
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, temporary, compression="zstd")
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
        os.replace(temporary, path)
        info = {"shard": name, "rows": len(records), "key": key, "config_hash": config_hash, "sha256": digest}
        _atomic_write_bytes(marker, json.dumps(info, sort_keys=True).encode("utf-8"))
        return info

    def shards(self) -> list[ShardInfo]:
        """Completed shards, in name order (unfinished or orphaned files are ignored)."""
        self.manifest()  # a clear error when this is not a store
        infos = []
        for marker in sorted(self.shard_dir.glob("*.done.json")):
            data = json.loads(marker.read_text(encoding="utf-8"))
            path = self.shard_path(data["shard"])
            if path.is_file():
                infos.append(ShardInfo(data["shard"], path, int(data["rows"]), data["key"]))
        return infos

    def remove_stale(self, keep: set[str]) -> None:
        """Delete shards (and their markers and temporaries) whose name is not in ``keep``."""
        for path in list(self.shard_dir.iterdir()):
            name = path.name
            if name.startswith("."):
                path.unlink(missing_ok=True)
                continue
            stem = name.removesuffix(".done.json").removesuffix(".parquet")
            if stem not in keep:
                path.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------------------
    def read_shard(self, name: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        path = self.shard_path(name)
        try:
            table = pq.read_table(path, columns=columns)
        except Exception as error:  # pyarrow raises several types for damaged files
            raise DataFormatError(f"cannot read shard {path}: {error}") from error
        missing = set(columns or COLUMNS) - set(table.column_names)
        if missing:
            raise DataFormatError(f"shard {path} lacks columns {sorted(missing)}")
        return table_to_records(table)

    def iter_records(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every record of every completed shard, in shard order."""
        for shard in self.shards():
            yield from self.read_shard(shard.name, columns)

    def __len__(self) -> int:
        return sum(shard.rows for shard in self.shards())


@dataclass
class TrainingSample:
    """One decoded triplet for training or evaluation."""

    sample_id: str
    task: str
    source: Image.Image
    target: Image.Image
    instruction_en: str
    instruction_zh: str
    mask: Image.Image | None


def iter_samples(
    store_dir: str | os.PathLike,
    split: str | None = "train",
    validation_fraction: float = 0.05,
    tasks: list[str] | None = None,
    include_rejected: bool = False,
) -> Iterator[TrainingSample]:
    """Decoded samples of a store. ``split`` is ``"train"``, ``"validation"`` or ``None`` (all); the split is a
    hash of ``sample_id`` (:func:`~step1x_edit.data.records.split_of`), so it is stable across stores and runs.
    Rejected samples (non-empty ``reject_reasons``) are skipped unless ``include_rejected``."""
    if split not in (None, "train", "validation"):
        raise ValueError(f"split must be 'train', 'validation' or None, got {split!r}")
    for record in Store(store_dir).iter_records():
        if tasks is not None and record["task"] not in tasks:
            continue
        if record["reject_reasons"] and not include_rejected:
            continue
        if split is not None and split_of(record["sample_id"], validation_fraction) != split:
            continue
        yield TrainingSample(
            sample_id=record["sample_id"],
            task=record["task"],
            source=decode_png(record["source_image"]),
            target=decode_png(record["target_image"]),
            instruction_en=record["instruction_en"] or "",
            instruction_zh=record["instruction_zh"] or "",
            mask=decode_png(record["mask"], "L") if record["mask"] is not None else None,
        )


def deduplicate(store: Store) -> int:
    """Remove exact duplicates (same ``content_hash``) across the store, keeping the first occurrence in shard
    order; affected shards are rewritten atomically with updated markers. Returns the number removed."""
    seen: set[str] = set()
    to_drop: dict[str, set[int]] = {}
    shards = store.shards()
    for shard in shards:
        hashes = store.read_shard(shard.name, ["content_hash"])
        for row, record in enumerate(hashes):
            if record["content_hash"] in seen:
                to_drop.setdefault(shard.name, set()).add(row)
            else:
                seen.add(record["content_hash"])
    removed = 0
    for shard in shards:
        rows = to_drop.get(shard.name)
        if not rows:
            continue
        records = [record for row, record in enumerate(store.read_shard(shard.name)) if row not in rows]
        store.write_shard(shard.name, records, shard.key, store.config_hash)
        removed += len(rows)
    return removed


def summarize(store: Store) -> dict[str, Any]:
    """Counts per task, reject reasons, and totals (reads only small columns)."""
    per_task: Counter[str] = Counter()
    rejected_per_task: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    empty_instructions = 0
    total = 0
    for record in store.iter_records(["task", "reject_reasons", "instruction_en", "instruction_zh"]):
        total += 1
        per_task[record["task"]] += 1
        if record["reject_reasons"]:
            rejected_per_task[record["task"]] += 1
            for reason in record["reject_reasons"]:
                reasons[reason.split(":", 1)[0]] += 1
        if not (record["instruction_en"] or "").strip() or not (record["instruction_zh"] or "").strip():
            empty_instructions += 1
    return {
        "total": total,
        "shards": len(store.shards()),
        "per_task": dict(sorted(per_task.items())),
        "rejected": sum(rejected_per_task.values()),
        "rejected_per_task": dict(sorted(rejected_per_task.items())),
        "reject_reasons": dict(reasons.most_common()),
        "missing_instructions": empty_instructions,
    }


def contact_sheet(
    store: Store, path: str | os.PathLike, count: int = 12, seed: int = 0, cell: int = 160
) -> Path:
    """Write a PNG grid of ``count`` random samples (source | target, task and instruction underneath)."""
    from PIL import ImageDraw, ImageFont

    located = [
        (shard.name, record["sample_id"])
        for shard in store.shards()
        for record in store.read_shard(shard.name, ["sample_id"])
    ]
    if not located:
        raise DataFormatError(f"{store.root} holds no samples")
    chosen = random.Random(seed).sample(located, min(count, len(located)))
    wanted = {sample_id for _, sample_id in chosen}
    picked = [
        record
        for name in sorted({name for name, _ in chosen})  # read only the shards that hold a chosen sample
        for record in store.read_shard(name)
        if record["sample_id"] in wanted
    ]
    columns = 3
    caption = 34
    rows = (len(picked) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (2 * cell + 12), rows * (cell + caption + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    for index, record in enumerate(picked):
        x = (index % columns) * (2 * cell + 12) + 4
        y = (index // columns) * (cell + caption + 8) + 4
        for offset, column in ((0, "source_image"), (cell + 2, "target_image")):
            image = decode_png(record[column])
            image.thumbnail((cell, cell))
            sheet.paste(image, (x + offset, y))
        draw.text((x, y + cell + 2), record["task"], fill=(200, 0, 0), font=font)
        draw.text((x, y + cell + 16), (record["instruction_en"] or "")[:52], fill=(0, 0, 0), font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
