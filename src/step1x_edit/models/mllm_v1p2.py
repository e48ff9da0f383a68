"""Qwen2.5-VL as the Step1X-Edit v1.2 condition encoder.

The v1.2 condition differs from the v1 one (:mod:`step1x_edit.models.mllm`) in every step, and this module
reproduces the official diffusers pipeline (``Step1XEditPipelineV1P2``) exactly:

* one user message: a text item ``"{prefix} {instruction}"`` (the v1.2 prefix, protocol file
  ``step1x_v1p2_prefix.txt``) **then** the image, stock chat template with ``add_vision_id=True``;
* the rendered prompt is split at the tokenizer's added tokens, and past the first ``len(prefix)`` characters of the
  whole prompt, the characters inside straight ("...") or curly (“...”) double quotes become one segment each
  (:func:`split_quoted`); apostrophes are ordinary characters; each segment is tokenized on its own and the
  tokens of quoted characters are marked (``text_masks``);
* the image (the working-size image itself) goes through the Qwen2-VL image processor with 256..400 merged tokens;
* M-RoPE positions come from ``input_ids > 0`` as the attention mask ("!" is id 0), while the forward itself has
  no mask; the last hidden layer (after the final norm) from token :data:`DROP_TOKENS` on is the condition, cut to
  its valid length (at most :data:`MAX_TOKENS`), without padding;
* ``text_embeds`` are the MLLM's input embeddings (image features scattered in) over the same positions, for the
  DiT's text-token mapping;
* ``txt_ids`` are the kept positions' temporal M-RoPE ids shifted so that the largest is -1, with axes 1-2 zero
  except on image tokens, whose axes 1-2 are their centres mapped onto the packed latent grid
  (:func:`vision_token_positions`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin, Qwen2_5_VLForConditionalGeneration

from ..acceleration.memory import execution_device
from ..errors import InvalidPromptError
from ..protocol import protocol_text
from .mllm import VISION_TOKENS

PREFIX_FILE = "step1x_v1p2_prefix.txt"
DROP_TOKENS = 90  # the system turn and the prefix, up to but excluding its final ":"
MAX_TOKENS = 2048
OPEN_QUOTE, CLOSE_QUOTE = "\u201c", "\u201d"
VISION_CELL = 28  # pixels per merged vision token side (14-px patches, 2 x 2 merge)
LATENT_CELL = 16  # pixels per packed latent token side (VAE /8, 2 x 2 packing)


@dataclass
class Condition:
    """One v1.2 condition (batch of one), what the DiT reads, and the inputs that made it.

    ``embedding`` [1, V, hidden] and ``text_embeds`` [1, V, hidden] in the text encoder's dtype, ``mask`` and
    ``text_masks`` [1, V] int64, ``txt_ids`` [V, 3] float32; ``input_ids``, ``rope_attention_mask`` [1, T],
    ``position_ids`` [3, 1, T] (M-RoPE, before the cut), ``image_grid_thw`` [1, 3], ``segments`` and ``is_text``
    (the split of the rendered prompt).
    """

    embedding: torch.Tensor
    mask: torch.Tensor
    txt_ids: torch.Tensor
    text_embeds: torch.Tensor
    text_masks: torch.Tensor
    input_ids: torch.Tensor
    rope_attention_mask: torch.Tensor
    position_ids: torch.Tensor
    image_grid_thw: torch.Tensor
    segments: list[str] = field(default_factory=list)
    is_text: list[bool] = field(default_factory=list)


def prefix() -> str:
    """The v1.2 prompt prefix (449 characters, hash-checked)."""
    return protocol_text(PREFIX_FILE)


def render_prompt(processor: ProcessorMixin, instruction: str) -> str:
    """The chat-template string of the v1.2 prompt: prefix, a space and the instruction, then the image."""
    messages = [{"role": "user", "content": [{"type": "text", "text": f"{prefix()} {instruction}"},
                                             {"type": "image"}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, add_vision_id=True)


def special_token_strings(tokenizer) -> list[str]:
    """Every added token of ``tokenizer`` (special or not, e.g. ``<tool_call>``), the strings the prompt is split
    at."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values()}
    tokens.update(getattr(tokenizer, "additional_special_tokens", None) or [])
    return sorted(tokens)


