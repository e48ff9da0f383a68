"""GEdit-Bench statistics exactly as the official ``calculate_statistics.py`` computes them, plus failures and CIs.

Per sample: SC = min of the semantic sub-scores, PQ = min of the quality sub-scores, O = sqrt(SC * PQ). Per task
group: the arithmetic mean of each. "average" is the unweighted mean of the group means (a macro average over
the groups present). The "intersection" block repeats this on samples with ``intersection_exist``. Everything is
reported per instruction language.

Beyond the official script: failed judgements are excluded from every mean and counted per group, and a
stratified bootstrap (resampling samples within each group) gives 95% confidence intervals. A scores file is
checked line by line as it is read (:func:`read_scores`): a line that is not a well-formed record - not UTF-8 JSON,
a field of the wrong type, a score that is a string, NaN or outside 0-10 - is refused with the line and the field
named, never averaged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataFormatError, InvalidValueError
from .dataset import LANGUAGES, TASK_TYPES
from .viescore import brief, checked_scores, sample_scores

SUBSETS: tuple[str, ...] = ("full", "intersection")
REQUIRED_FIELDS: tuple[str, ...] = ("key", "task_type", "instruction_language", "intersection_exist")
STATUSES: tuple[str, ...] = ("ok", "failed", "missing_image")


@dataclass(frozen=True)
class GEditStatistics:
    """``scores[lang][subset][group] = [SC, PQ, O]`` (with ``"average"``), counts and bootstrap intervals."""

    scores: dict[str, dict[str, dict[str, list[float]]]]
    counts: dict[str, dict[str, dict[str, dict[str, int]]]]
    ci95: dict[str, dict[str, dict[str, list[list[float]]]]]

    def to_dict(self) -> dict:
        return {"scores": self.scores, "counts": self.counts, "ci95": self.ci95}


def read_scores(path: str | os.PathLike) -> list[dict]:
    """Read a scores file (one JSON object a line); the last record of a (key, language) pair wins. A line that is
    not a record :func:`check_record` accepts raises :class:`DataFormatError` naming the line and the field; a
    final line cut short by an interrupted run is skipped (it is judged again on resume)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"scores file {path} does not exist")
    latest: dict[tuple[str, str], dict] = {}
    for record in read_records(path, check_record, "scores file"):
        latest[(record["key"], record["instruction_language"])] = record
    return list(latest.values())



def read_records(path: Path, check: Callable[[dict], object], what: str) -> Iterator[dict]:
    """The records of the JSON-lines file ``path``, each accepted by ``check`` (which raises
    :class:`InvalidValueError`). A line that is not a JSON record ``check`` accepts raises :class:`DataFormatError`
    naming the line and the field; a final line cut short by an interrupted run is skipped (it is written again on
    resume). ``what`` names the file in errors ("scores file")."""
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError) as error:  # undecodable bytes included
                    if not line.endswith(b"\n"):
                        continue
                    raise DataFormatError(f"{path}:{number}: not a JSON object ({error})") from None
                try:
                    check(record)
                except InvalidValueError as error:
                    raise DataFormatError(f"{path}:{number}: {error}") from None
                yield record
    except OSError as error:
        raise DataFormatError(f"{what} {path} cannot be read: {error.strerror or error}") from error

def check_record(record: object) -> dict:
    """``record`` if it is a well-formed scores record, else raise :class:`InvalidValueError` naming the field:
    the :data:`REQUIRED_FIELDS` (strings, and a bool ``intersection_exist``), a ``status`` from :data:`STATUSES`
    (``ok`` when absent), ``sc_scores`` and ``pq_scores`` valid score lists (see
    :func:`~.viescore.checked_scores`; either may be null unless the status is ``ok``), a ``judge`` object."""
    if not isinstance(record, dict):
        raise InvalidValueError(f"the line holds a JSON {type(record).__name__}, not an object")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise InvalidValueError(f"record lacks field(s) {missing}")
    for field in ("key", "task_type", "instruction_language"):
        if not isinstance(record[field], str):
            raise InvalidValueError(f"{field} must be a string, got {brief(record[field])}")
    if not isinstance(record["intersection_exist"], bool):
        raise InvalidValueError(f"intersection_exist must be true or false, got {brief(record['intersection_exist'])}")
    status = record.get("status", "ok")
    if not isinstance(status, str) or status not in STATUSES:
        raise InvalidValueError(f"status must be one of {', '.join(STATUSES)}, got {brief(status)}")
    for field in ("sc_scores", "pq_scores"):
        if status == "ok" or record.get(field) is not None:
            checked_scores(field, record.get(field))
    if not isinstance(record.get("judge", {}), dict):
        raise InvalidValueError(f"judge must be an object, got {brief(record['judge'])}")
    return record


