"""The editing-triplet record: the Arrow schema of a store row, PNG encoding, ids, hashes and the split rule.

A record is a plain ``dict`` whose keys are the columns of :data:`SCHEMA`. Images travel as lossless PNG bytes
so that exact ground truth survives storage; :func:`encode_png` / :func:`decode_png` convert to and from PIL.
Named scores are stored as lists of ``{name, value}`` structs (read back as dicts) rather than Arrow maps, which
Hugging Face ``datasets`` cannot load; shards of older stores with map columns read back the same.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
from PIL import Image

from ..errors import DataFormatError


def _named(value_type: pa.DataType) -> pa.DataType:
    """A name → value mapping as a list of ``{name, value}`` structs."""
    return pa.list_(pa.struct([("name", pa.string()), ("value", value_type)]))


# zlib level for PNG bytes: lossless at any level; 1 is several times faster to write than the default 6.
PNG_COMPRESS_LEVEL = 1

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("instruction_en", pa.string()),
        pa.field("instruction_zh", pa.string()),
        pa.field("source_image", pa.binary(), nullable=False),
        pa.field("target_image", pa.binary(), nullable=False),
        pa.field("mask", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field(
            "generator",
            pa.struct([("name", pa.string()), ("version", pa.string()), ("config_hash", pa.string())]),
        ),
        pa.field("seed", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("scores", _named(pa.float64())),
        pa.field("score_reasons", _named(pa.string())),
        pa.field("reject_reasons", pa.list_(pa.string())),
        pa.field(
            "provenance",
            pa.struct(
                [
                    ("parent_ids", pa.list_(pa.string())),
                    ("source_path", pa.string()),
                    ("license", pa.string()),
                ]
            ),
        ),
        pa.field("meta", pa.string()),
    ]
)

COLUMNS = tuple(SCHEMA.names)
_NAMED_COLUMNS = ("scores", "score_reasons")


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of ``image`` (RGB or L)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_png(data: bytes, mode: str = "RGB") -> Image.Image:
    """Decode image bytes from a store into a loaded PIL image of ``mode``."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # Pillow raises many types for corrupt bytes
        raise DataFormatError(f"stored image bytes cannot be decoded: {error}") from error
    return image if image.mode == mode else image.convert(mode)


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest (``length`` characters) of the canonical JSON of ``parts``: same input, same hash, everywhere."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_int(*parts: Any) -> int:
    """A 63-bit integer derived from ``parts`` (used for per-sample seeds)."""
    return int(stable_hash(*parts, length=16), 16) & ((1 << 63) - 1)


def content_hash(source_png: bytes, target_png: bytes, instruction_en: str | None = None) -> str:
    """sha256 over the two images and the English instruction: equal hashes mean exact duplicates."""
    digest = hashlib.sha256()
    for part in (source_png, target_png, (instruction_en or "").encode("utf-8")):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def split_of(sample_id: str, validation_fraction: float = 0.05) -> str:
    """``"validation"`` or ``"train"``, decided by a hash of ``sample_id`` alone (stable across runs and stores)."""
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    bucket = int(hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


def make_record(
    *,
    sample_id: str,
    task: str,
    source: Image.Image,
    target: Image.Image,
    instruction_en: str,
    instruction_zh: str,
    generator: dict[str, str],
    seed: int | None = None,
    mask: Image.Image | None = None,
    provenance: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a complete store record from PIL images and metadata."""
    if source.size != target.size:
        raise DataFormatError(f"{sample_id}: source {source.size} and target {target.size} differ in size")
    source_png = encode_png(source)
    target_png = encode_png(target)
    return {
        "sample_id": sample_id,
        "task": task,
        "instruction_en": instruction_en,
        "instruction_zh": instruction_zh,
        "source_image": source_png,
        "target_image": target_png,
        "mask": encode_png(mask) if mask is not None else None,
        "width": source.size[0],
        "height": source.size[1],
        "generator": dict(generator),
        "seed": seed,
        "content_hash": content_hash(source_png, target_png, instruction_en),
        "scores": {},
        "score_reasons": {},
        "reject_reasons": [],
        "provenance": {
            "parent_ids": list((provenance or {}).get("parent_ids", [])),
            "source_path": (provenance or {}).get("source_path"),
            "license": (provenance or {}).get("license"),
        },
        "meta": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False),
    }


def json_type(value: Any) -> str:
    """How JSON spells the type of ``value``, for messages about a field of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def string_field(entry: dict[str, Any], field: str, where: str) -> str:
    """``entry[field]`` when it is a string of valid UTF-8 text; otherwise a :class:`DataFormatError` naming
    ``where`` (file and line, or record) and the field. A ``null`` is refused too: leave the field out instead."""
    value = entry[field]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: '{field}' must be a string, got {json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataFormatError(f"{where}: '{field}' is not valid UTF-8 text (a lone surrogate escape)") from None
    return value


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Arrow table in :data:`SCHEMA` from records (extra keys are an error, missing optional keys are null)."""
    rows = []
    for record in records:
        extra = set(record) - set(COLUMNS)
        if extra:
            raise DataFormatError(f"record {record.get('sample_id')!r} has unknown columns {sorted(extra)}")
        row = dict(record)
        for column in _NAMED_COLUMNS:
            if isinstance(row.get(column), dict):
                row[column] = [{"name": name, "value": value} for name, value in row[column].items()]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def table_to_records(table: pa.Table) -> list[dict[str, Any]]:
    """Records (dicts) from an Arrow table; named-score columns come back as dicts (from ``{name, value}``
    structs, or from the Arrow maps of older stores, which read as key-value pairs)."""
    records = table.to_pylist()
    for record in records:
        for column in _NAMED_COLUMNS:
            items = record.get(column) or []
            record[column] = dict((item["name"], item["value"]) if isinstance(item, dict) else item for item in items)
        if record.get("reject_reasons") is None:
            record["reject_reasons"] = []
    return records
