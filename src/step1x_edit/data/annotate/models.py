"""Detection, segmentation and inpainting behind small protocols, with transformers / diffusers implementations,
and the model-backed subject-removal stage built from them.

Plug any model that satisfies :class:`Detector`, :class:`Segmenter` or :class:`Inpainter` (Florence-2,
GroundingDINO, SAM 2, LaMa, FLUX-Fill ...). The implementations here wrap what transformers and diffusers ship:
zero-shot detection pipelines (OWL-ViT / OWLv2 / GroundingDINO), SAM, and any diffusers inpainting pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter

from ..records import decode_png, make_record
from ..stages import Record, Resources, Stage

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box


class Detector(Protocol):
    def detect(self, image: Image.Image, labels: Sequence[str]) -> list[Detection]:
        """Objects of the given ``labels`` in ``image``, best first."""


class Segmenter(Protocol):
    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        """One boolean (H, W) mask per box."""


class Inpainter(Protocol):
    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str = "") -> Image.Image:
        """``image`` with the white pixels of ``mask`` (mode "L") filled in."""


class TransformersDetector:
    """Zero-shot detection through a transformers ``zero-shot-object-detection`` pipeline (model id, local path,
    or a ready pipeline object)."""

    def __init__(self, model: str | Any, threshold: float = 0.1, device: str | int | None = None):
        if isinstance(model, str):
            from transformers import pipeline

            model = pipeline("zero-shot-object-detection", model=model, device=device)
        self.pipeline = model
        self.threshold = threshold

    def detect(self, image: Image.Image, labels: Sequence[str]) -> list[Detection]:
        width, height = image.size
        results = self.pipeline(image, candidate_labels=list(labels), threshold=self.threshold)
        detections = []
        for result in results:
            box = result["box"]
            clipped = (  # models may predict boxes reaching past the border
                float(min(max(box["xmin"], 0), width)),
                float(min(max(box["ymin"], 0), height)),
                float(min(max(box["xmax"], 0), width)),
                float(min(max(box["ymax"], 0), height)),
            )
            if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                detections.append(Detection(result["label"], float(result["score"]), clipped))
        return sorted(detections, key=lambda detection: -detection.score)


class BoxSegmenter:
    """The box itself as the mask: a model-free baseline and a stand-in for tests."""

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        masks = []
        for x0, y0, x1, y1 in boxes:
            mask = np.zeros((image.size[1], image.size[0]), dtype=bool)
            mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
            masks.append(mask)
        return masks


class SamSegmenter:
    """Box-prompted segmentation with transformers' SAM (``SamModel`` + ``SamProcessor``)."""

    def __init__(self, model: str | Any, processor: Any | None = None, device: str = "cpu"):
        import torch
        from transformers import SamModel, SamProcessor

        if isinstance(model, str):
            processor = processor or SamProcessor.from_pretrained(model)
            model = SamModel.from_pretrained(model, use_safetensors=True)
        if processor is None:
            raise ValueError("pass the SamProcessor together with a loaded SamModel")
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self._torch = torch

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        if not boxes:
            return []
        inputs = self.processor(
            images=image, input_boxes=[[list(map(float, box)) for box in boxes]], return_tensors="pt"
        )
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with self._torch.no_grad():
            outputs = self.model(**inputs, multimask_output=False)
        masks = self.processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )
        return [mask[0].numpy().astype(bool) for mask in masks[0]]  # masks[0]: (boxes, 1, H, W)


class DiffusersInpainter:
    """Any diffusers inpainting pipeline (``pipe(image=, mask_image=, ...)``). Pixels outside the mask are copied
    from the input, so only the masked region is generated."""

    def __init__(self, pipeline: Any, num_inference_steps: int = 30, seed: int = 0, **call_kwargs: Any):
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.call_kwargs = call_kwargs

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", **kwargs: Any) -> DiffusersInpainter:
        from diffusers import AutoPipelineForInpainting

        return cls(AutoPipelineForInpainting.from_pretrained(path, use_safetensors=True).to(device), **kwargs)

    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str = "") -> Image.Image:
        import torch

        kwargs = dict(self.call_kwargs)
        if "prompt_embeds" not in kwargs:
            kwargs["prompt"] = prompt
        result = self.pipeline(
            image=image,
            mask_image=mask,
            num_inference_steps=self.num_inference_steps,
            generator=torch.Generator().manual_seed(self.seed),
            height=image.size[1],
            width=image.size[0],
            **kwargs,
        ).images[0]
        result = result.convert("RGB").resize(image.size)
        return Image.composite(result, image.convert("RGB"), mask.convert("L"))


def remove_subject(
    image: Image.Image,
    labels: Sequence[str],
    detector: Detector,
    segmenter: Segmenter,
    inpainter: Inpainter,
    grow: int = 5,
    min_score: float = 0.0,
) -> tuple[Image.Image, Image.Image, Detection] | None:
    """Detect the best of ``labels``, segment it, grow the mask by ``grow`` pixels and inpaint it.
    Returns (target, mask, detection), or ``None`` when nothing scores ``min_score`` or more."""
    detections = [d for d in detector.detect(image, labels) if d.score >= min_score]
    if not detections:
        return None
    best = detections[0]
    mask_array = segmenter.segment(image, [best.box])[0]
    mask = Image.fromarray(mask_array.astype(np.uint8) * 255, "L")
    if grow > 0:
        mask = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
    return inpainter.inpaint(image, mask, prompt="background"), mask, best


class ModelRemoval:
    """Batch function: photo records (``source_image`` holds the photo) → subject-removal triplets.
    A photo with no detection keeps target = source and gets the reject reason ``no_detection``."""

    def __init__(
        self,
        detector: Detector,
        segmenter: Segmenter,
        inpainter: Inpainter,
        labels: Sequence[str],
        generator: dict[str, str],
    ):
        self.detector, self.segmenter, self.inpainter = detector, segmenter, inpainter
        self.labels = list(labels)
        self.generator = generator

    def __call__(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            image = decode_png(record["source_image"])
            result = remove_subject(image, self.labels, self.detector, self.segmenter, self.inpainter)
            provenance = {**(record.get("provenance") or {}), "parent_ids": [record["sample_id"]]}
            if result is None:
                new = make_record(
                    sample_id=record["sample_id"],
                    task="subject_removal",
                    source=image,
                    target=image,
                    instruction_en="",
                    instruction_zh="",
                    generator=self.generator,
                    provenance=provenance,
                )
                new["reject_reasons"] = ["no_detection: none of " + ", ".join(self.labels)]
            else:
                target, mask, detection = result
                new = make_record(
                    sample_id=record["sample_id"],
                    task="subject_removal",
                    source=image,
                    target=target,
                    instruction_en=f"Remove the {detection.label}.",
                    instruction_zh="",
                    generator=self.generator,
                    mask=mask,
                    provenance=provenance,
                    meta={
                        "detection": {
                            "label": detection.label,
                            "score": detection.score,
                            "box": list(detection.box),
                        }
                    },
                )
                new["scores"] = {"detection": detection.score}
            new["meta"] = json.dumps(
                {**json.loads(record.get("meta") or "{}"), **json.loads(new["meta"])}, sort_keys=True
            )
            out.append(new)
        return out


def removal_stage(
    build: Callable[[], ModelRemoval], config: dict[str, Any], gpus: float = 0.0, actors: int = 1
) -> Stage:
    """A model stage from a zero-argument, picklable factory that loads the models once per worker."""
    return Stage(
        "model_removal",
        build,
        Resources(cpus=1, gpus=gpus, model=True, concurrency=actors),
        "1",
        config,
        batch_size=4,
    )
