"""Per-task evaluation of an editor on held-out synthetic triplets, whose targets are exact, against the identity.

Any editor works: a callable ``edit(image, instruction) -> PIL.Image`` returning an image of the input's size
(:func:`pipeline_editor` makes one from a Step1X-Edit pipeline). Each sample is scored for the editor and for the
identity baseline (the unedited source), and the scores are averaged per task:

PSNR, SSIM, and for local tasks (which have a mask) the edit-region accuracy and the PSNR outside the mask; the
metrics themselves are in :mod:`step1x_edit.metrics`.

Samples come from a store's validation split (:func:`store_samples`) or are generated with seeds of their own
(:func:`generated_samples`), so neither is in a training set made by ``step1x-edit data``. :func:`evaluate_editor`
returns an :class:`EvaluationResult` (per-sample rows, :attr:`~EvaluationResult.per_task` means, Markdown via
:func:`format_table`, JSON via :meth:`~EvaluationResult.save` / :meth:`~EvaluationResult.load`). Given a JSON-lines
path it appends each row as soon as it is scored and skips the samples already there, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.synthetic.generators import TASKS, generate_sample
from ..errors import DataFormatError, InvalidImageError, InvalidValueError, Step1XEditError
from ..metrics import PSNR_CAP, edit_region_accuracy, outside_mask_psnr, psnr, ssim
from ..validate import number, text

ROWS_FORMAT = "step1x-edit-synthetic-eval/1"

Editor = Callable[[Image.Image, str], Image.Image]


# -- samples ---------------------------------------------------------------------------------------------------
def store_samples(store_dir: str | os.PathLike, tasks: list[str] | None = None) -> list:
    """The validation split of a data store (samples held out of training), as ``TrainingSample`` objects."""
    from ..data.store import iter_samples

    samples = list(iter_samples(store_dir, split="validation", tasks=tasks))
    if not samples:
        raise Step1XEditError(f"{store_dir} has no validation samples to evaluate on")
    return samples


def generated_samples(count: int, resolution: int = 128, seed: int = 0) -> list:
    """``count`` fresh synthetic triplets, tasks in turn, with seeds from their own namespace (not those of a
    training store): sample ``i`` is task ``TASKS[i % 11]`` with id ``eval-<seed>-<i>``."""
    if count < 1:
        raise Step1XEditError(f"the number of samples to generate must be at least 1, got {count}")
    samples = []
    for index in range(count):
        sample_id, sample_seed = generated_sample_seed(seed, index)
        samples.append(generate_sample(TASKS[index % len(TASKS)], sample_seed, resolution, sample_id=sample_id))
    return samples


def generated_sample_seed(seed: int, index: int) -> tuple[str, int]:
    """The id and the generator seed of sample ``index`` of :func:`generated_samples` with ``seed``."""
    sample_id = f"eval-{seed}-{index:06d}"
    return sample_id, int(hashlib.sha256(f"synthetic-eval/{sample_id}".encode()).hexdigest()[:15], 16)


# -- results ---------------------------------------------------------------------------------------------------
# The range of each metric: PSNR in dB from 0 (every channel off by 255) to the cap, SSIM from -1 to 1.
METRIC_RANGES = {"psnr": (0.0, PSNR_CAP), "ssim": (-1.0, 1.0), "region_accuracy": (0.0, 1.0),
                 "outside_psnr": (0.0, PSNR_CAP)}


@dataclass(frozen=True)
class Scores:
    """Metrics of one image against a sample's target; the mask metrics are ``None`` for global tasks."""

    psnr: float
    ssim: float
    region_accuracy: float | None = None
    outside_psnr: float | None = None

    @classmethod
    def from_dict(cls, name: str, data: object) -> Scores:
        """Scores as :func:`dataclasses.asdict` wrote them, each checked against its range (see
        :data:`METRIC_RANGES`); raises :class:`InvalidValueError` naming ``name`` and the field otherwise."""
        if not isinstance(data, dict) or not set(data) <= set(METRIC_RANGES):
            raise InvalidValueError(f"{name} must be an object with the fields {', '.join(METRIC_RANGES)}")
        values = {}
        for key, (low, high) in METRIC_RANGES.items():
            optional = key in ("region_accuracy", "outside_psnr")
            value = data.get(key)
            values[key] = None if optional and value is None else number(f"{name}.{key}", value, low, high)
        return cls(**values)


@dataclass(frozen=True)
class SampleRow:
    """The scores of one sample for the editor (``model``) and for the unedited source (``identity``)."""

    sample_id: str
    task: str
    model: Scores
    identity: Scores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> SampleRow:
        """A row as :meth:`to_dict` wrote it; raises :class:`InvalidValueError` naming a field that is missing, of
        the wrong type or out of range."""
        if not isinstance(data, dict):
            raise InvalidValueError(f"a row must be a JSON object, got {type(data).__name__}")
        return cls(text("sample_id", data.get("sample_id")), text("task", data.get("task")),
                   Scores.from_dict("model", data.get("model")), Scores.from_dict("identity", data.get("identity")))


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt(n)); ``None`` below 2 values."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


