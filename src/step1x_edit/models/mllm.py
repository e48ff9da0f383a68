"""Qwen2.5-VL as the Step1X-Edit condition encoder (v1.0 / v1.1 protocol).

The condition of an edit is the last hidden layer of Qwen2.5-VL-7B-Instruct reading one user message
[text = fixed prefix, image = the working-size source image, text = instruction], rendered with the stock
Qwen2.5-VL chat template (default system turn, ``add_vision_id=True`` so the image is announced as
"Picture 1: ", ``add_generation_prompt=True``). This module reproduces the official embedder exactly,
including its quirks, because the released DiT weights were trained on them:

* quoted text is tokenized one character at a time (:func:`split_quoted_segments`); curly quotes and
  apostrophes count as quotes, so an unmatched apostrophe turns the rest of the prompt, chat-template tail
  included, into per-character tokens;
* the MLLM attention mask is ``input_ids != 0``: id 0 is the token "!" in the Qwen vocabulary, so a
  standalone "!" is hidden from attention (and skipped by the M-RoPE positions);
* the first :func:`prefix_token_count` positions (system turn + prefix, up to but excluding the final ":"
  of "User Prompt:"; 217 with the Qwen vocabulary) are dropped, and the rest is right-padded with zeros
  (or truncated) to ``max_length`` = 640 positions.

Public API: :func:`encode_prompts`, :func:`load_text_encoder` (and its ``attn_implementation``:
:func:`check_attn_implementation`, :func:`set_attn_implementation`), :func:`load_processor`, :func:`build_processor`, :func:`render_prompt`, :func:`split_quoted_segments`, :func:`tokenize_prompt`,
:func:`prefix_token_count`, :func:`resize_for_mllm`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    BatchFeature,
    ProcessorMixin,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)

from .. import validate
from ..acceleration.memory import execution_device
from ..errors import CheckpointError, InvalidImageError, InvalidPromptError, InvalidValueError
from ..protocol import protocol_text
from .presets import ATTN_IMPLEMENTATIONS

PREFIX_FILE = "step1x_v1_prefix.txt"
MAX_LENGTH = 640
# Positions dropped with the real Qwen2.5-VL vocabulary (system turn + prefix minus its final ":").
QWEN_PREFIX_TOKENS = 217
# Size of the Qwen2 byte-level BPE vocabulary without its special tokens; a tokenizer at least this large
# is taken to be the real one and must give QWEN_PREFIX_TOKENS.
QWEN_BASE_VOCAB_SIZE = 151643
# Merged visual tokens are 28 x 28 px (14-px patches, 2 x 2 merge); the image gives 256-324 of them.
PATCH_FACTOR = 28
MIN_PIXELS = 256 * PATCH_FACTOR * PATCH_FACTOR
MAX_PIXELS = 324 * PATCH_FACTOR * PATCH_FACTOR
# qwen_vl_utils' first resize (to multiples of 28) keeps the image between these areas.
VISION_UTILS_MIN_PIXELS = 4 * PATCH_FACTOR * PATCH_FACTOR
VISION_UTILS_MAX_PIXELS = 16384 * PATCH_FACTOR * PATCH_FACTOR
MAX_ASPECT_RATIO = 200
# A quote character toggles the quoted state only past this string index; the two quotes inside the
# prefix (around "Enhanced prompt", at indices 108 and 124 of the rendered template) are ignored.
QUOTE_TOGGLE_AFTER = 155
OPEN_QUOTE, CLOSE_QUOTE = "\u201c", "\u201d"
# Placeholders the processor expands or the model aligns image features on; an instruction cannot contain them.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")

# The stock Qwen2-VL / Qwen2.5-VL chat template (chat_template.json of Qwen/Qwen2.5-VL-7B-Instruct).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for still images, without a video processor.

    transformers' video processors need torchvision, and ``ProcessorMixin`` type-checks every sub-processor
    named in ``__init__``; a processor whose ``__init__`` names only ``image_processor`` and ``tokenizer``
    skips the video processor entirely (chat template, image-token expansion and saving work unchanged).
    A diffusers pipeline reloads it through its base class, which it looks up in this module
    (``ProcessorMixin`` is imported here for that, and for the annotations).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=chat_template,
            **kwargs,
        )


def build_processor(tokenizer, image_processor: Qwen2VLImageProcessorPil | None = None) -> ImageOnlyQwen2_5_VLProcessor:
    """A processor with the official image-size limits (256-324 visual tokens) and the stock chat template.

    The chat template always is :data:`QWEN2_5_VL_CHAT_TEMPLATE`: the prompt the DiT was trained on is defined
    by it, so a different template shipped with a model folder must not change the condition.
    """
    if image_processor is None:
        image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


# ---------------------------------------------------------------------------------------------- prompt
def _messages(instruction: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": protocol_text(PREFIX_FILE)},
                {"type": "image"},
                {"type": "text", "text": instruction},
            ],
        }
    ]


def render_prompt(processor: ProcessorMixin, instruction: str) -> str:
    """The chat-template string of the official prompt, with one unexpanded ``<|image_pad|>``."""
    return processor.apply_chat_template(
        _messages(instruction), tokenize=False, add_generation_prompt=True, add_vision_id=True
    )


def split_quoted_segments(template: str) -> list[str]:
    """Split a rendered prompt into the pieces the official embedder tokenizes one by one.

    Curly double quotes and apostrophes are first replaced by a straight double quote. Past string index
    :data:`QUOTE_TOGGLE_AFTER`, each quote toggles a "quoted" state: text outside quotes accumulates into
    one segment (an opening quote ends it and stays at its end, a closing quote starts the next one), and
    every character inside quotes becomes its own segment wrapped in curly quotes, e.g. ``“O”``.
    """
    text = template.replace(OPEN_QUOTE, '"').replace(CLOSE_QUOTE, '"').replace("'", '"')
    segments: list[str] = []
    current = ""
    quoted = False
    for index, char in enumerate(text):
        if char == '"' and index > QUOTE_TOGGLE_AFTER:
            if quoted:
                current = char
            else:
                segments.append(current + char)
                current = ""
            quoted = not quoted
        elif quoted:
            segments.append(OPEN_QUOTE + char + CLOSE_QUOTE)
        else:
            current += char
    if current:
        segments.append(current)
    return segments


def _single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise CheckpointError(f"the tokenizer splits {text!r} into {len(ids)} tokens; a Qwen2 vocabulary has one")
    return ids[0]


def _segment_ids(tokenizer, segments: list[str]) -> list[int]:
    """Tokenize each segment on its own; strip the curly quotes around a per-character segment when they
    come out as their own tokens (they merge with some characters, e.g. “A, and then stay)."""
    open_id, close_id = _single_token_id(tokenizer, OPEN_QUOTE), _single_token_id(tokenizer, CLOSE_QUOTE)
    ids: list[int] = []
    for segment_ids in tokenizer(segments, add_special_tokens=False).input_ids:
        if len(segment_ids) >= 2 and segment_ids[0] == open_id and segment_ids[-1] == close_id:
            segment_ids = segment_ids[1:-1]
        ids.extend(segment_ids)
    return ids


def prefix_token_count(tokenizer) -> int:
    """Leading positions the condition drops: tokens of the prompt up to and including "User Prompt:",
    minus one (so the kept sequence starts with that ":"). 217 with the Qwen2.5-VL vocabulary."""
    prefix = protocol_text(PREFIX_FILE)
    full = tokenizer.apply_chat_template(
        _messages(""), tokenize=False, add_generation_prompt=True, add_vision_id=True,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    head = full[: full.index(prefix) + len(prefix)]
    head_ids = tokenizer(head, add_special_tokens=False).input_ids
    full_ids = tokenizer(full, add_special_tokens=False).input_ids
    if full_ids[: len(head_ids)] != head_ids:
        raise CheckpointError("the tokenizer merges the end of the prompt prefix with the text after it")
    return len(head_ids) - 1


# ---------------------------------------------------------------------------------------------- image
def _round_to(value: float, factor: int, rounding=round) -> int:
    return int(rounding(value / factor) * factor)


def resize_for_mllm(image: Image.Image) -> Image.Image:
    """qwen_vl_utils' first resize: both sides rounded to multiples of 28 (area kept within
    4·28²…16384·28²), PIL bicubic; RGBA is composited on white first, as there."""
    if not isinstance(image, Image.Image):
        raise InvalidImageError(f"expected a PIL image, got {type(image).__name__}")
    width, height = image.size
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InvalidImageError(f"image of {width}x{height} px: the aspect ratio must be at most {MAX_ASPECT_RATIO}")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    elif image.mode != "RGB":
        image = image.convert("RGB")
    new_height = max(PATCH_FACTOR, _round_to(height, PATCH_FACTOR))
    new_width = max(PATCH_FACTOR, _round_to(width, PATCH_FACTOR))
    if new_height * new_width > VISION_UTILS_MAX_PIXELS:
        beta = math.sqrt(height * width / VISION_UTILS_MAX_PIXELS)
        new_height = _round_to(height / beta, PATCH_FACTOR, math.floor)
        new_width = _round_to(width / beta, PATCH_FACTOR, math.floor)
    elif new_height * new_width < VISION_UTILS_MIN_PIXELS:
        beta = math.sqrt(VISION_UTILS_MIN_PIXELS / (height * width))
        new_height = _round_to(height * beta, PATCH_FACTOR, math.ceil)
        new_width = _round_to(width * beta, PATCH_FACTOR, math.ceil)
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------- tokens
def tokenize_prompt(processor: ProcessorMixin, image: Image.Image, instruction: str) -> BatchFeature:
    """Model inputs of one (image, instruction) pair, batch of one, exactly as the official embedder builds them.

    ``input_ids``: the processor's ids (image expanded) before the first ``<|vision_end|>``, then the
    per-segment tokenization of :func:`split_quoted_segments` from ``<|vision_end|>`` on.
    ``attention_mask``: ``input_ids != 0`` (the official ``> 0``; id 0 is "!"). Also ``pixel_values``,
    ``image_grid_thw`` and ``mm_token_type_ids`` (1 on image tokens), which transformers needs for M-RoPE.
    """
    if not isinstance(instruction, str):
        raise InvalidPromptError(f"the instruction must be a string, got {type(instruction).__name__}")
    for token in VISION_TOKENS:
        if token in instruction:
            raise InvalidPromptError(f"the instruction contains the reserved image placeholder {token}")
    tokenizer = processor.tokenizer
    vision_end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
    template = render_prompt(processor, instruction)
    inputs = processor(text=[template], images=[resize_for_mllm(image)], return_tensors="pt")
    processor_ids = inputs["input_ids"][0].tolist()
    segment_ids = _segment_ids(tokenizer, split_quoted_segments(template))
    ids = processor_ids[: processor_ids.index(vision_end)] + segment_ids[segment_ids.index(vision_end):]
    input_ids = torch.tensor([ids], dtype=torch.long)
    return BatchFeature(
        {
            "input_ids": input_ids,
            "attention_mask": (input_ids != 0).long(),
            "mm_token_type_ids": (input_ids == processor.image_token_id).int(),
            "pixel_values": inputs["pixel_values"],
            "image_grid_thw": inputs["image_grid_thw"],
        }
    )


# ---------------------------------------------------------------------------------------------- encode
def _position_ids(text_encoder, inputs: BatchFeature) -> torch.Tensor:
    """M-RoPE positions [3, 1, L]; tokens hidden by the attention mask get position 1, as in the
    transformers release the official code ran on (newer releases put 0 there)."""
    position_ids, _ = text_encoder.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    position_ids[:, inputs["attention_mask"] == 0] = 1
    return position_ids


def encode_prompts(
    text_encoder: Qwen2_5_VLForConditionalGeneration,
    processor: ProcessorMixin,
    images: list[Image.Image],
    prompts: list[str],
    max_length: int = MAX_LENGTH,
    drop: int | None = None,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Step1X-Edit condition of (image, instruction) pairs: embeddings [B, max_length, hidden] in the text
    encoder's dtype and mask [B, max_length] int64.

    Each sample runs on its own, as in the official code: the last hidden layer after the final norm, minus the
    first ``drop`` positions (default :func:`prefix_token_count`), right-padded with zeros to ``max_length``; the
    mask is 1 on the kept positions. An empty instruction is valid (it is the CFG negative). Longer inputs keep
    their first ``max_length`` positions and warn; since the model is causal, the ids past ``drop + max_length``
    are cut before the forward, which leaves the kept positions unchanged. ``grad=True`` keeps the autograd graph
    (for training the text encoder); otherwise it runs in inference mode.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("encode_prompts needs at least one (image, prompt) pair")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if drop is None:
        drop = prefix_token_count(processor.tokenizer)
    vision_end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    device, dtype = execution_device(text_encoder), text_encoder.dtype
    embeddings, masks = [], []
    with torch.inference_mode(not grad):
        for index, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            inputs = tokenize_prompt(processor, image, prompt)
            length = inputs["input_ids"].shape[1]
            if length - drop > max_length:
                warnings.warn(
                    f"prompt {index} is {length - drop} tokens after the fixed prefix; keeping the first "
                    f"{max_length}, the end of the instruction is ignored", stacklevel=2,
                )
                keep = max(drop + max_length, inputs["input_ids"][0].tolist().index(vision_end) + 1)
                for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
                    inputs[key] = inputs[key][:, :keep]
            position_ids = _position_ids(text_encoder, inputs)
            outputs = text_encoder(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                pixel_values=inputs["pixel_values"].to(device, dtype),
                image_grid_thw=inputs["image_grid_thw"].to(device),
                mm_token_type_ids=inputs["mm_token_type_ids"].to(device),
                position_ids=position_ids.to(device),
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,
            )
            hidden = outputs.hidden_states[-1][0, drop : drop + max_length]  # [n, hidden], n <= max_length
            valid = hidden.shape[0]
            embeddings.append(torch.nn.functional.pad(hidden, (0, 0, 0, max_length - valid)))  # [max_length, hidden]
            masks.append((torch.arange(max_length, device=hidden.device) < valid).long())  # [max_length]
    return torch.stack(embeddings), torch.stack(masks)


# ---------------------------------------------------------------------------------------------- loading
# Bounds of a Qwen2.5-VL config's sizes, far above the 7B (28 layers of width 3584, vocabulary 152k, a 32-block
# vision tower), so that an absurd config.json is refused before transformers builds (and allocates) it. Fields
# missing from a config would silently take transformers' defaults, so the sizes are required.
TEXT_CONFIG_BOUNDS = {"hidden_size": 65_536, "intermediate_size": 262_144, "num_hidden_layers": 1_000,
                      "num_attention_heads": 1_024, "vocab_size": 10_000_000}
OPTIONAL_TEXT_CONFIG_BOUNDS = {"num_key_value_heads": 1_024, "max_position_embeddings": 10_000_000}
VISION_CONFIG_BOUNDS = {"depth": 1_000, "hidden_size": 65_536}
OPTIONAL_VISION_CONFIG_BOUNDS = {"intermediate_size": 262_144, "num_heads": 1_024, "out_hidden_size": 65_536,
                                 "patch_size": 1_024, "spatial_merge_size": 64, "temporal_patch_size": 64,
                                 "in_channels": 64, "window_size": 1_000_000}
# The image processor may not work on images larger than Qwen2-VL's own default limit (in pixels).
MAX_PROCESSOR_PIXELS = 16384 * PATCH_FACTOR * PATCH_FACTOR


def check_text_encoder_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless the Qwen2.5-VL ``config.json``
    ``config`` has every size it needs, each a positive integer within bounds. The text sizes may sit at the top
    level (the released file) or under ``text_config`` (transformers 5)."""
    text_config, vision = config.get("text_config", {}), config.get("vision_config")
    for name, part in (("text_config", text_config), ("vision_config", vision)):
        if not isinstance(part, Mapping):
            raise InvalidValueError(f"{name} must be an object, got {part!r}")
    text = {**config, **text_config}
    for part, prefix, required, optional in ((text, "", TEXT_CONFIG_BOUNDS, OPTIONAL_TEXT_CONFIG_BOUNDS),
                                             (vision, "vision_config.", VISION_CONFIG_BOUNDS, OPTIONAL_VISION_CONFIG_BOUNDS)):
        for name, high in required.items():
            if name not in part:
                raise InvalidValueError(f"{prefix}{name} is missing")
            validate.integer(prefix + name, part[name], 1, high)
        for name, high in optional.items():
            if name in part:
                validate.integer(prefix + name, part[name], 1, high)


