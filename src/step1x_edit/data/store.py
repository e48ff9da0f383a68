"""The Parquet store: atomic shard writes with completion markers, reading, splits, dedup and inspection.

Layout of a store directory::

    store.json                    what produced it: generator, pipeline fingerprint, config hash, shard names
    shards/part-00000.parquet     rows in :data:`~step1x_edit.data.records.SCHEMA`
    shards/.part-00000.done.json  completion marker: row count, input key, config hash, file sha256

Markers and temporaries are hidden (a leading ``.``), so the shard folder opens with standard Parquet readers
(pandas, pyarrow datasets, Ray Data, Hugging Face ``datasets``), which skip hidden files. Stores written before
markers were hidden (``part-00000.done.json``) are read as they are; a command that writes to one renames
their markers. A shard is written to a temporary name and renamed, then its marker is written the same way. A shard counts
as done only when its marker is well-formed, matches the current config hash and input key, and vouches for the
file on disk (same row count and sha256), so an interrupted run rerun with the same command redoes exactly the
unfinished or damaged shards: nothing lost, nothing duplicated. Readers check every listed shard first and
name the missing or damaged ones instead of reading less.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..errors import DataFormatError
from ..validate import MAX_SEED, integer
from .limits import MAX_SHEET_SAMPLES
from .records import COLUMNS, decode_png, records_to_table, split_of, table_to_records

STORE_FORMAT = "step1x-edit-store/1"
MANIFEST = "store.json"
SHARD_DIR = "shards"
# What :meth:`Store.shard_problem` says of a shard none of whose files exist yet.
NOT_WRITTEN = "not written yet"
_SHARD_NAME = re.compile(r"[A-Za-z0-9_-]+")
MARKER_SUFFIX = ".done.json"
# How many shard problems one error message lists before it counts the rest.
_LISTED = 5


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def make_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder, created if needed; a clear error when it is an existing file (``what`` names it in
    the message, e.g. "output store") or cannot be created."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataFormatError(f"{what} {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataFormatError(f"cannot create {what} {folder}: {error.strerror or error}") from None
    return folder


def _shard_of(filename: str) -> str | None:
    """The shard that a file of the shard folder belongs to (its Parquet file or its marker, under either marker
    name), or None for anything else (a leftover temporary)."""
    for prefix, suffix in (("", ".parquet"), (".", MARKER_SUFFIX), ("", MARKER_SUFFIX)):
        if filename.startswith(prefix) and filename.endswith(suffix):
            stem = filename[len(prefix) : -len(suffix)]
            if _SHARD_NAME.fullmatch(stem):
                return stem
    return None


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A completed shard: its Parquet path and its marker's contents."""

    name: str
    path: Path
    rows: int
    key: str