@dataclass(frozen=True)
class TaskSummary:
    """Means over the samples of one task (``None`` where a metric does not apply). ``psnr_gain_se`` and
    ``ssim_gain_se`` are the standard errors of the mean per-sample gain over the identity (model minus identity,
    paired by sample; ``None`` with fewer than two samples): a gain within about two of them of zero is noise."""

    task: str
    count: int
    psnr_model: float
    psnr_identity: float
    ssim_model: float
    ssim_identity: float
    region_accuracy: float | None
    outside_psnr: float | None
    psnr_gain_se: float | None = None
    ssim_gain_se: float | None = None

    @property
    def beats_identity(self) -> bool:
        """True when the editor's mean PSNR and mean SSIM are both above the identity's."""
        return self.psnr_model > self.psnr_identity and self.ssim_model > self.ssim_identity

    @classmethod
    def of(cls, task: str, rows: list[SampleRow]) -> TaskSummary:
        return cls(
            task,
            len(rows),
            _mean([row.model.psnr for row in rows]),
            _mean([row.identity.psnr for row in rows]),
            _mean([row.model.ssim for row in rows]),
            _mean([row.identity.ssim for row in rows]),
            _mean([row.model.region_accuracy for row in rows]),
            _mean([row.model.outside_psnr for row in rows]),
            _standard_error([row.model.psnr - row.identity.psnr for row in rows]),
            _standard_error([row.model.ssim - row.identity.ssim for row in rows]),
        )


