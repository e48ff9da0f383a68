"""Training data: examples from a store, aspect-ratio buckets, cached VAE latents and MLLM conditions, batches.

* Examples come from a store written by the data engine (``iter_samples``; train/validation split by sample id)
  or from an official metadata JSON, which is first imported into a store (:func:`resolve_store`).
* Buckets are area-based and use the inference resize rule itself (:func:`step1x_edit.sampling.resize_dimensions`):
  an image trains at exactly the size the pipeline would edit it at for ``size_level = resolution``; sides are
  multiples of 16. Source and target share the target's bucket.
* :class:`Featurizer` turns an example into the tensors a step needs: target and reference latents (VAE mode,
  normalised), the MLLM condition of (source, instruction) for the requested languages and of (source, "") —
  the unconditional condition used by condition dropout. Conditions are stored trimmed to their valid length
  and padded to the pipeline's ``max_sequence_length`` when batched.
* :class:`FeatureCache` keeps those tensors on disk, one safetensors file per sample, written atomically, in a
  folder named after a fingerprint of everything that changes them (the VAE's and the MLLM's configs and weights,
  resolution, languages, length), so a changed setting never reads stale features, another run with the same VAE
  and MLLM reuses them, and an interrupted caching pass resumes where it stopped.
* :func:`plan_batches` shuffles deterministically per epoch (seeded), groups samples of one bucket into a
  batch and gives each process its share; the position in the plan is all a checkpoint needs to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import sampling
from ..data.store import MANIFEST, Store, iter_samples
from ..errors import DataFormatError
from ..models.mllm import encode_prompts
from ..models.vae import encode_latents, images_to_pixels
from .config import DataConfig

LANGUAGE_KEYS = {"en": ("en",), "zh": ("zh",), "both": ("en", "zh")}


@dataclass
class EditExample:
    """One training triplet (mask not needed for training)."""

    sample_id: str
    task: str
    source: Image.Image
    target: Image.Image
    instructions: dict[str, str]


def resolve_store(config: DataConfig, work_dir: str | os.PathLike) -> Path:
    """The store to read: ``config.store``, or ``config.metadata`` imported into ``work_dir/imported-data`` once."""
    if config.store is not None:
        path = Path(config.store)
        Store(path).manifest()  # a clear error when it is not a store
        return path
    from ..data.interchange import import_official_json

    target = Path(work_dir) / "imported-data"
    if not (target / MANIFEST).is_file():
        import_official_json(config.metadata, target, image_dir=config.image_dir, progress=False)
    return target


def load_examples(config: DataConfig, store: Path, split: str | None = None, limit: int | None = None) -> list[EditExample]:
    """Examples of ``split`` (default ``config.split``) whose instruction exists in the configured language(s)."""
    split = config.split if split is None else split
    examples = []
    for sample in iter_samples(store, None if split == "all" else split, config.validation_fraction,
                               list(config.tasks) or None):
        instructions = {"en": sample.instruction_en, "zh": sample.instruction_zh}
        if not all(instructions[key] for key in LANGUAGE_KEYS[config.language]):
            continue
        examples.append(EditExample(sample.sample_id, sample.task, sample.source, sample.target, instructions))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def repeat_tasks(examples: list[EditExample], repeats: dict[str, int]) -> list[EditExample]:
    """``examples`` with each one of a task in ``repeats`` listed that many times (in place, order kept); a task
    ``repeats`` names that no example has is an error (a typo would otherwise train on the unweighted mix)."""
    missing = sorted(set(repeats) - {example.task for example in examples})
    if missing:
        raise DataFormatError(f"data.task_repeats names task(s) {missing} that no training sample has")
    return [example for example in examples for _ in range(repeats.get(example.task, 1))]


def bucket_of(example: EditExample, resolution: int) -> tuple[int, int]:
    """(width, height) the example trains at: the inference resize rule at ``size_level = resolution``."""
    return sampling.resize_dimensions(example.target.width, example.target.height, resolution)


class Featurizer:
    """Computes a sample's training tensors with the pipeline's frozen VAE and MLLM (no gradients): the latents, and
    the conditions of the instructions in ``languages`` and of the empty instruction (none when ``languages`` is
    empty: a trained MLLM's conditions are computed at every step instead)."""

    def __init__(self, pipe, languages: tuple[str, ...]):
        self.pipe = pipe
        self.languages = languages

    def resized(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """``image`` in RGB at the bucket size ``size``, resampled as the pipeline's version does."""
        return image.convert("RGB").resize(size, sampling.RESIZE_FILTER[self.pipe.version])

    @torch.no_grad()
    def __call__(self, example: EditExample, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        pipe = self.pipe
        source = self.resized(example.source, size)
        target = self.resized(example.target, size)
        pixels = images_to_pixels([target, source])  # [2, 3, H, W]
        latents = encode_latents(pipe.vae, pixels).float().cpu()  # [2, C, H/8, W/8]
        features = {"target": latents[0].contiguous(), "reference": latents[1].contiguous()}
        if not self.languages:
            return features
        prompts = [example.instructions[key] for key in self.languages] + [""]
        embeds, masks = encode_prompts(
            pipe.text_encoder, pipe.processor, [source] * len(prompts), prompts,
            max_length=pipe.config.max_sequence_length,
        )
        for name, embed, mask in zip([*self.languages, "uncond"], embeds, masks, strict=True):
            valid = int(mask.sum())
            features[f"embeds_{name}"] = embed[:valid].float().cpu().contiguous()  # [valid, C']
        return features


def _weights_digest(module: torch.nn.Module) -> list:
    """Every tensor of ``module`` by name, shape, dtype, sum and sum of magnitudes: a change to any weight shows."""
    digest = []
    for name, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().double()
        digest.append([name, list(tensor.shape), str(tensor.dtype), float(values.sum()), float(values.abs().sum())])
    return digest


def model_fingerprint(pipe, resolution: int, languages: tuple[str, ...]) -> str:
    """A short hash of everything that changes cached features: the VAE and the MLLM (configs and weights, not
    where they were loaded from, so a fine-tuning run from another run's model reuses its features), the condition
    length, the resolution and the languages. The DiT and the connector do not count: they are what is trained; nor
    does the MLLM when no language is cached (latents only)."""

    def config_without_path(config: dict) -> dict:
        return {key: value for key, value in config.items() if key != "_name_or_path"}

    description = {
        "version": pipe.version,
        "vae": config_without_path(dict(pipe.vae.config)),
        "resolution": resolution,
        "languages": languages,
        "vae_weights": _weights_digest(pipe.vae),
    }
    if languages:
        description.update(text_encoder=config_without_path(pipe.text_encoder.config.to_dict()),
                           max_sequence_length=pipe.config.max_sequence_length,
                           text_encoder_weights=_weights_digest(pipe.text_encoder))
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureCache:
    """On-disk features, ``<root>/<fingerprint>/<sample hash>.safetensors``, written atomically."""

    def __init__(self, root: str | os.PathLike, fingerprint: str):
        self.root = Path(root) / fingerprint
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sample_id: str) -> Path:
        return self.root / f"{hashlib.sha256(sample_id.encode()).hexdigest()[:24]}.safetensors"

    def __contains__(self, sample_id: str) -> bool:
        return self.path(sample_id).is_file()

    def save(self, sample_id: str, features: dict[str, torch.Tensor]) -> None:
        path = self.path(sample_id)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        save_file(features, temporary, metadata={"sample_id": sample_id})
        os.replace(temporary, path)

    def load(self, sample_id: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.path(sample_id))
        except Exception as error:  # a truncated file from a crash outside the atomic write, or disk damage
            raise DataFormatError(
                f"cached features of {sample_id} at {self.path(sample_id)} are unreadable ({error}); delete the file "
                "and rerun to recompute them"
            ) from error


class FeatureSource:
    """Gives the features of sample ``i``: from the cache (filled by :meth:`fill`) or computed on demand."""

    def __init__(self, examples: list[EditExample], resolution: int, featurizer: Featurizer,
                 cache: FeatureCache | None):
        self.examples = examples
        self.sizes = [bucket_of(example, resolution) for example in examples]
        self.featurizer = featurizer
        self.cache = cache

    def fill(self, progress: bool = True, shard: tuple[int, int] = (0, 1)) -> int:
        """Compute and store the missing features of this process's share ``(rank, world)``; returns how many."""
        if self.cache is None:
            return 0
        rank, world = shard
        first = list({example.sample_id: index for index, example in reversed(list(enumerate(self.examples)))}.values())
        first.sort()  # each sample once (repeated tasks list a sample several times), in order
        todo = [i for i in first[rank::world] if self.examples[i].sample_id not in self.cache]
        for index in tqdm(todo, desc="caching latents and conditions", disable=not progress or not todo, unit="sample"):
            self.cache.save(self.examples[index].sample_id, self.featurizer(self.examples[index], self.sizes[index]))
        return len(todo)

    def source_image(self, index: int) -> Image.Image:
        """Sample ``index``'s source image as the MLLM sees it (RGB, at its bucket size)."""
        return self.featurizer.resized(self.examples[index].source, self.sizes[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        if self.cache is not None:
            return self.cache.load(example.sample_id)
        return self.featurizer(example, self.sizes[index])


def plan_batches(sizes: list[tuple[int, int]], batch_size: int, seed: int, epoch: int,
                 world_size: int = 1, rank: int = 0) -> list[list[int]]:
    """This process's batches for ``epoch``: sample indices shuffled with ``(seed, epoch)``, cut into batches of
    one bucket each (a bucket's last batch may be smaller), batches shuffled, then dealt round-robin to
    ``world_size`` processes (the total is cut to a multiple of it, so every process steps equally)."""
    rng = random.Random(f"{seed}-{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    order = list(range(len(sizes)))
    rng.shuffle(order)
    for index in order:
        by_bucket[sizes[index]].append(index)
    batches = [members[i : i + batch_size] for _, members in sorted(by_bucket.items())
               for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def collate(features: list[dict[str, torch.Tensor]], language: str, max_length: int) -> dict[str, torch.Tensor]:
    """Stack one bucket's features: latents [B, C, h, w]; conditions padded to ``max_length`` with masks (when the
    features have them)."""

    def padded(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        items = [item[key] for item in features]
        embeds = torch.zeros(len(items), max_length, items[0].shape[-1])
        mask = torch.zeros(len(items), max_length, dtype=torch.long)
        for row, item in enumerate(items):
            embeds[row, : item.shape[0]] = item[:max_length]
            mask[row, : item.shape[0]] = 1
        return embeds, mask

    batch = {"target": torch.stack([item["target"] for item in features]),
             "reference": torch.stack([item["reference"] for item in features])}
    if "embeds_uncond" in features[0]:
        batch["embeds"], batch["mask"] = padded(f"embeds_{language}")
        batch["uncond_embeds"], batch["uncond_mask"] = padded("embeds_uncond")
    return batch

