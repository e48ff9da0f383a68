"""Cheap triplet checks, run before any model: decodability, a real change, instructions present, size, and
(for samples with a mask) how much changed outside the edited region. Rejected rows stay in the store with
their reasons; scores are stored as columns."""

from __future__ import annotations

import functools

import numpy as np

from ...errors import DataFormatError
from ...validate import integer, number
from ..limits import MAX_PHOTO_SIDE
from ..records import decode_png
from ..stages import Record, Stage

CHECKS_VERSION = "1"


def check_triplets(
    batch: list[Record],
    min_side: int = 64,
    max_outside_change: float = 0.0,
    languages: tuple[str, ...] = ("en", "zh"),
) -> list[Record]:
    """Add ``changed_fraction`` / ``changed_outside_mask`` scores and reject reasons to each record."""
    out = []
    for record in batch:
        record = dict(record)
        scores = dict(record.get("scores") or {})
        rejects = list(record.get("reject_reasons") or [])
        try:
            source = np.asarray(decode_png(record["source_image"]))
            target = np.asarray(decode_png(record["target_image"]))
        except DataFormatError as error:
            rejects.append(f"undecodable: {error}")
            record.update(scores=scores, reject_reasons=rejects)
            out.append(record)
            continue
        if source.shape != target.shape:
            rejects.append(f"size_mismatch: {source.shape[:2]} vs {target.shape[:2]}")
        else:
            changed = (source != target).any(axis=2)
            scores["changed_fraction"] = float(changed.mean())
            if not changed.any():
                rejects.append("no_change: source and target are identical")
            if record.get("mask") is not None:
                mask = np.asarray(decode_png(record["mask"], "L")) > 127
                outside = float((changed & ~mask).sum() / max(1, (~mask).sum()))
                scores["changed_outside_mask"] = outside
                if outside > max_outside_change:
                    rejects.append(f"change_outside_mask: {outside:.4f} > {max_outside_change:g}")
        if min(source.shape[:2]) < min_side:
            rejects.append(f"too_small: {source.shape[1]}x{source.shape[0]} < {min_side}")
        for language in languages:
            if not (record.get(f"instruction_{language}") or "").strip():
                rejects.append(f"missing_instruction_{language}")
        record.update(scores=scores, reject_reasons=rejects)
        out.append(record)
    return out


def checks_stage(
    min_side: int = 64, max_outside_change: float = 0.0, languages: tuple[str, ...] = ("en", "zh")
) -> Stage:
    integer("min_side", min_side, 1, MAX_PHOTO_SIDE)
    number("max_outside_change", max_outside_change, 0, 1)
    config = {"min_side": min_side, "max_outside_change": max_outside_change, "languages": list(languages)}
    return Stage(
        "triplet_checks",
        functools.partial(check_triplets, **config),
        version=CHECKS_VERSION,
        config=config,
        batch_size=64,
    )
