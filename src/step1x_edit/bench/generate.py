"""Generate GEdit-Bench edits with any editor into the official results layout, resumably and sharded.

An :class:`Editor` is any callable ``(image, instruction, seed) -> PIL.Image``; :class:`PipelineEditor` adapts a
:class:`~step1x_edit.pipeline.Step1XEditPipeline` (a v1.2 model with or without thinking and reflection, recorded
in the manifest's ``reasoning``). :func:`generate` skips samples whose edit already exists,
writes each edit atomically (an interrupted run never leaves a truncated PNG), and records a run manifest
(``RESULTS/<name>/manifest.json``: model, version, seed, sampler settings, software versions). A rerun with
different settings is refused instead of mixing two configurations in one directory.

Under ``accelerate launch`` or ``torchrun`` (one process per GPU) every process edits its own shard of the
samples.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from ..errors import DataFormatError, Step1XEditError
from .dataset import GEditSample
from .layout import edit_path, find_edited_image

MANIFEST_NAME = "manifest.json"


@runtime_checkable
class Editor(Protocol):
    """Anything that edits an image: ``editor(image, instruction, seed) -> edited image``."""

    def __call__(self, image: Image.Image, instruction: str, seed: int) -> Image.Image: ...


class PipelineEditor:
    """Edit with a Step1X-Edit pipeline and fixed sampler settings (recorded by :meth:`settings`).

    ``reasoning`` (:class:`~step1x_edit.reasoning.ReasoningOptions`, None: the model's default, which for v1.2 is
    reflection over at most 3 rounds) sets a v1.2 model's thinking and reflection; each edit's reasoning samples
    from its seed. The pipeline's per-step progress bar is turned off: :func:`generate` shows one bar over the
    samples.
    """

    def __init__(
        self,
        pipe,
        num_inference_steps: int = 28,
        guidance_scale: float = 6.0,
        size_level: int = 1024,
        negative_prompt: str = "",
        model: str | None = None,
        reasoning=None,
    ):
        self.pipe = pipe
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.size_level = size_level
        self.negative_prompt = negative_prompt
        self.model = model
        self.reasoning = reasoning

    @classmethod
    def from_model(cls, model: str | None, device: str | None = None, torch_dtype=None, think: bool | None = None,
                   reflect: bool | None = None, max_tries: int | None = None, **settings) -> PipelineEditor:
        """Load the pipeline from ``model`` (a model directory, or ``None`` for the built-in default); ``think``,
        ``reflect`` and ``max_tries`` (None: the model's default) choose a v1.2 model's reasoning and are refused
        for other models."""
        from ..pipeline import load_pipeline
        from ..reasoning import options_for

        pipe = load_pipeline(model, device=device, torch_dtype=torch_dtype)
        reasoning = options_for(pipe.version, think=think, reflect=reflect, max_tries=max_tries)
        return cls(pipe, model=model, reasoning=reasoning, **settings)

    def __call__(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        import torch

        output = self.pipe(
            image=image,
            prompt=instruction,
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            size_level=self.size_level,
            generator=torch.Generator().manual_seed(seed),
            reasoning=self.reasoning,
        )
        return output.images[0]

    def settings(self) -> dict:
        """The run's settings for the manifest; ``reasoning`` (thinking, reflection, rounds, reply cap, decoding)
        only when the edits think or reflect."""
        from ..reasoning import resolve_options

        transformer = getattr(self.pipe, "transformer", None)
        config = getattr(transformer, "config", None)
        version = getattr(config, "version", None)
        settings = {
            "model": self.model or "default",
            "version": version,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "size_level": self.size_level,
            "negative_prompt": self.negative_prompt,
        }
        reasoning = resolve_options(version, self.reasoning) if version is not None else None
        if reasoning is not None and reasoning.active:
            settings["reasoning"] = {"think": reasoning.think, "reflect": reasoning.reflect,
                                     "max_tries": reasoning.max_tries, "max_new_tokens": reasoning.max_new_tokens,
                                     "greedy": reasoning.greedy}
        return settings


@dataclass(frozen=True)
class GenerationSummary:
    """Edits written by this process, samples skipped because their edit existed, and the shard it ran."""

    written: int
    skipped: int
    shard: tuple[int, int]


def process_state():
    """accelerate's state of this process (rank, world size, device) under ``accelerate launch`` or ``torchrun``;
    without GPUs it is asked to look for CPU processes, which it otherwise ignores."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that influence the edits."""
    versions = {"python": platform.python_version()}
    for package in ("step1x-edit", "torch", "diffusers", "transformers", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _write_manifest(results_dir: Path, run: dict, overwrite: bool) -> None:
    path = results_dir / MANIFEST_NAME
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_bytes().decode("utf-8")).get("run")
        except (ValueError, RecursionError, AttributeError) as error:  # not UTF-8 JSON, or not an object
            raise DataFormatError(f"{path} is not a generation manifest ({error}); remove it, or use --overwrite "
                                  "to regenerate every edit") from None
        if previous != run:
            recorded = previous if isinstance(previous, dict) else {}
            changed = sorted(k for k in set(run) | set(recorded) if recorded.get(k) != run.get(k))
            raise Step1XEditError(
                f"{results_dir} was generated with different settings ({', '.join(changed)}); use another "
                "--name, or --overwrite to regenerate every edit"
            )
        return
    manifest = {
        "run": run,
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_atomically(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.png")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def generate(
    samples: list[GEditSample],
    editor: Editor,
    results_dir: str | os.PathLike,
    seed: int = 0,
    source_column: str = "input_image",
    settings: dict | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> GenerationSummary:
    """Edit every sample into ``results_dir`` (``RESULTS/<name>``), skipping edits that already exist.

    ``seed`` seeds every sample's edit; ``source_column`` picks the dataset image that is edited; ``settings``
    (e.g. :meth:`PipelineEditor.settings`) is recorded in the manifest. ``shard=(index, count)`` edits every
    ``count``-th sample starting at ``index``; by default the shard comes from accelerate's process
    state, so ``accelerate launch`` or ``torchrun`` spreads the work over its processes.
    """
    from tqdm.auto import tqdm

    results_dir = Path(results_dir)
    if shard is None:
        state = process_state()
        shard = (state.process_index, state.num_processes)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    run = {"seed": seed, "source_column": source_column, **(settings or {})}
    if index == 0:
        _write_manifest(results_dir, run, overwrite)
    mine = samples[index::count]  # sharded before filtering, so every process sees the same split
    pending = [s for s in mine if overwrite or find_edited_image(results_dir, s) is None]
    for sample in tqdm(pending, desc=f"editing (shard {index + 1}/{count})", disable=not progress):
        source = sample.source_image(source_column)
        edited = editor(source, sample.instruction, seed)
        _save_atomically(edited, edit_path(results_dir, sample))
    return GenerationSummary(written=len(pending), skipped=len(mine) - len(pending), shard=shard)