class Store:
    """A store directory (see the module docstring). ``Store(path)`` opens; :meth:`create` starts or resumes one.

    Its rows are editing triplets (:data:`~.records.SCHEMA`); a store of other rows overrides :attr:`columns`,
    :meth:`to_table` and :meth:`from_table` and keeps the shard, marker and checksum discipline."""

    columns: tuple[str, ...] = COLUMNS

    def to_table(self, records: list[dict[str, Any]]) -> pa.Table:
        return records_to_table(records)

    def from_table(self, table: pa.Table) -> list[dict[str, Any]]:
        return table_to_records(table)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR

    # -- creation and manifest -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict[str, Any], overwrite: bool = False) -> Store:
        """Create ``root`` for ``manifest`` (must hold ``config_hash``), or reopen it when it was made by the same
        config. A directory made by a different config is refused unless ``overwrite`` (which clears shards)."""
        store = cls(root)
        make_folder(store.root, "output store")
        make_folder(store.shard_dir, "shard folder")
        if (store.root / MANIFEST).exists():
            try:
                existing = store.manifest()["config_hash"]
            except DataFormatError as error:
                if not overwrite:
                    raise DataFormatError(f"{error}; pass --overwrite to start the store afresh") from None
                existing = None
            if existing != manifest["config_hash"]:
                if not overwrite:
                    raise DataFormatError(
                        f"{store.root} holds a dataset made with a different configuration "
                        f"(config hash {existing} vs {manifest['config_hash']}); "
                        "use another output directory or pass --overwrite"
                    )
                for path in store.shard_dir.iterdir():
                    path.unlink()
        store._write_manifest({"format": STORE_FORMAT, **manifest})
        return store

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        _atomic_write_bytes(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataFormatError(
                f"{self.root} is not a data store (no {MANIFEST}); create one with `data generate`"
            )
        try:
            manifest = json.loads(path.read_bytes())
        except ValueError as error:  # not JSON, or not UTF-8
            raise DataFormatError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise DataFormatError(f"{path} has format {found!r}, expected {STORE_FORMAT!r}")
        if not isinstance(manifest.get("config_hash"), str):
            raise DataFormatError(f"{path} lacks its config_hash")
        names = manifest.get("shards")
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in names)
        ):
            raise DataFormatError(f"{path}: 'shards' must be a list of shard names like 'part-00000'")
        return manifest

    @property
    def config_hash(self) -> str:
        return self.manifest()["config_hash"]

    # -- shards ----------------------------------------------------------------------------------------
    def shard_path(self, name: str) -> Path:
        return self.shard_dir / f"{name}.parquet"

    def marker_path(self, name: str) -> Path:
        """The completion marker of shard ``name``: ``.NAME.done.json``, or ``NAME.done.json`` in a store written
        before markers were hidden when only that one exists."""
        hidden, visible = self._marker_names(name)
        return visible if not hidden.exists() and visible.exists() else hidden

    def _marker_names(self, name: str) -> tuple[Path, Path]:
        """Shard ``name``'s marker path (hidden) and the visible name older stores gave it."""
        return self.shard_dir / f".{name}{MARKER_SUFFIX}", self.shard_dir / f"{name}{MARKER_SUFFIX}"

    def _marker(self, name: str) -> dict[str, Any] | None:
        """The marker of shard ``name`` when it is well-formed, else None: a missing, unreadable or garbled marker
        vouches for nothing."""
        try:
            marker = json.loads(self.marker_path(name).read_bytes())
        except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
            return None
        well_formed = (
            isinstance(marker, dict)
            and marker.get("shard") == name
            and all(isinstance(marker.get(field), str) for field in ("key", "config_hash", "sha256"))
            and _is_count(marker.get("rows"))
        )
        return marker if well_formed else None

    def _problem(self, name: str, marker: dict[str, Any] | None, verify: bool) -> str | None:
        """What is wrong with shard ``name`` given its ``marker``, or None when the Parquet file is there with the
        marker's row count (``verify``: and the marker's sha256, which reads the whole file)."""
        if marker is None:
            if self.marker_path(name).exists():
                return "its completion marker is unreadable or garbled"
            if self.shard_path(name).exists():
                return "it has no completion marker"
            return "neither its Parquet file nor its completion marker exists"
        path = self.shard_path(name)
        if not path.is_file():
            return "its Parquet file is missing"
        try:
            rows = pq.read_metadata(path).num_rows  # the footer only
        except Exception:  # pyarrow raises several types for damaged files
            return "its Parquet file is truncated or not Parquet"
        if rows != marker["rows"]:
            return f"its Parquet file holds {rows} rows but its marker says {marker['rows']}"
        if verify and _sha256(path.read_bytes()) != marker["sha256"]:
            return "its Parquet file does not match the sha256 in its completion marker"
        return None

    def shard_problem(self, name: str, key: str, config_hash: str) -> str | None:
        """None when shard ``name`` is complete for input ``key`` under ``config_hash`` (the store's) and its file
        matches its marker; otherwise why it must be (re)built (:data:`NOT_WRITTEN` when none of its files
        exist)."""
        marker = self._marker(name)
        if marker is None and not self.marker_path(name).exists() and not self.shard_path(name).exists():
            return NOT_WRITTEN
        if marker is not None and (marker["key"] != key or marker["config_hash"] != config_hash):
            return "its input or configuration changed"
        return self._problem(name, marker, verify=True)

    def write_shard(
        self, name: str, records: list[dict[str, Any]], key: str, config_hash: str
    ) -> dict[str, Any]:
        """Write ``records`` as shard ``name`` atomically, then its marker. Returns the marker contents."""
        records = sorted(records, key=lambda record: record["sample_id"])
        table = self.to_table(records)
        path = self.shard_path(name)
        marker, visible = self._marker_names(name)
        for stale in (marker, visible):  # a stale marker must never vouch for a new file
            stale.unlink(missing_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, temporary, compression="zstd")
        digest = _sha256(temporary.read_bytes())
        os.replace(temporary, path)
        info = {"shard": name, "rows": len(records), "key": key, "config_hash": config_hash, "sha256": digest}
        _atomic_write_bytes(marker, json.dumps(info, sort_keys=True).encode("utf-8"))
        return info

    def set_shards(self, names: Sequence[str]) -> None:
        """Record ``names`` in the manifest as the store's shards (so a reader can tell when one is missing),
        delete the files of other shards and leftover temporaries, and hide markers that older stores left
        visible (renamed, so their bytes and what they vouch for stay the same)."""
        manifest = self.manifest()
        manifest["shards"] = sorted(names)
        self._write_manifest(manifest)
        keep = set(names)
        for path in list(self.shard_dir.iterdir()):
            name = _shard_of(path.name)
            if name not in keep:
                path.unlink(missing_ok=True)
                continue
            hidden, visible = self._marker_names(name)
            if path == visible:
                if hidden.exists():
                    visible.unlink()
                else:
                    os.replace(visible, hidden)

    def shards(self, verify: bool = False) -> list[ShardInfo]:
        """The store's shards in name order. Each must have a well-formed marker and its Parquet file with the
        marker's row count (``verify``: and sha256); otherwise a :class:`DataFormatError` names every missing or
        damaged shard, so no reader silently reads less than the store holds."""
        names = self.manifest().get("shards")
        if names is None:  # a store written before shard names were recorded: the shards on disk
            on_disk = (_shard_of(path.name) for path in self.shard_dir.iterdir()) if self.shard_dir.is_dir() else ()
            names = sorted({name for name in on_disk if name is not None})
        infos, problems = [], []
        for name in names:
            marker = self._marker(name)
            problem = self._problem(name, marker, verify)
            if problem is None:
                infos.append(ShardInfo(name, self.shard_path(name), marker["rows"], marker["key"]))
            else:
                problems.append(f"{name}: {problem}")
        if problems:
            listed = "; ".join(problems[:_LISTED])
            more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
            raise DataFormatError(
                f"{self.root} is incomplete or damaged, {len(problems)} of {len(names)} shards cannot be read "
                f"({listed}{more}); rerun the command that made it to finish or rebuild them"
            )
        return infos

    # -- reading ---------------------------------------------------------------------------------------
    def read_shard(self, name: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """The records of shard ``name``. Reading all columns checks the file against its marker's sha256; reading
        some columns reads only those (the marker's row count was checked by :meth:`shards`)."""
        path = self.shard_path(name)
        try:
            if columns is None:
                data = path.read_bytes()
                marker = self._marker(name)
                if marker is None or _sha256(data) != marker["sha256"]:
                    raise ValueError("it does not match the sha256 in its completion marker")
                table = pq.read_table(pa.BufferReader(data))
            else:
                table = pq.read_table(path, columns=columns)
        except Exception as error:  # pyarrow raises several types for damaged files
            message = " ".join(str(error).split())
            raise DataFormatError(
                f"cannot read shard {path}: {message}; rerun the command that made the store to rebuild it"
            ) from None
        missing = set(columns or self.columns) - set(table.column_names)
        if missing:
            raise DataFormatError(f"shard {path} lacks columns {sorted(missing)}")
        return self.from_table(table)

    def iter_records(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every record of every shard, in shard order (an error names missing or damaged shards)."""
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
    """Counts per task, reject reasons, and totals (hashes every shard, then reads only small columns)."""
    per_task: Counter[str] = Counter()
    rejected_per_task: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    empty_instructions = 0
    total = 0
    shards = store.shards(verify=True)  # inspecting a store checks every shard against its checksum
    columns = ["task", "reject_reasons", "instruction_en", "instruction_zh"]
    for shard in shards:
        for record in store.read_shard(shard.name, columns):
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
        "shards": len(shards),
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

    count = integer("count", count, 1, MAX_SHEET_SAMPLES)
    seed = integer("seed", seed, 0, MAX_SEED)
    out = Path(path)
    if out.is_dir():
        raise DataFormatError(f"contact sheet path {out} is a folder; give a file path such as {out / 'sheet.png'}")
    make_folder(out.parent, "contact sheet folder")

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
    sheet.save(out, format="PNG")
    return out