@dataclass
class EvaluationResult:
    """Per-sample rows of one evaluation and the settings it ran with."""

    rows: list[SampleRow]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def per_task(self) -> dict[str, TaskSummary]:
        """Means per task, in the order of ``TASKS`` (tasks without samples left out)."""
        by_task: dict[str, list[SampleRow]] = {}
        for row in self.rows:
            by_task.setdefault(row.task, []).append(row)
        order = sorted(by_task, key=lambda task: TASKS.index(task) if task in TASKS else len(TASKS))
        return {task: TaskSummary.of(task, by_task[task]) for task in order}

    @property
    def overall(self) -> TaskSummary:
        """Means over every sample."""
        return TaskSummary.of("all", self.rows)

    def to_dict(self) -> dict[str, Any]:
        summaries = [*self.per_task.values(), self.overall] if self.rows else []
        return {
            "format": ROWS_FORMAT,
            "settings": self.settings,
            "per_task": {s.task: {**asdict(s), "beats_identity": s.beats_identity} for s in summaries},
            "rows": [row.to_dict() for row in self.rows],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the rows, settings and per-task means as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationResult:
        """Read a file written by :meth:`save` (the means are recomputed from the rows)."""
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != ROWS_FORMAT:
                raise DataFormatError(f"{path} is not a synthetic evaluation result")
            rows = data["rows"]
            if not isinstance(rows, list) or not isinstance(data["settings"], dict):
                raise DataFormatError(f"{path} is not a synthetic evaluation result (no list of rows and settings)")
            return cls([SampleRow.from_dict(row) for row in rows], data["settings"])
        except (ValueError, RecursionError, KeyError) as error:  # undecodable bytes and bad values included
            raise DataFormatError(f"{path} is not a valid synthetic evaluation result: {error}") from None


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _gain(model: float, identity: float, error: float | None, digits: int) -> str:
    gain = f"{model - identity:+.{digits}f}"
    return gain if error is None else f"{gain} ± {error:.{digits}f}"


def format_table(result: EvaluationResult, beats: Callable[[TaskSummary], bool] | None = None) -> str:
    """Markdown table of the per-task means (and a last row over all samples), with the mean gain over the
    identity and its standard error; ``beats`` decides the "beats identity" column (default:
    :attr:`TaskSummary.beats_identity`)."""
    beats = beats or (lambda summary: summary.beats_identity)
    lines = [
        "| task | n | PSNR model | PSNR identity | PSNR gain | SSIM model | SSIM identity | SSIM gain | region acc | "
        "beats identity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    summaries = [*result.per_task.values(), result.overall] if result.rows else []
    for s in summaries:
        lines.append(
            f"| {s.task} | {s.count} | {_number(s.psnr_model, 2)} | {_number(s.psnr_identity, 2)} | "
            f"{_gain(s.psnr_model, s.psnr_identity, s.psnr_gain_se, 2)} | "
            f"{_number(s.ssim_model, 4)} | {_number(s.ssim_identity, 4)} | "
            f"{_gain(s.ssim_model, s.ssim_identity, s.ssim_gain_se, 5)} | {_number(s.region_accuracy, 3)} | "
            f"{'yes' if beats(s) else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# -- evaluation ------------------------------------------------------------------------------------------------
def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def score_image(image: np.ndarray, source: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> Scores:
    """Every metric of ``image`` (uint8 RGB) for a sample with this source, target and mask (or ``None``)."""
    if mask is None:
        return Scores(psnr(image, target), ssim(image, target))
    return Scores(
        psnr(image, target),
        ssim(image, target),
        edit_region_accuracy(source, image, target, mask),
        outside_mask_psnr(image, target, mask),
    )


def _read_rows(path: Path, settings: dict[str, Any]) -> dict[str, SampleRow]:
    """Rows already in ``path`` by sample id. A header with other settings is refused, and so is a line that is not
    a row (naming the line and the field); a last line cut short by an interruption is dropped from the file."""
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    lines = data.split(b"\n")[:-1]
    if not lines:
        return {}
    try:
        header = json.loads(lines[0].decode("utf-8"))
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or header.get("format") != ROWS_FORMAT:
        raise DataFormatError(f"{path} is not a synthetic evaluation rows file")
    if header.get("settings") != settings:
        raise Step1XEditError(
            f"{path} holds rows made with other settings ({header.get('settings')}, now {settings}); "
            "use another rows file or delete it"
        )
    rows = {}
    for line_number, line in enumerate(lines[1:], 2):
        try:
            row = SampleRow.from_dict(json.loads(line.decode("utf-8")))
        except (ValueError, RecursionError) as error:  # undecodable bytes and bad values included
            raise DataFormatError(f"{path}:{line_number}: not a synthetic evaluation row ({error})") from None
        rows[row.sample_id] = row
    return rows


def evaluate_editor(
    editor: Editor,
    samples: Iterable,
    progress: bool = True,
    rows_path: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
    language: str = "en",
) -> EvaluationResult:
    """Score ``editor`` and the identity on ``samples`` (objects with ``sample_id``, ``task``, ``source``,
    ``target``, ``mask`` and ``instruction_en`` / ``instruction_zh``, e.g. from :func:`store_samples` or
    :func:`generated_samples`). ``language`` ("en" or "zh") picks the instruction.

    With ``rows_path`` (JSON lines: a header with ``settings``, then one row per sample) each row is appended as it is
    scored, and samples whose id is already there are not edited again; a file made with other ``settings`` is
    refused. The result holds one row per sample, in the order of ``samples``."""
    from tqdm.auto import tqdm

    if language not in ("en", "zh"):
        raise Step1XEditError(f"language must be 'en' or 'zh', got {language!r}")
    settings = dict(settings or {})
    done: dict[str, SampleRow] = {}
    handle = None
    if rows_path is not None:
        rows_path = Path(rows_path)
        if rows_path.exists():
            done = _read_rows(rows_path, settings)
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(rows_path, "a", encoding="utf-8")
        if rows_path.stat().st_size == 0:
            handle.write(json.dumps({"format": ROWS_FORMAT, "settings": settings}, ensure_ascii=False) + "\n")
            handle.flush()
    rows = []
    try:
        for sample in tqdm(samples, desc="synthetic eval", unit="sample", disable=not progress):
            if sample.sample_id in done:
                rows.append(done[sample.sample_id])
                continue
            instruction = sample.instruction_en if language == "en" else sample.instruction_zh
            output = editor(sample.source, instruction)
            if output.size != sample.source.size:
                raise InvalidImageError(
                    f"the editor returned a {output.size} image for the {sample.source.size} source of "
                    f"{sample.sample_id}; it must keep the size"
                )
            source, target = _rgb(sample.source), _rgb(sample.target)
            mask = np.asarray(sample.mask.convert("L")) if sample.mask is not None else None
            row = SampleRow(
                sample.sample_id,
                sample.task,
                score_image(_rgb(output), source, target, mask),
                score_image(source, source, target, mask),
            )
            rows.append(row)
            if handle is not None:
                handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    return EvaluationResult(rows, settings)


def identity_editor(image: Image.Image, instruction: str) -> Image.Image:
    """The baseline editor: returns the source unchanged."""
    return image


def pipeline_editor(
    pipe, steps: int | None = None, guidance: float | None = None, seed: int = 0, size_level: int | None = None,
    strength: float | None = None,
) -> Editor:
    """An editor running ``pipe`` (a :class:`~step1x_edit.pipeline.Step1XEditPipeline`) with these settings.

    The noise of each edit is seeded from ``seed`` and a hash of the sample (its source pixels and instruction), so
    a sample gets the same edit in any order, on a rerun and after resuming. ``size_level`` ``None`` leaves the
    working resolution to the pipeline's default (the resolution its model is used at). ``steps``, ``guidance`` and
    ``strength`` ``None`` are the pipeline's defaults; ``strength`` below 1 starts each edit part-way from the noised
    source (see the pipeline's ``strength``)."""
    import torch

    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)

    def edit(image: Image.Image, instruction: str) -> Image.Image:
        digest = hashlib.sha256(f"{seed}\n{instruction}\n{image.size}\n".encode())
        digest.update(image.convert("RGB").tobytes())
        working_size = {} if size_level is None else {"size_level": size_level}
        output = pipe(
            image=image,
            prompt=instruction,
            num_inference_steps=steps,
            guidance_scale=guidance,
            strength=strength,
            generator=torch.Generator().manual_seed(int(digest.hexdigest()[:15], 16)),
            **working_size,
        )
        return output.images[0]

    return edit
