"""GEdit-Bench statistics exactly as the official ``calculate_statistics.py`` computes them, plus failures and CIs.

Per sample: SC = min of the semantic sub-scores, PQ = min of the quality sub-scores, O = sqrt(SC * PQ). Per task
group: the arithmetic mean of each. "average" is the unweighted mean of the group means (a macro average over
the groups present). The "intersection" block repeats this on samples with ``intersection_exist``. Everything is
reported per instruction language.

Beyond the official script: failed judgements are excluded from every mean and counted per group, and a
stratified bootstrap (resampling samples within each group) gives 95% confidence intervals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataFormatError
from .dataset import LANGUAGES, TASK_TYPES
from .viescore import sample_scores

SUBSETS: tuple[str, ...] = ("full", "intersection")
REQUIRED_FIELDS: tuple[str, ...] = ("key", "task_type", "instruction_language", "intersection_exist")


@dataclass(frozen=True)
class GEditStatistics:
    """``scores[lang][subset][group] = [SC, PQ, O]`` (with ``"average"``), counts and bootstrap intervals."""

    scores: dict[str, dict[str, dict[str, list[float]]]]
    counts: dict[str, dict[str, dict[str, dict[str, int]]]]
    ci95: dict[str, dict[str, dict[str, list[list[float]]]]]

    def to_dict(self) -> dict:
        return {"scores": self.scores, "counts": self.counts, "ci95": self.ci95}


def read_scores(path: str | os.PathLike) -> list[dict]:
    """Read a scores file (one JSON object a line); the last record of a (key, language) pair wins."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"scores file {path} does not exist")
    latest: dict[tuple[str, str], dict] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if not line.endswith("\n"):
                    continue  # a final line cut short by an interrupted run; it is judged again on resume
                raise DataFormatError(f"{path}:{number}: not a JSON object: {error}") from error
            missing = [f for f in REQUIRED_FIELDS if f not in record]
            if missing:
                raise DataFormatError(f"{path}:{number}: record lacks field(s) {missing}")
            latest[(str(record["key"]), str(record["instruction_language"]))] = record
    return list(latest.values())


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