def _split_part(text: str, start: int, prefix_len: int) -> tuple[list[str], list[bool]]:
    """Quote splitting of one part (no added tokens inside) that starts at index ``start`` of the prompt."""
    segments: list[str] = []
    is_text: list[bool] = []
    buffer = ""
    quoted: list[str] = []
    closing = None  # the closing quote while inside quotes
    for index, char in enumerate(text, start):
        if index < prefix_len:
            buffer += char
        elif closing is None:
            if char == '"':
                segments.append(buffer + char)
                is_text.append(False)
                buffer, closing = "", '"'
            elif char == OPEN_QUOTE:
                if buffer:  # the official code drops an opening curly quote that starts a part
                    segments.append(buffer + char)
                    is_text.append(False)
                buffer, closing = "", CLOSE_QUOTE
            else:
                buffer += char
        elif char == closing:
            segments += quoted
            is_text += [True] * len(quoted)
            quoted, buffer, closing = [], char, None
        else:
            quoted.append(char)
    if closing is not None:  # an unclosed quote: its characters are plain text after all
        rest = "".join(quoted) + buffer
        if segments and not is_text[-1]:
            segments[-1] += rest
        else:
            segments.append(rest)
            is_text.append(False)
    elif buffer:
        segments.append(buffer)
        is_text.append(False)
    return segments, is_text


def split_quoted(text: str, prefix_len: int, special_tokens: list[str]) -> tuple[list[str], list[bool]]:
    """Split the rendered prompt ``text`` as the official v1.2 pipeline does: at every string of
    ``special_tokens`` (each its own segment), then, for characters at index ``prefix_len`` or later of ``text``,
    every character inside "..." or “...” its own segment (marked ``True``), the text around them plain segments
    that end with the opening quote and start with the closing one."""
    if not special_tokens:
        return _split_part(text, 0, prefix_len)
    alternatives = sorted({re.escape(token) for token in special_tokens}, key=len, reverse=True)
    parts = [part for part in re.split(f"({'|'.join(alternatives)})", text) if part]
    specials = set(special_tokens)
    segments: list[str] = []
    is_text: list[bool] = []
    start = 0
    for part in parts:
        if part in specials:
            segments.append(part)
            is_text.append(False)
        else:
            part_segments, part_is_text = _split_part(part, start, prefix_len)
            segments += part_segments
            is_text += part_is_text
        start += len(part)
    return segments, is_text


def tokenize(processor: ProcessorMixin, image: Image.Image, instruction: str) -> tuple[BatchFeature, list[str], list[bool]]:
    """Model inputs of one (working-size image, instruction) pair: ``input_ids``, ``text_mask`` (1 on quoted
    characters' tokens), ``pixel_values``, ``image_grid_thw``; and the segments with their quoted flags."""
    if not isinstance(instruction, str):
        raise InvalidPromptError(f"the instruction must be a string, got {type(instruction).__name__}")
    for token in VISION_TOKENS:
        if token in instruction:
            raise InvalidPromptError(f"the instruction contains the reserved image placeholder {token}")
    template = render_prompt(processor, instruction)
    segments, is_text = split_quoted(template, len(prefix()), special_token_strings(processor.tokenizer))
    ids: list[int] = []
    text_mask: list[int] = []
    image_inputs = None
    for segment, quoted in zip(segments, is_text, strict=True):
        if "<|image_pad|>" in segment:
            image_inputs = processor(text=[segment], images=[image.convert("RGB")], return_tensors="pt")
            segment_ids = image_inputs["input_ids"][0].tolist()
        else:
            segment_ids = processor.tokenizer(segment, add_special_tokens=False).input_ids
        ids += segment_ids
        text_mask += [int(quoted)] * len(segment_ids)
    if image_inputs is None:
        raise InvalidPromptError("the rendered prompt has no image placeholder")
    inputs = BatchFeature({
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "text_mask": torch.tensor([text_mask], dtype=torch.long),
        "pixel_values": image_inputs["pixel_values"],
        "image_grid_thw": image_inputs["image_grid_thw"],
    })
    return inputs, segments, is_text


