"""The worker side of a batch edit: which model to load (:class:`ModelSpec`), the rows it writes
(:data:`EDIT_SCHEMA`, kept in an :class:`EditStore`) and :class:`ShardEditor`, which turns the samples of one
shard into rows with one loaded pipeline.

Within a shard, samples that share a working size and settings are edited together, ``batch_size`` at a time,
in the order they came; each sample's noise comes from its own seed. Both engines run this same code on the same
shards, so they write the same rows. A sample that cannot be edited (its image unreadable, its instruction empty,
its settings out of range, its batch out of memory even alone) becomes a row with ``status`` "failed" and the
reason in ``error``; the rest of the shard goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import sampling
from ..acceleration.options import Acceleration, lossy_choices
from ..data.records import encode_png
from ..data.store import Store
from ..errors import InvalidImageError, Step1XEditError
from ..image_io import load_image
from ..model_options import DTYPES as OPTION_DTYPES
from ..pipeline import check_instruction, check_negative_prompt, load_pipeline
from .inputs import Sample

logger = logging.getLogger(__name__)

STATUS_EDITED, STATUS_FAILED = "edited", "failed"

# One row per sample. ``source`` holds the input image's file bytes as they were read; ``edited`` a PNG at the
# source's size; ``settings`` the settings used (JSON, defaults filled in, with the working size); ``seconds``
# the sample's share of its pipeline call, and ``batch_size`` how many samples that call edited; ``reasoning`` a
# v1.2 edit's thinking and reflection (every round, its scores, the chosen one) as JSON.
EDIT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("origin", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("settings", pa.string()),
        pa.field("source", pa.binary()),
        pa.field("edited", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("batch_size", pa.int32()),
        pa.field("seconds", pa.float64()),
        pa.field("reasoning", pa.string()),  # a v1.2 edit's thinking and reflection trace as JSON, else null
    ]
)
# Columns that may differ between two runs of the same samples (everything else is equal, on the same device).
TIMING_COLUMNS = ("seconds",)

# The dtypes a worker may load its model in (torch names).
DTYPES = tuple(sorted({name for name in OPTION_DTYPES.values() if name is not None}))


class EditStore(Store):
    """A store of batch-edit rows (:data:`EDIT_SCHEMA`): the data engine's shards, markers and checksums."""

    columns = tuple(EDIT_SCHEMA.names)

    def to_table(self, records: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(records, schema=EDIT_SCHEMA)

    def from_table(self, table: pa.Table) -> list[dict[str, Any]]:
        return table.to_pylist()


@dataclass(frozen=True)
class ModelSpec:
    """The model a worker loads: ``model`` (a folder; None: the built-in demo model), ``version`` (official
    checkpoints), ``device`` (None: CUDA when the worker has a GPU), ``dtype`` (one of :data:`DTYPES`; None: the
    device's default), LoRA files with their multipliers, ``acceleration`` (memory and speed modes, see
    :class:`~step1x_edit.acceleration.options.Acceleration`; None: everything on the device), ``name`` (the model id in
    the rows; default: the folder's name), the thinking and reflection of a v1.2 model: ``think``, ``reflect``
    and ``max_tries`` (None: the model's defaults, see :func:`step1x_edit.reasoning.options_for`), and the MLLM's
    ``attn_implementation``."""

    model: str | None = None
    version: str | None = None
    device: str | None = None
    dtype: str | None = None
    loras: tuple[tuple[str, float], ...] = ()
    acceleration: Acceleration | None = None
    name: str | None = None
    think: bool | None = None
    reflect: bool | None = None
    max_tries: int | None = None
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise Step1XEditError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def model_id(self) -> str:
        return self.name or (Path(self.model).resolve().name if self.model else "step1x-edit-demo")

    def identity(self) -> dict[str, Any]:
        """What decides the edits (not where they run): part of the output store's config hash."""
        return {"model": str(Path(self.model).resolve()) if self.model else None, "version": self.version,
                "dtype": self.dtype, "loras": [[str(Path(path).resolve()), scale] for path, scale in self.loras],
                "name": self.model_id, **self.reasoning_choices(),
                **({"weights": lossy} if self.acceleration and (lossy := lossy_choices(self.acceleration)) else {})}

    def reasoning_choices(self) -> dict[str, Any]:
        """The thinking and reflection chosen (those left to the model's defaults are left out)."""
        chosen = {"think": self.think, "reflect": self.reflect, "max_tries": self.max_tries}
        return {name: value for name, value in chosen.items() if value is not None}

    def check(self) -> None:
        """Raise before any work when the model folder or a LoRA file is missing or unreadable, or thinking or
        reflection is asked of a model that cannot do them."""
        from ..checkpoints.inspect import describe_model
        from ..checkpoints.lora import check_lora_file
        from ..pipeline import DEMO_MODEL_DIR

        if self.model is not None and not Path(self.model).is_dir():
            raise Step1XEditError(f"model directory not found: {self.model}")
        for path, _ in self.loras:
            check_lora_file(path)
        if self.reasoning_choices():
            self.reasoning(self.version or describe_model(self.model or DEMO_MODEL_DIR)["version"])

    def reasoning(self, version: str):
        """The :class:`~step1x_edit.reasoning.ReasoningOptions` of these choices for a ``version`` model."""
        from ..reasoning import options_for

        return options_for(version, think=self.think, reflect=self.reflect, max_tries=self.max_tries)

    def load(self):
        """The pipeline, LoRAs loaded, progress bars off (the batch shows its own)."""
        from ..pipeline import resolve_device

        dtype = getattr(torch, self.dtype) if self.dtype else None
        pipe = load_pipeline(self.model, device=resolve_device(self.device), torch_dtype=dtype, version=self.version,
                             attn_implementation=self.attn_implementation, loras=self.loras,
                             acceleration=self.acceleration)
        pipe.set_progress_bar_config(disable=True)
        return pipe


@dataclass
class _Prepared:
    """A sample ready to edit: its decoded image, file bytes, settings (all filled in) and working size."""

    sample: Sample
    image: Any
    data: bytes
    settings: dict[str, Any]
    working_size: tuple[int, int]

    def group(self) -> tuple:
        return (self.working_size, *sorted(self.settings.items()))


class ShardEditor:
    """Edits shards with one pipeline (loaded once, here): ``editor(samples)`` returns one row per sample, in the
    same order. ``defaults`` are the run's settings (a dict of :data:`~.inputs.SETTINGS`; None: the model's);
    ``batch_size`` the most samples one pipeline call edits."""

    def __init__(self, model: ModelSpec, defaults: dict[str, Any], batch_size: int):
        self.pipe = model.load()
        self.model_id = model.model_id
        self.batch_size = batch_size
        self.reasoning = model.reasoning(self.pipe.version)
        given = {name: value for name, value in defaults.items() if name != "negative_prompt"}
        self.defaults = {**self.pipe.resolve_settings(**given), "negative_prompt": defaults.get("negative_prompt") or ""}

    def __call__(self, samples: Sequence[Sample], on_done: Callable[[int], None] | None = None) -> list[dict]:
        """Rows for ``samples``; ``on_done(n)`` is told after every pipeline call how many samples it finished."""
        rows: dict[str, dict[str, Any]] = {}
        groups: dict[tuple, list[_Prepared]] = {}
        stored = _read_stored_sources(samples)
        for sample in samples:
            try:
                prepared = self._prepare(sample, stored)
            except Step1XEditError as error:
                rows[sample.sample_id] = self._failed(sample, str(error))
                continue
            groups.setdefault(prepared.group(), []).append(prepared)
        if on_done is not None and rows:
            on_done(len(rows))
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                rows.update(self._edit(batch))
                if on_done is not None:
                    on_done(len(batch))
        return [rows[sample.sample_id] for sample in samples]

    def _prepare(self, sample: Sample, stored: dict[tuple[str, str], bytes]) -> _Prepared:
        if sample.problem is not None:
            raise Step1XEditError(sample.problem)
        check_instruction(sample.instruction)
        settings = {**self.defaults, **sample.settings}
        check_negative_prompt(settings["negative_prompt"])
        try:
            sampling.strength_steps(settings["num_inference_steps"], settings["strength"])
        except ValueError as error:
            raise Step1XEditError(f"strength: {error}") from None
        if sample.in_store:
            data = stored.get((sample.image, sample.sample_id))
            if data is None:
                raise InvalidImageError(f"{sample.origin} is no longer in the input store; rerun to read it afresh")
            image = load_image(data)
        else:
            image = load_image(sample.image)
            try:
                data = Path(sample.image).read_bytes()
            except OSError as error:
                raise InvalidImageError(f"cannot read {sample.image}: {error.strerror or error}") from None
        try:
            working_size = sampling.resize_dimensions(image.width, image.height, settings["size_level"])
        except ValueError as error:
            raise InvalidImageError(f"{error} (its aspect ratio is too extreme); crop or pad it first") from None
        return _Prepared(sample, image, data, settings, working_size)

    def _edit(self, batch: list[_Prepared]) -> dict[str, dict[str, Any]]:
        """Rows for one pipeline call over ``batch`` (one working size, one set of settings). When the call fails,
        each sample is tried alone, so only the samples that fail alone are recorded as failed."""
        settings = dict(batch[0].settings)
        negative_prompt = settings.pop("negative_prompt")
        start = time.perf_counter()
        try:
            result = self.pipe(
                image=[item.image for item in batch],
                prompt=[item.sample.instruction for item in batch],
                negative_prompt=[negative_prompt] * len(batch),
                generator=[torch.Generator("cpu").manual_seed(item.sample.seed) for item in batch],
                reasoning=self.reasoning,
                **settings,
            )
        except Exception as error:  # one sample's failure must not end the run
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if len(batch) > 1:
                logger.warning("a batch of %d failed (%s); editing its samples one at a time", len(batch), error)
                return {key: row for item in batch for key, row in self._edit([item]).items()}
            reason = str(error) if isinstance(error, Step1XEditError) else f"{type(error).__name__}: {error}"
            return {batch[0].sample.sample_id: self._failed(batch[0].sample, " ".join(reason.split()), batch[0])}
        seconds = (time.perf_counter() - start) / len(batch)
        rows = {}
        traces = result.reasoning or [None] * len(batch)
        for item, edited, trace in zip(batch, result.images, traces, strict=True):
            row = self._row(item.sample, STATUS_EDITED, None, item)
            row.update(edited=encode_png(edited), batch_size=len(batch), seconds=seconds,
                       reasoning=None if trace is None else json.dumps(trace.to_dict(), ensure_ascii=False))
            rows[item.sample.sample_id] = row
        return rows

    def _failed(self, sample: Sample, reason: str, prepared: _Prepared | None = None) -> dict[str, Any]:
        return self._row(sample, STATUS_FAILED, reason, prepared)

    def _row(self, sample: Sample, status: str, error: str | None, prepared: _Prepared | None) -> dict[str, Any]:
        settings = {**self.defaults, **sample.settings}
        if prepared is not None:
            settings["working_size"] = list(prepared.working_size)
        return {
            "sample_id": sample.sample_id, "status": status, "error": error, "origin": sample.origin,
            "instruction": sample.instruction, "seed": sample.seed,
            "settings": json.dumps(settings, sort_keys=True, ensure_ascii=False),
            "source": prepared.data if prepared is not None else None, "edited": None,
            "width": prepared.image.width if prepared is not None else None,
            "height": prepared.image.height if prepared is not None else None,
            "model": self.model_id, "model_version": self.pipe.version, "batch_size": None, "seconds": None,
            "reasoning": None,
        }


def _read_stored_sources(samples: Sequence[Sample]) -> dict[tuple[str, str], bytes]:
    """The source images of the samples that come from a data-engine store, read once per store shard."""
    wanted: dict[str, set[str]] = {}
    for sample in samples:
        if sample.in_store and sample.problem is None:
            wanted.setdefault(sample.image, set()).add(sample.sample_id)
    found = {}
    for path, ids in wanted.items():
        table = pq.read_table(path, columns=["sample_id", "source_image"])
        for sample_id, data in zip(table.column("sample_id").to_pylist(), table.column("source_image").to_pylist(),
                                   strict=True):
            if sample_id in ids:
                found[(path, sample_id)] = data
    return found