def check_image_processor_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless the image processor settings
    ``config`` (``preprocessor_config.json``, or the ``image_processor`` object of ``processor_config.json``) keep
    images within ``MAX_PROCESSOR_PIXELS`` and patch sizes within bounds."""
    size = config.get("size") or {}
    if not isinstance(size, Mapping):
        raise InvalidValueError(f"size must be an object, got {size!r}")
    pixel_fields = {**{f"size.{key}": value for key, value in size.items() if key in ("shortest_edge", "longest_edge")},
                    **{key: config[key] for key in ("min_pixels", "max_pixels") if config.get(key) is not None}}
    for name, value in pixel_fields.items():
        validate.integer(name, value, 1, MAX_PROCESSOR_PIXELS)
    for name, high in (("patch_size", 1_024), ("merge_size", 64), ("temporal_patch_size", 64)):
        if name in config:
            validate.integer(name, config[name], 1, high)


def _check_model_folder(path: Path, processor: bool) -> None:
    """Raise :class:`CheckpointError` naming what the processor (``processor=True``) or the model needs and lacks."""
    if not path.is_dir():
        raise CheckpointError(
            f"Qwen2.5-VL folder {path} does not exist; download Qwen/Qwen2.5-VL-7B-Instruct from Hugging Face there"
        )
    missing = []
    if processor:
        if not (path / "tokenizer.json").is_file() and not all((path / n).is_file() for n in ("vocab.json", "merges.txt")):
            missing.append("tokenizer.json (or vocab.json and merges.txt)")
        if not any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            missing.append("preprocessor_config.json")
    else:
        if not (path / "config.json").is_file():
            missing.append("config.json")
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing += [shard for shard in shards if not (path / shard).is_file()]
        elif not (path / "model.safetensors").is_file():
            missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    if missing:
        raise CheckpointError(f"Qwen2.5-VL folder {path} is incomplete; missing: {', '.join(missing)}")


def load_processor(path: str | os.PathLike, pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS)) -> ImageOnlyQwen2_5_VLProcessor:
    """The processor of a local Qwen2.5-VL folder (tokenizer + image processor) with the image limits ``pixels``
    (min, max; default the v1 ones, 256-324 visual tokens) and the stock chat template. With the real Qwen
    vocabulary the prefix must be 217 tokens."""
    path = Path(path)
    _check_model_folder(path, processor=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, min_pixels=pixels[0], max_pixels=pixels[1])
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the Qwen2.5-VL processor from {path}: {error}") from error
    processor = build_processor(tokenizer, image_processor)
    if len(tokenizer) >= QWEN_BASE_VOCAB_SIZE and prefix_token_count(tokenizer) != QWEN_PREFIX_TOKENS:
        raise CheckpointError(
            f"the tokenizer in {path} gives {prefix_token_count(tokenizer)} prefix tokens, not {QWEN_PREFIX_TOKENS}; "
            "it is not the Qwen2.5-VL tokenizer the released weights were trained with"
        )
    return processor


# The attention implementations transformers offers Qwen2.5-VL (the flash-attention ones need their packages).


def check_attn_implementation(attn_implementation) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` unless ``attn_implementation`` is one of
    :data:`ATTN_IMPLEMENTATIONS`."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise InvalidValueError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got "
                                f"{attn_implementation!r}")


def set_attn_implementation(model, attn_implementation: str) -> None:
    """Switch a loaded Qwen2.5-VL (language and vision parts) to ``attn_implementation``; raises
    :class:`~step1x_edit.errors.InvalidValueError` for an unknown one or one this machine cannot run."""
    check_attn_implementation(attn_implementation)
    try:
        model.set_attn_implementation(attn_implementation)
    except (ImportError, ValueError) as error:
        raise _unusable_attention(attn_implementation, error) from error


def _unusable_attention(attn_implementation: str, error: Exception) -> InvalidValueError:
    return InvalidValueError(f"attn_implementation {attn_implementation!r} cannot be used here: "
                             f"{' '.join(str(error).split())}")


def load_text_encoder(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL from a local folder (eval mode, no gradients) with ``attn_implementation`` (one of
    :data:`ATTN_IMPLEMENTATIONS`, checked before anything is read; default SDPA)."""
    check_attn_implementation(attn_implementation)
    path = Path(path)
    _check_model_folder(path, processor=False)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=torch_dtype or torch.float32, attn_implementation=attn_implementation, device_map=device,
            use_safetensors=True,  # never a pickle (.bin) file
        )
    except ImportError as error:  # a flash-attention package that is missing
        raise _unusable_attention(attn_implementation, error) from error
    except (OSError, ValueError, RuntimeError) as error:
        message = " ".join(str(error).split())
        raise CheckpointError(f"cannot load Qwen2.5-VL from {path}: {message}") from error
    return model.eval().requires_grad_(False)
