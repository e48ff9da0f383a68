"""Export a store to WebDataset shards or the official fine-tuning metadata JSON; import from that JSON or from
a folder of pairs.

Official metadata JSON: ``{target_path: {"ref_image_path": source_path, "caption": instruction}}``; paths are
absolute, or relative to an image directory (by default the JSON file's directory). Folder of pairs: ``source/NAME.ext`` and ``target/NAME.ext``
(same NAME), optional ``masks/NAME.png``, and optional ``instructions.jsonl`` with lines
``{"name": ..., "instruction_en": ..., "instruction_zh": ..., "task": ...}``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataFormatError
from ..validate import integer
from .limits import MAX_SAMPLES_PER_SHARD, MAX_SHARD_SIZE
from .records import json_type, make_record, split_of, stable_hash, string_field
from .store import Store, deduplicate, make_folder

IMPORT_GENERATOR = "step1x-edit-import"
IMPORT_VERSION = "1.0"


def _accepted(
    store: Store, include_rejected: bool, split: str | None, validation_fraction: float
) -> Iterator[dict[str, Any]]:
    for record in store.iter_records():
        if record["reject_reasons"] and not include_rejected:
            continue
        if split is not None and split_of(record["sample_id"], validation_fraction) != split:
            continue
        yield record


def export_webdataset(
    store_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    include_rejected: bool = False,
    split: str | None = None,
    validation_fraction: float = 0.05,
    progress: bool = True,
) -> list[Path]:
    """Write ``shard-XXXXX.tar`` files; each sample is ``KEY.src.png``, ``KEY.tgt.png``, optional
    ``KEY.mask.png`` and ``KEY.json`` (instructions, task, scores, provenance). Returns the tar paths."""
    samples_per_shard = integer("samples_per_shard", samples_per_shard, 1, MAX_SAMPLES_PER_SHARD)
    store = Store(store_dir)
    out = make_folder(out_dir, "output folder")
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None
    count = 0
    try:
        for record in tqdm(
            _accepted(store, include_rejected, split, validation_fraction),
            total=len(store),
            disable=not progress,
            unit="sample",
        ):
            if count % samples_per_shard == 0:
                if tar is not None:
                    tar.close()
                    os.replace(paths[-1].with_suffix(".tar.tmp"), paths[-1])
                paths.append(out / f"shard-{len(paths):05d}.tar")
                tar = tarfile.open(paths[-1].with_suffix(".tar.tmp"), "w")
            key = record["sample_id"].replace(".", "_")
            meta = {
                k: record[k]
                for k in (
                    "sample_id",
                    "task",
                    "instruction_en",
                    "instruction_zh",
                    "generator",
                    "seed",
                    "scores",
                    "score_reasons",
                    "reject_reasons",
                    "provenance",
                    "width",
                    "height",
                )
            }
            meta["meta"] = json.loads(record["meta"] or "{}")
            members = [("src.png", record["source_image"]), ("tgt.png", record["target_image"])]
            if record["mask"] is not None:
                members.append(("mask.png", record["mask"]))
            members.append(("json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")))
            for suffix, data in members:
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            count += 1
    except BaseException:  # a damaged shard or an interrupt: no half-written tar under a final name
        if tar is not None:
            tar.close()
            paths[-1].with_suffix(".tar.tmp").unlink(missing_ok=True)
        raise
    if tar is not None:
        tar.close()
        os.replace(paths[-1].with_suffix(".tar.tmp"), paths[-1])
    return paths


def export_official_json(
    store_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    language: str = "en",
    include_rejected: bool = False,
    split: str | None = None,
    validation_fraction: float = 0.05,
    progress: bool = True,
    absolute_paths: bool = True,
) -> Path:
    """Write ``images/ID_src.png``, ``images/ID_tgt.png`` and ``metadata.json`` in the official fine-tuning
    format. Paths are absolute by default, as the official loader expects for ``ref_image_path``;
    ``absolute_paths=False`` writes them relative to ``out_dir`` (portable, for :func:`import_official_json`).
    ``language`` picks the caption: ``en`` or ``zh``."""
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    store = Store(store_dir)
    out = make_folder(out_dir, "output folder")
    make_folder(out / "images", "image folder")
    metadata: dict[str, dict[str, str]] = {}
    for record in tqdm(
        _accepted(store, include_rejected, split, validation_fraction),
        total=len(store),
        disable=not progress,
        unit="sample",
    ):
        caption = record[f"instruction_{language}"]
        if not caption:
            continue
        source, target = f"images/{record['sample_id']}_src.png", f"images/{record['sample_id']}_tgt.png"
        (out / source).write_bytes(record["source_image"])
        (out / target).write_bytes(record["target_image"])
        if absolute_paths:
            source, target = str((out / source).resolve()), str((out / target).resolve())
        metadata[target] = {"ref_image_path": source, "caption": caption}
    path = out / "metadata.json"
    path.write_text(json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataFormatError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} is not UTF-8 text (byte {error.start})") from None


def _write_import(
    out_dir, records: list[dict[str, Any]], fingerprint: dict[str, Any], shard_size: int, overwrite: bool
) -> Store:
    shard_size = integer("shard_size", shard_size, 1, MAX_SHARD_SIZE)
    config_hash = stable_hash(fingerprint, length=12)
    store = Store.create(
        out_dir, {"config_hash": config_hash, "generator": IMPORT_GENERATOR, "config": fingerprint}, overwrite
    )
    starts = range(0, len(records), shard_size)
    names = [f"part-{start // shard_size:05d}" for start in starts]
    store.set_shards(names)
    for name, start in zip(names, starts, strict=True):
        chunk = records[start : start + shard_size]
        store.write_shard(name, chunk, stable_hash([r["sample_id"] for r in chunk]), config_hash)
    deduplicate(store)
    return store


def _import_record(
    source_path: Path,
    target_path: Path,
    en: str,
    zh: str,
    task: str,
    mask_path: Path | None,
    license: str | None,
    fingerprint_hash: str,
) -> dict[str, Any]:
    from ..image_io import load_image

    source, target = load_image(source_path), load_image(target_path)
    if source.size != target.size:
        raise DataFormatError(
            f"{source_path} is {source.size[0]}x{source.size[1]} but its target {target_path} is "
            f"{target.size[0]}x{target.size[1]}; an editing pair must share one size"
        )
    mask = None
    if mask_path is not None:
        from PIL import Image

        mask = load_image(mask_path).convert("L").resize(source.size, Image.Resampling.NEAREST)
    generator = {"name": IMPORT_GENERATOR, "version": IMPORT_VERSION, "config_hash": fingerprint_hash}
    return make_record(
        sample_id=f"import-{stable_hash(str(source_path), str(target_path), en)}",
        task=task,
        source=source,
        target=target,
        instruction_en=en,
        instruction_zh=zh,
        generator=generator,
        mask=mask,
        provenance={"source_path": str(source_path), "license": license},
        meta={"target_path": str(target_path)},
    )


def import_official_json(
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str = "unknown",
    language: str = "en",
    license: str | None = None,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    image_dir: str | os.PathLike | None = None,
) -> Store:
    """Read an official metadata JSON into a store (the caption goes to ``instruction_<language>``). Relative
    paths are resolved against ``image_dir`` (default: the JSON file's directory)."""
    path = Path(json_path)
    base = Path(image_dir) if image_dir is not None else path.parent
    try:
        metadata = json.loads(path.read_bytes())
    except OSError as error:
        raise DataFormatError(f"cannot read metadata JSON {path}: {error.strerror or error}") from None
    except ValueError as error:  # not JSON, or not UTF-8
        raise DataFormatError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise DataFormatError(
            f"{path} must map target paths to {{'ref_image_path', 'caption'}} objects, got {json_type(metadata)}"
        )
    fingerprint = {
        "kind": "official-json",
        "path": str(path.resolve()),
        "task": task,
        "language": language,
        "license": license,
    }
    fp_hash = stable_hash(fingerprint, length=12)
    records = []
    for target, entry in tqdm(sorted(metadata.items()), disable=not progress, unit="sample"):
        where = f"{path}: entry {target!r}"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where} must be an object with 'ref_image_path' and 'caption', got "
                                  f"{json_type(entry)}")
        for field in ("ref_image_path", "caption"):
            if field not in entry:
                raise DataFormatError(f"{where} lacks '{field}'")
            string_field(entry, field, where)
        caption = entry["caption"]
        en, zh = (caption, "") if language == "en" else ("", caption)
        records.append(
            _import_record(
                base / entry["ref_image_path"],
                base / target,
                en,
                zh,
                task,
                None,
                license,
                fp_hash,
            )
        )
    return _write_import(out_dir, records, fingerprint, shard_size, overwrite)


