"""The Stage API: deterministic functions over batches of records, with declared resources, and pipelines.

A :class:`Stage` maps a batch (``list[dict]``) to a batch of the same length and the same ``sample_id`` order;
filters never drop rows, they add ``reject_reasons``, so every sample keeps its history. Stages that hold a
model declare ``Resources(model=True)``: their ``fn`` is then a zero-argument factory that builds the batch
function once per worker (a process locally, an actor in Ray). A :class:`Pipeline` is an ordered list of stages
whose fingerprint (names, versions, configs) is part of the store's config hash, so changing any of them
writes a new dataset instead of silently mixing outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import stable_hash

Record = dict[str, Any]
BatchFn = Callable[[list[Record]], list[Record]]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. ``model=True`` marks a stage built once per worker (actor pool in Ray)."""

    cpus: float = 1.0
    gpus: float = 0.0
    model: bool = False
    concurrency: int = 1  # actors in the pool (Ray) for model stages


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. ``fn`` must be picklable (a module-level function, partial or class instance)."""

    name: str
    fn: Callable[..., Any]
    resources: Resources = field(default_factory=Resources)
    version: str = "1"
    config: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 32

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this stage's output: name, version and config (not the code object)."""
        return {"name": self.name, "version": self.version, "config": dict(self.config)}

    def build(self) -> BatchFn:
        """The batch function: ``fn`` itself, or what the factory ``fn()`` returns for model stages."""
        return self.fn() if self.resources.model else self.fn


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of stages applied to every shard."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")

    def fingerprint(self) -> list[dict[str, Any]]:
        return [stage.fingerprint() for stage in self.stages]

    def config_hash(self, extra: Mapping[str, Any] | None = None) -> str:
        """Hash of the stages' fingerprints plus ``extra`` (source settings): the identity of the output."""
        return stable_hash(self.fingerprint(), dict(extra or {}), length=12)


def apply_stage(fn: BatchFn, stage: Stage, records: Sequence[Record]) -> list[Record]:
    """Run ``fn`` over ``records`` in batches of ``stage.batch_size`` and check the row-preserving contract."""
    out: list[Record] = []
    for start in range(0, len(records), stage.batch_size):
        batch = list(records[start : start + stage.batch_size])
        result = fn(batch)
        check_batch(stage, batch, result)
        out.extend(result)
    return out


def check_batch(stage: Stage, batch: Sequence[Record], result: Sequence[Record]) -> None:
    """Raise if a stage dropped, added or reordered rows."""
    if len(result) != len(batch):
        raise RuntimeError(f"stage {stage.name!r} returned {len(result)} rows for a batch of {len(batch)}")
    for before, after in zip(batch, result, strict=True):
        if before.get("sample_id") != after.get("sample_id"):
            raise RuntimeError(
                f"stage {stage.name!r} changed row order or ids ({before.get('sample_id')!r} -> "
                f"{after.get('sample_id')!r}); stages must keep rows and mark rejects instead of dropping them"
            )