def _rope_positions(text_encoder, input_ids: torch.Tensor, image_grid_thw: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """M-RoPE positions [3, 1, T] under ``attention_mask``; masked tokens get position 1 (the transformers release
    the official code ran on; newer ones put 0 there)."""
    token_types = (input_ids == text_encoder.config.image_token_id).int()
    positions, _ = text_encoder.model.get_rope_index(
        input_ids, token_types, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    positions[:, attention_mask == 0] = 1
    return positions


def _image_features(text_encoder, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
    features = text_encoder.model.get_image_features(pixel_values.to(text_encoder.dtype), image_grid_thw)
    pooled = getattr(features, "pooler_output", features)  # transformers 5 / 4
    return torch.cat(list(pooled), dim=0)


def vision_token_positions(grid_hw: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Axes 1-2 (row, column) of the merged vision tokens [h*w, 2], row-major, on the packed latent grid.

    A token's centre in the processor's image (``28 * index + 13.5`` px) is mapped to the working-size image of
    ``image_size`` (width, height) by the align-corners scale ``(size - 1) / (processor size - 1)``, then onto the
    16-px latent token grid (``x / 16 - 11 / 16``). The affine maps are composed as 3x3 float32 matrices (the
    inverse of pixel -> token), as the official code does, so the values agree bit for bit.
    """
    rows, cols = grid_hw
    width, height = image_size
    resize = torch.eye(3)
    resize[0, 0] = (cols * VISION_CELL - 1) / (width - 1)
    resize[1, 1] = (rows * VISION_CELL - 1) / (height - 1)
    to_token = torch.tensor([[1 / VISION_CELL, 0, -13.5 / VISION_CELL], [0, 1 / VISION_CELL, -13.5 / VISION_CELL],
                             [0, 0, 1]])
    to_latent = torch.tensor([[1 / LATENT_CELL, 0, -11 / LATENT_CELL], [0, 1 / LATENT_CELL, -11 / LATENT_CELL],
                              [0, 0, 1]])
    affine = to_latent @ torch.linalg.inv(to_token @ resize)  # token index (x, y) -> latent grid (x, y)
    grid = torch.zeros(rows, cols, 2)
    grid[..., 0] += torch.arange(cols, dtype=torch.float32)[None, :]
    grid[..., 1] += torch.arange(rows, dtype=torch.float32)[:, None]
    mapped = grid.reshape(-1, 2) @ affine[:2, :2].T + affine[:2, -1][None]  # [h*w, (x, y)]
    return mapped[:, [1, 0]]  # (row, column)


def encode(
    text_encoder: Qwen2_5_VLForConditionalGeneration,
    processor: ProcessorMixin,
    image: Image.Image,
    instruction: str,
    drop: int = DROP_TOKENS,
    max_tokens: int = MAX_TOKENS,
) -> Condition:
    """The v1.2 condition of one (working-size image, instruction) pair (see the module docstring)."""
    inputs, segments, is_text = tokenize(processor, image, instruction)
    device = execution_device(text_encoder)
    input_ids = inputs["input_ids"]
    rope_mask = (input_ids > 0).long()
    grid = inputs["image_grid_thw"]
    positions = _rope_positions(text_encoder, input_ids, grid, rope_mask)  # [3, 1, T]
    with torch.inference_mode():
        embeds = text_encoder.model.get_input_embeddings()(input_ids.to(device))  # [1, T, hidden]
        image_mask = (input_ids == text_encoder.config.image_token_id).to(device)
        features = _image_features(text_encoder, inputs["pixel_values"].to(device), grid.to(device))
        embeds = embeds.masked_scatter(image_mask[..., None].expand_as(embeds), features.to(embeds.dtype))
        outputs = text_encoder(inputs_embeds=embeds, position_ids=positions.to(device), output_hidden_states=True,
                               use_cache=False, logits_to_keep=1)
    hidden = outputs.hidden_states[-1]
    valid = min(max_tokens, hidden.shape[1] - drop)
    keep = slice(drop, drop + valid)
    txt_ids = positions[:, 0, keep].T.float()  # [V, 3]
    txt_ids -= txt_ids[:, 0].max() + 1
    txt_ids[:, 1:] = 0
    vision = image_mask[0, keep].cpu()
    if vision.any():
        merge = text_encoder.config.vision_config.spatial_merge_size
        grid_hw = (int(grid[0, 1]) // merge, int(grid[0, 2]) // merge)
        mapped = vision_token_positions(grid_hw, image.size)
        txt_ids[vision, 1:] = mapped[: int(vision.sum())]
    return Condition(
        embedding=hidden[:, keep].clone(),
        mask=torch.ones(1, valid, dtype=torch.long),
        txt_ids=txt_ids,
        text_embeds=embeds[:, keep].clone(),
        text_masks=inputs["text_mask"][:, keep],
        input_ids=input_ids,
        rope_attention_mask=rope_mask,
        position_ids=positions,
        image_grid_thw=grid,
        segments=segments,
        is_text=is_text,
    )