def import_pair_folder(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str = "unknown",
    license: str | None = None,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> Store:
    """Read a folder of pairs (layout in the module docstring) into a store."""
    root = Path(folder)
    source_dir, target_dir = root / "source", root / "target"
    if not source_dir.is_dir() or not target_dir.is_dir():
        raise DataFormatError(f"{root} needs 'source/' and 'target/' subfolders with matching file names")
    targets = {p.stem: p for p in target_dir.iterdir() if p.is_file()}
    instructions: dict[str, dict[str, Any]] = {}
    listing = root / "instructions.jsonl"
    if listing.is_file():
        for number, line in enumerate(_read_lines(listing), 1):
            if not line.strip():
                continue
            where = f"{listing}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{where}: not JSON: {error}") from None
            if not isinstance(entry, dict) or "name" not in entry:
                raise DataFormatError(f"{where}: expected a JSON object with 'name', got {json_type(entry)}")
            for field in ("name", "instruction_en", "instruction_zh", "task"):
                if field in entry:
                    string_field(entry, field, where)
            instructions[entry["name"]] = entry
    fingerprint = {"kind": "pair-folder", "path": str(root.resolve()), "task": task, "license": license}
    fp_hash = stable_hash(fingerprint, length=12)
    records = []
    for source in tqdm(
        sorted(p for p in source_dir.iterdir() if p.is_file()), disable=not progress, unit="sample"
    ):
        if source.stem not in targets:
            raise DataFormatError(f"{source} has no target with the same name in {target_dir}")
        entry = instructions.get(source.stem, {})
        mask = root / "masks" / f"{source.stem}.png"
        records.append(
            _import_record(
                source,
                targets[source.stem],
                entry.get("instruction_en", ""),
                entry.get("instruction_zh", ""),
                entry.get("task", task),
                mask if mask.is_file() else None,
                license,
                fp_hash,
            )
        )
    if not records:
        raise DataFormatError(f"no images in {source_dir}")
    return _write_import(out_dir, records, fingerprint, shard_size, overwrite)