def is_scored(record: dict) -> bool:
    """Whether a record holds a usable judgement (an explicit ``status`` other than ``ok`` means it failed)."""
    return record.get("status", "ok") == "ok" and bool(record.get("sc_scores")) and bool(record.get("pq_scores"))


def compute_statistics(records: list[dict], bootstrap: int = 1000, seed: int = 0) -> GEditStatistics:
    """Official GEdit-Bench statistics of ``records`` (see the module docstring) with ``bootstrap`` resamples."""
    rng = np.random.default_rng(seed)
    scores: dict = {}
    counts: dict = {}
    ci95: dict = {}
    languages = [lang for lang in LANGUAGES if any(r["instruction_language"] == lang for r in records)]
    languages += sorted({r["instruction_language"] for r in records} - set(languages))
    groups = list(TASK_TYPES) + sorted({r["task_type"] for r in records} - set(TASK_TYPES))
    for language in languages:
        for subset in SUBSETS:
            chosen = [
                r
                for r in records
                if r["instruction_language"] == language and (subset == "full" or r["intersection_exist"])
            ]
            per_group: dict[str, np.ndarray] = {}
            subset_counts: dict[str, dict[str, int]] = {}
            for group in groups:
                rows = [r for r in chosen if r["task_type"] == group]
                if not rows:
                    continue
                ok = [r for r in rows if is_scored(r)]
                subset_counts[group] = {"scored": len(ok), "failed": len(rows) - len(ok)}
                if ok:
                    per_group[group] = np.array([sample_scores(r["sc_scores"], r["pq_scores"]) for r in ok])
            if not subset_counts:
                continue
            means = {g: [float(sum(v[:, j]) / len(v)) for j in range(3)] for g, v in per_group.items()}
            if means:
                means["average"] = [sum(m[j] for m in means.values()) / len(means) for j in range(3)]
            subset_counts["total"] = {
                "scored": sum(c["scored"] for c in subset_counts.values()),
                "failed": sum(c["failed"] for c in subset_counts.values()),
            }
            scores.setdefault(language, {})[subset] = means
            counts.setdefault(language, {})[subset] = subset_counts
            ci95.setdefault(language, {})[subset] = _bootstrap(per_group, bootstrap, rng)
    return GEditStatistics(scores=scores, counts=counts, ci95=ci95)


def _bootstrap(per_group: dict[str, np.ndarray], resamples: int, rng: np.random.Generator) -> dict:
    """95% percentile intervals of each group mean and of the macro average, resampling within groups."""
    if not per_group or resamples <= 0:
        return {}
    draws = {}
    for group, values in per_group.items():
        index = rng.integers(0, len(values), size=(resamples, len(values)))
        draws[group] = values[index].mean(axis=1)  # (resamples, 3)
    draws["average"] = np.mean(np.stack(list(draws.values())), axis=0)  # (resamples, 3)
    return {
        group: np.percentile(d, [2.5, 97.5], axis=0).T.tolist()  # (3, 2): [low, high] per metric
        for group, d in draws.items()
    }


def format_statistics(stats: GEditStatistics) -> str:
    """Human-readable statistics in the official print format, with failure counts and 95% intervals."""
    lines = []
    for language, subsets in stats.scores.items():
        for subset, means in subsets.items():
            counts = stats.counts[language][subset]
            ci = stats.ci95[language][subset]
            total = counts["total"]
            lines.append(
                f"[{language}] {subset} ({total['scored']} scored, {total['failed']} failed)   SC, PQ, O   (95% CI of O)"
            )
            for group in [g for g in counts if g != "total"] + ["average"]:
                failed = counts.get(group, counts["total"])["failed"]
                note = f"   {failed} failed" if failed and group != "average" else ""
                label = "Average" if group == "average" else group
                if group not in means:
                    if group != "average":
                        lines.append(f"{label}: -, -, -   (no scored sample){note}")
                    continue
                sc, pq, o = means[group]
                interval = f"[{ci[group][2][0]:.3f}, {ci[group][2][1]:.3f}]" if group in ci else ""
                lines.append(f"{label}: {sc:.3f}, {pq:.3f}, {o:.3f}   {interval}{note}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
