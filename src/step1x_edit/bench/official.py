"""Import score CSVs written by the official GEdit-Bench scorers, so their runs can be re-analysed here.

Upstream (``run_gedit_score.py``) writes ``{model}_{group}_{lang}_vie_score.csv`` with columns ``key,
edited_image, instruction, sementics_score, quality_score, intersection_exist, instruction_language``; the v1.0
snapshot writes ``{model}_{group}_gpt_score.csv`` with ``source_image`` instead of ``key`` (the key is then the
edited image's file stem). The task group is taken from the file name. The per-sample scores there are already
the minimum of the judge's sub-scores, so each becomes a one-element ``sc_scores`` / ``pq_scores`` list, which
gives identical statistics. Combined CSVs (no group in the name) are refused: import the per-group files.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .. import validate
from ..errors import DataFormatError
from .dataset import TASK_TYPES
from .viescore import SCORE_RANGE

_TRUE = {"true", "1", "yes"}


def _group(path: Path) -> str:
    for task in sorted(TASK_TYPES, key=len, reverse=True):
        if f"_{task}_" in f"_{path.stem}_":
            return task
    raise DataFormatError(f"{path.name}: no GEdit-Bench task group in the file name (combined CSVs are not read)")


def read_official_csv(path: str | os.PathLike) -> list[dict]:
    """Scores-file records (see :mod:`step1x_edit.bench.judging`) from one official per-group CSV; a row whose
    scores are not numbers from 0 to 10, or a file that is not UTF-8 CSV, raises :class:`DataFormatError`."""
    path = Path(path)
    group = _group(path)
    records = []
    number = 1
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                records.append(_record(row, group, f"{path.name}:{number}"))
    except (KeyError, TypeError, ValueError, csv.Error) as error:  # undecodable bytes and bad scores included
        raise DataFormatError(f"{path}:{number}: not an official GEdit-Bench score row ({error})") from None
    except OSError as error:
        raise DataFormatError(f"{path} cannot be read: {error.strerror or error}") from error
    return records


def _record(row: dict, group: str, source: str) -> dict:
    key = row.get("key") or Path(row["edited_image"]).stem
    language = row["instruction_language"]
    if not isinstance(language, str):
        raise ValueError("the row has no instruction_language")
    sc = validate.number("sementics_score", float(row["sementics_score"]), *SCORE_RANGE)
    pq = validate.number("quality_score", float(row["quality_score"]), *SCORE_RANGE)
    return {
        "key": key,
        "task_type": group,
        "instruction_language": language,
        "intersection_exist": str(row["intersection_exist"]).strip().lower() in _TRUE,
        "instruction": row.get("instruction"),
        "sc_scores": [int(sc) if sc.is_integer() else sc],
        "pq_scores": [int(pq) if pq.is_integer() else pq],
        "status": "ok",
        "source": source,
    }
