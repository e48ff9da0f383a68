"""Thinking and reflection: the Step1X-Edit v1.2 reasoning loop, as the official pipeline runs it.

*Thinking* asks the model's own Qwen2.5-VL to rewrite a vague instruction ("make it look like winter") into at
most three concrete edit actions before editing. *Reflection* judges each edit with the same model and decides
what happens next; one round of it is five stages, each its own model call:

1. ``generate_descriptions``: describe the target image the instruction asks for, from the source image;
2. ``evaluate_consistency``: compare the edited image with that description, as JSON counts and a raw score, then
   cap the score (:func:`finalize_consistency`: "no" <= 2, "partial" <= 5, two major conflicts <= 5, one <= 8, any
   hallucination or omission <= 7, any problem < 9);
3. ``generate_reflection``: over (source, edited) with that score as a prior, answer ``<#Think> ...`` and exactly
   one of ``<#Success>`` (stop), ``<#Reflection> <new instruction>`` (edit the **edited** image again with the new
   instruction), ``<#Failed>`` (edit the source again with the instruction), or ``<#Others>`` (stop);
4. ``generate_score1`` and 5. ``generate_score2``: VIEScore-style scores of the edit (success, over-editing) and of
   the image (naturalness, artifacts).

At most ``max_tries`` rounds; the round returned is the one with the largest ``min(score1) * min(score2)``, a tie
going to a round whose reflection says ``<#Success>`` over one that does not, and otherwise to the later round
(:func:`choose_round`). The reflection, description and scores always judge the edit against the original image
and the (rewritten) instruction, whatever the round edited.

Exactly as the official code: every reply is cut at :data:`REPLY_TOKENS` tokens (the official client ignores the
lengths its callers ask for) and sampled (top-p 0.9, temperature 0.7); a reply that cannot be used is asked again,
up to :data:`MAX_STAGE_TRIES` times per stage, after which the round counts as ``<#Failed>`` (reflection) or
scores ``[0, 0]`` (scoring); images go to the model as PNG data URLs at most 1024 px on a side, resized to
:data:`JUDGE_PIXELS`. :class:`ReasoningOptions` adds a seed (each model call is seeded from it, so a run repeats),
a longer reply cap and greedy decoding, and a reflection judge of your own: any OpenAI-compatible vision model
(:class:`OpenAIChat`). The message texts are protocol data (``protocol/step1x_v1p2_*_{system,user}.txt``,
hash-checked).

The plain v1.2 call reflects (3 rounds at most) and does not think, as the official pipeline does; see
``docs/reasoning.md`` for what each costs and brings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from . import validate
from .acceleration.memory import execution_device
from .errors import InvalidValueError, Step1XEditError
from .protocol import protocol_text
from .versions import RECIPE_V1P2, get_version

# The official pipeline's stages (its method names), in the order a round calls them.
STAGE_REWRITE = "prompt_reformat"
STAGE_DESCRIBE = "generate_descriptions"
STAGE_CONSISTENCY = "evaluate_consistency"
STAGE_REFLECT = "generate_reflection"
STAGE_SCORE_EDIT = "generate_score1"
STAGE_SCORE_QUALITY = "generate_score2"
# The protocol files holding each stage's system and user texts (step1x_v1p2_<name>_{system,user}.txt).
PROMPT_FILES = {STAGE_REWRITE: "rewrite", STAGE_DESCRIBE: "describe", STAGE_CONSISTENCY: "consistency",
                STAGE_REFLECT: "reflect", STAGE_SCORE_EDIT: "score_edit", STAGE_SCORE_QUALITY: "score_quality"}
# The fields a prompt text may hold, written {name} in the files.
PROMPT_FIELDS = ("instruction", "language", "description", "score", "reason")

REPLY_TOKENS = 128  # every reply's cap in the official client, whatever its caller asked for
MAX_REPLY_TOKENS = 4096
TOP_P, TEMPERATURE = 0.9, 0.7
MAX_STAGE_TRIES = 20  # asks per stage before the round fails (reflection) or scores [0, 0] (scoring)
DEFAULT_MAX_TRIES = 3
MAX_TRIES = 10
MAX_IMAGE_SIDE = 1024  # images are thumbnailed to this before they become data URLs
JUDGE_PIXELS = (262144, 802816)  # the Qwen2.5-VL image processor's min/max pixels for these calls
# The chat client's first resize of a data-URL image (qwen-vl-utils): sides multiples of 28, 4 to 16384 tokens.
IMAGE_FACTOR = 28
URL_IMAGE_PIXELS = (4 * 28 * 28, 16384 * 28 * 28)

THINK_TAG = "<#Think>"
REFLECTION_TAG, FAILED_TAG, SUCCESS_TAG, OTHERS_TAG = "<#Reflection>", "<#Failed>", "<#Success>", "<#Others>"
DECISION_TAGS = (REFLECTION_TAG, FAILED_TAG, SUCCESS_TAG, OTHERS_TAG)
CHINESE, ENGLISH = "中文", "英文"  # the language names the prompts are filled with
ERROR_PREFIX = "错误:"  # a reply starting with this is an error report, not an answer
# What a round's reflection is when a stage of it failed MAX_STAGE_TRIES times.
FAILED_REFLECTION = "<#Think> The process encountered repeated errors and could not complete.<#Failed>"


class ReasoningError(Step1XEditError):
    """The reasoning loop cannot go on: the rewriter answered with an error, or the judge cannot be reached."""


class InvalidReply(ValueError):
    """A model reply a stage cannot use; the stage asks again (up to :data:`MAX_STAGE_TRIES` times)."""


# ---------------------------------------------------------------------------------------------- the official units
def language_of(text: str) -> str:
    """``"中文"`` when ``text`` has more than one CJK ideograph (U+4E00..U+9FFF), else ``"英文"``: the language the
    prompts ask the model to answer in."""
    return CHINESE if len(re.findall(r"[\u4e00-\u9fff]", text)) > 1 else ENGLISH


def is_decision(text: str) -> bool:
    """Whether a reflection is well formed for a decision: it starts with its only ``<#Think>`` and holds exactly
    one decision tag (counting repeats)."""
    if not text.startswith(THINK_TAG) or text.count(THINK_TAG) != 1:
        return False
    return sum(text.count(tag) for tag in DECISION_TAGS) == 1


def parse_decision(text: str) -> tuple[bool, str | None]:
    """(success, refined instruction) of a reflection: ``<#Success>`` and ``<#Others>`` succeed, ``<#Reflection>``
    gives everything after it (leading space included) as the next round's instruction, anything else (``<#Failed>``
    or a malformed text, see :func:`is_decision`) is (False, None)."""
    if not is_decision(text):
        return False, None
    if REFLECTION_TAG in text:
        return False, text.split(REFLECTION_TAG)[1]
    return SUCCESS_TAG in text or OTHERS_TAG in text, None


def check_reflection(text: Any) -> tuple[bool, str]:
    """(valid, text from its ``<#Think>`` on, stripped) of a reflection reply, or (False, the official error
    message): it needs a ``<#Think>``, exactly one kind of decision tag, once, after the first ``<#Think>``."""
    if not isinstance(text, str):
        return False, "错误: 返回非字符串"
    think = text.find(THINK_TAG)
    if think < 0:
        return False, f"错误: 缺少 {THINK_TAG}"
    present = [tag for tag in DECISION_TAGS if tag in text]
    if len(present) != 1:
        return False, f"错误: 需要且仅需要 {list(DECISION_TAGS)} 之一, 但找到了 {len(present)} 个。"
    tag = present[0]
    if text.count(tag) > 1:
        return False, f"错误: 标签 {tag} 出现次数 > 1"
    if text.find(tag) < think:
        return False, f"错误: 反思/失败/成功标签必须出现在 {THINK_TAG} 之后"
    return True, text[think:].strip()


def parse_json_block(text: str) -> Any:
    """The JSON value spanning the first ``{`` to the last ``}`` of ``text``, or None when there is none or it does
    not parse."""
    match = re.search(r"\{.*\}", text, flags=re.S)
    if not match:
        return None
    try:
        return json.loads(match.group(0))
    except json.JSONDecodeError:
        return None


def finalize_consistency(obj: Any) -> dict[str, Any] | None:
    """The consistency judgement ``obj`` with its score capped, or None when a field has the wrong type.

    ``raw_score`` in [0, 1] is taken as a fraction and scaled by 10, then clipped to [0, 10]; the caps (each also
    named in ``cap_trace``): meets_instruction "no" <= 2, "partial" <= 5; two or more major conflicts <= 5, one <= 8;
    any hallucination or omission <= 7; any of these or meets_instruction other than "yes" < 9 (8.99). ``score`` is
    rounded to 4 decimals.
    """
    try:
        meets = str(obj.get("meets_instruction", "")).strip().lower()
        major = int(obj.get("major_conflicts", 0) or 0)
        minor = int(obj.get("minor_conflicts", 0) or 0)
        hallucinations = int(obj.get("hallucinations", 0) or 0)
        omissions = int(obj.get("omissions", 0) or 0)
        raw = float(obj.get("raw_score", 0))
        reason = str(obj.get("reason", "")).strip()
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if 0 <= raw <= 1.0000001:
        raw *= 10.0
    raw = max(0.0, min(10.0, raw))
    cap, trace = 10.0, []
    if meets == "no":
        cap = min(cap, 2.0)
        trace.append("cap<=2: 未满足指令关键要求")
    elif meets == "partial":
        cap = min(cap, 5.0)
        trace.append("cap<=5: 仅部分满足指令")
    if major >= 2:
        cap = min(cap, 5.0)
        trace.append("cap<=5: 多个明显矛盾")
    elif major == 1:
        cap = min(cap, 8.0)
        trace.append("cap<=8: 存在1个明显矛盾")
    if hallucinations > 0 or omissions > 0:
        cap = min(cap, 7.0)
        why = ([f"幻觉x{hallucinations}"] if hallucinations > 0 else []) + ([f"遗漏x{omissions}"] if omissions > 0 else [])
        trace.append(f"cap<=7: {', '.join(why)}")
    if meets != "yes" or major > 0 or hallucinations > 0 or omissions > 0:
        cap = min(cap, 8.99)
        trace.append("cap<9: 存在明显差异/问题")
    return {"score": float(f"{min(raw, cap):.4f}"), "raw_score": raw, "cap_trace": trace, "meets_instruction": meets,
            "major_conflicts": major, "minor_conflicts": minor, "hallucinations": hallucinations,
            "omissions": omissions, "reason": reason}


def check_scores(text: str) -> tuple[bool, Any]:
    """(True, the parsed object) when ``text`` (optionally in a ```json or ``` fence) is a JSON object with a
    ``score`` list and a ``reasoning``; else (False, ``text``)."""
    try:
        content = text.strip()
        if content.startswith("```json"):
            content = content[7:-3].strip()
        elif content.startswith("```"):
            content = content[3:-3].strip()
        parsed = json.loads(content)
        if "score" in parsed and "reasoning" in parsed and isinstance(parsed["score"], list):
            return True, parsed
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        pass
    return False, text


def score_product(scores: dict[str, Any]) -> float | None:
    """``min(score1) * min(score2)`` of a round's scores, the quantity rounds are ranked by; None when a score list
    is empty or not numbers (the official code stops with an error there; such a round is never chosen)."""
    try:
        product = min(scores["score1"]["score"]) * min(scores["score2"]["score"])
    except (TypeError, ValueError, KeyError):
        return None
    return product if isinstance(product, (int, float)) and not isinstance(product, bool) else None


# ---------------------------------------------------------------------------------------------- messages
def render(stage: str, role: str, **fields: Any) -> str:
    """The ``role`` ("system" or "user") text of ``stage`` with ``fields`` filled in (one pass: a value holding
    ``{name}`` stays as it is)."""
    template = protocol_text(f"step1x_v1p2_{PROMPT_FILES[stage]}_{role}.txt")
    pattern = re.compile(r"\{(" + "|".join(PROMPT_FIELDS) + r")\}")
    return pattern.sub(lambda match: str(fields[match.group(1)]), template)


def image_data_url(image: Image.Image) -> str:
    """``image`` as the official client sends it: RGB, thumbnailed to at most 1024 px a side, a PNG data URL."""
    from .chat import data_url

    image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return data_url(image, "PNG")


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _messages(stage: str, parts: list[dict], **fields: Any) -> list[dict]:
    return [{"role": "system", "content": render(stage, "system", **fields)},
            {"role": "user", "content": parts}]


def rewrite_messages(source_url: str, instruction: str) -> list[dict]:
    """Thinking: rewrite ``instruction`` for the image ``source_url`` (image, then text)."""
    fields = {"instruction": instruction, "language": language_of(instruction)}
    return _messages(STAGE_REWRITE, [_image(source_url), _text(render(STAGE_REWRITE, "user", **fields))])


def describe_messages(source_url: str, instruction: str) -> list[dict]:
    """Reflection stage 1: describe the target image of ``instruction`` applied to ``source_url``."""
    fields = {"instruction": instruction, "language": language_of(instruction)}
    return _messages(STAGE_DESCRIBE, [_image(source_url), _text(render(STAGE_DESCRIBE, "user", **fields))], **fields)


def consistency_messages(edited_url: str, description: str, instruction: str) -> list[dict]:
    """Reflection stage 2: judge ``edited_url`` against ``description`` (text, then image)."""
    fields = {"instruction": instruction, "language": language_of(instruction), "description": description}
    return _messages(STAGE_CONSISTENCY, [_text(render(STAGE_CONSISTENCY, "user", **fields)), _image(edited_url)])


def reflection_messages(source_url: str, edited_url: str, instruction: str, prior_score: Any,
                        prior_reason: Any) -> list[dict]:
    """Reflection stage 3: decide on (source, edited) with the consistency score and reason as a prior."""
    text = render(STAGE_REFLECT, "user", instruction=instruction, score=prior_score, reason=prior_reason)
    return _messages(STAGE_REFLECT, [_image(source_url), _image(edited_url), _text(text)])


def edit_score_messages(source_url: str, edited_url: str, instruction: str) -> list[dict]:
    """Reflection stage 4: score the edit, ``[success, over-editing]``."""
    text = render(STAGE_SCORE_EDIT, "user", instruction=instruction)
    return _messages(STAGE_SCORE_EDIT, [_image(source_url), _image(edited_url), _text(text)])


def quality_score_messages(edited_url: str) -> list[dict]:
    """Reflection stage 5: score the edited image alone, ``[naturalness, artifacts]``."""
    return _messages(STAGE_SCORE_QUALITY, [_image(edited_url), _text(render(STAGE_SCORE_QUALITY, "user"))])


def describe_image_url(url: str) -> str:
    """A short stand-in for a data-URL image in a trace: its format, size and the SHA-256 of its RGB pixels (first 16
    hex digits), e.g. ``<data:image/png;base64,... PNG 88x66 rgb_sha256=9ba181d135033612>``."""
    head, _, data = url.partition(",")
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        pixels = image.convert("RGB").tobytes()
        return f"<{head},... {image.format} {image.width}x{image.height} rgb_sha256=" \
               f"{hashlib.sha256(pixels).hexdigest()[:16]}>"


# ---------------------------------------------------------------------------------------------- models
class ChatModel(Protocol):
    """A vision-language model the loop asks: ``model(stage, messages) -> reply`` (the reply stripped of
    surrounding white space). ``messages`` are OpenAI-style chat messages, images as PNG data URLs."""

    def __call__(self, stage: str, messages: list[dict]) -> str: ...


def _url_image(url: str) -> Image.Image:
    """The image of a data URL, RGB, resized as the official client's image loader does (sides multiples of 28,
    4 to 16384 tokens, bicubic)."""
    _, _, data = url.partition("base64,")
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        image = image.convert("RGB")
    height, width = _smart_resize(image.height, image.width)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR,
                  pixels: tuple[int, int] = URL_IMAGE_PIXELS) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` (at least one), scaled into ``pixels`` (min, max)."""
    low, high = pixels
    new_height = max(factor, round(height / factor) * factor)
    new_width = max(factor, round(width / factor) * factor)
    if new_height * new_width > high:
        beta = math.sqrt(height * width / high)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < low:
        beta = math.sqrt(low / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def judge_processor(processor):
    """``processor`` (a Qwen2.5-VL processor) with the image limits of the reasoning calls (:data:`JUDGE_PIXELS`)."""
    from .models.mllm import build_processor

    image_processor = processor.image_processor
    low, high = JUDGE_PIXELS
    settings = {**image_processor.to_dict(), "size": {"shortest_edge": low, "longest_edge": high}}
    return build_processor(processor.tokenizer, type(image_processor).from_dict(settings))


def chat_template_text(processor, messages: list[dict]) -> str:
    """The prompt string the local model reads for ``messages``: the processor's chat template with every image
    part as an image placeholder."""
    rendered = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image"} if part["type"] == "image_url" else part for part in content]
        rendered.append({"role": message["role"], "content": content})
    return processor.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)


class LocalChat:
    """The pipeline's own Qwen2.5-VL as the reasoning model, called as the official client calls it.

    Each call samples at most ``max_new_tokens`` tokens (top-p 0.9, temperature 0.7; ``greedy`` decodes greedily
    instead) with the global RNG set from ``seed`` and the call's number (restored afterwards), so the same
    ``seed`` repeats a run.
    """

    def __init__(self, text_encoder, processor, max_new_tokens: int = REPLY_TOKENS, greedy: bool = False,
                 seed: int = 0):
        self.text_encoder = text_encoder
        self.processor = judge_processor(processor)
        self.max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 1, MAX_REPLY_TOKENS)
        self.greedy = greedy
        self.seed = validate.integer("seed", seed, 0, validate.MAX_SEED)
        self.calls = 0

    @torch.no_grad()
    def __call__(self, stage: str, messages: list[dict]) -> str:
        images = [_url_image(part["image_url"]["url"]) for message in messages
                  if isinstance(message["content"], list) for part in message["content"] if part["type"] == "image_url"]
        text = chat_template_text(self.processor, messages)
        inputs = self.processor(text=[text], images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(execution_device(self.text_encoder))
        sampling = {"do_sample": False} if self.greedy else {"do_sample": True, "top_p": TOP_P,
                                                             "temperature": TEMPERATURE}
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed + self.calls) % 2**63)
            self.calls += 1
            generated = self.text_encoder.generate(
                **inputs, max_new_tokens=self.max_new_tokens, eos_token_id=self.processor.tokenizer.eos_token_id,
                **sampling)
        reply = generated[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(reply, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()


class OpenAIChat:
    """Any OpenAI-compatible vision model (GPT-4.1, or vLLM / SGLang serving an open VLM) as the reasoning judge,
    through :mod:`step1x_edit.chat`.

    Each call asks for at most ``max_tokens`` tokens, sampled as the official loop samples (or greedily), with the
    seed ``seed`` plus the call's number; a rate limit, server error or dropped connection is retried ``retries``
    times with backoff, and an endpoint that refuses every request (bad key, unknown model) stops the loop with
    :class:`ReasoningError`.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_tokens: int = REPLY_TOKENS, greedy: bool = False, seed: int = 0, timeout: float = 120.0,
                 retries: int = 3, client=None):
        from .chat import make_client

        self.model = validate.text("judge model", model, 1000, allow_empty=False)
        self.max_tokens = validate.integer("max_tokens", max_tokens, 1, MAX_REPLY_TOKENS)
        self.greedy = greedy
        self.seed = validate.integer("seed", seed, 0, validate.MAX_SEED)
        self.retries = validate.integer("retries", retries, 0, 100)
        self.client = client or make_client(base_url, api_key=api_key, timeout=timeout)
        self.calls = 0

    def __call__(self, stage: str, messages: list[dict]) -> str:
        import openai

        from .chat import backoff_delay, classify

        sampling = {"temperature": 0.0} if self.greedy else {"temperature": TEMPERATURE, "top_p": TOP_P}
        seed = (self.seed + self.calls) % 2**63
        self.calls += 1
        for attempt in range(self.retries + 1):
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages,
                                                               max_tokens=self.max_tokens, seed=seed, **sampling)
                return (response.choices[0].message.content or "").strip()
            except openai.APIError as error:
                failure = classify(error)
                if not failure.retryable or attempt == self.retries:
                    raise ReasoningError(f"the reasoning judge {self.model!r} failed at {stage}: "
                                         f"{type(error).__name__}: {error}") from error
                time.sleep(backoff_delay(attempt, 1.0, 30.0, failure.retry_after, jitter=True))
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class ModelCall:
    """One call of the reasoning model: its stage, the messages (each image as :func:`describe_image_url`'s
    stand-in) and the reply."""

    stage: str
    messages: list[dict]
    reply: str


def _ask(model: ChatModel, stage: str, messages: list[dict], calls: list[ModelCall]) -> str:
    reply = model(stage, messages)
    shown = [{**message, "content": [
        {**part, "image_url": {"url": describe_image_url(part["image_url"]["url"])}} if part["type"] == "image_url"
        else part for part in message["content"]]} if isinstance(message["content"], list) else message
        for message in messages]
    calls.append(ModelCall(stage, shown, reply))
    return reply


def _retry(attempt: Callable[[], Any]) -> Any:
    """``attempt()`` until it returns without :class:`InvalidReply`, at most :data:`MAX_STAGE_TRIES` times; None
    when every try was invalid."""
    for _ in range(MAX_STAGE_TRIES):
        try:
            return attempt()
        except InvalidReply:
            continue
    return None


def think(model: ChatModel, image: Image.Image, instruction: str, calls: list[ModelCall]) -> str:
    """Thinking: the instruction rewritten by ``model`` for ``image`` (one call, not retried; a reply that reports
    an error stops the loop with :class:`ReasoningError`)."""
    reply = _ask(model, STAGE_REWRITE, rewrite_messages(image_data_url(image), instruction), calls)
    if reply.startswith(ERROR_PREFIX):
        raise ReasoningError(f"the instruction rewriter answered with an error: {reply[:200]}")
    return reply.strip()


@dataclass
class Judgement:
    """What reflection says about one edit: the target description, the capped consistency judgement
    (:func:`finalize_consistency`), the reflection (``<#Think> ... <tag>``), and the two score objects
    (``{"score": [a, b], "reasoning": ...}``). ``description`` and ``consistency`` are None when their stage failed
    every try (the reflection is then :data:`FAILED_REFLECTION`)."""

    description: str | None
    consistency: dict[str, Any] | None
    reflection: str
    edit_scores: dict[str, Any]
    quality_scores: dict[str, Any]


def reflect(model: ChatModel, source: Image.Image, edited: Image.Image, instruction: str,
            calls: list[ModelCall]) -> Judgement:
    """Reflection on one edit: the five stages (module docstring), each retried up to :data:`MAX_STAGE_TRIES`
    times."""
    source_url, edited_url = image_data_url(source), image_data_url(edited)

    def describe() -> str:
        reply = _ask(model, STAGE_DESCRIBE, describe_messages(source_url, instruction), calls)
        if reply.startswith(ERROR_PREFIX):
            raise InvalidReply(reply)
        return reply.strip()

    def consistency(description: str) -> dict[str, Any]:
        reply = _ask(model, STAGE_CONSISTENCY, consistency_messages(edited_url, description, instruction), calls)
        if reply.startswith(ERROR_PREFIX):
            raise InvalidReply(reply)
        parsed = parse_json_block(reply)
        if parsed is None:
            raise InvalidReply(reply)
        result = finalize_consistency(parsed)
        if result is None:
            raise InvalidReply(reply)
        return result

    def reflection(evaluation: dict[str, Any]) -> str:
        prior_score = evaluation.get("score", evaluation.get("raw_score", "N/A"))
        messages = reflection_messages(source_url, edited_url, instruction, prior_score, evaluation.get("reason", "无"))
        valid, text = check_reflection(_ask(model, STAGE_REFLECT, messages, calls))
        if not valid:
            raise InvalidReply(text)
        return text

    def scores(stage: str, messages: list[dict]) -> dict[str, Any]:
        valid, parsed = check_scores(_ask(model, stage, messages, calls))
        if not valid:
            raise InvalidReply(parsed)
        return parsed

    description = _retry(describe)
    evaluation = _retry(lambda: consistency(description)) if description is not None else None
    decision = _retry(lambda: reflection(evaluation)) if evaluation is not None else None
    if decision is None:
        decision = FAILED_REFLECTION
    results = {}
    for name, stage, messages in (
            ("score1", STAGE_SCORE_EDIT, edit_score_messages(source_url, edited_url, instruction)),
            ("score2", STAGE_SCORE_QUALITY, quality_score_messages(edited_url))):
        results[name] = _retry(lambda stage=stage, messages=messages: scores(stage, messages)) or {
            "score": [0, 0], "reasoning": f"{name} evaluation failed after {MAX_STAGE_TRIES} attempts."}
    return Judgement(description, evaluation, decision, results["score1"], results["score2"])


# ---------------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class ReasoningOptions:
    """How an edit reasons (the defaults are the official v1.2 call's).

    ``think``: rewrite the instruction first. ``reflect``: judge each edit and retry, at most ``max_tries`` rounds
    (1 to :data:`MAX_TRIES`). ``seed``: the reasoning model's sampling seed (None: the edit's generator seed, or a
    random one; recorded in the trace). ``max_new_tokens``: each reply's cap (128 in the official code, which cuts
    long reflections short; they are then asked again). ``greedy``: decode greedily instead of sampling.
    ``judge``: the reflection model (None: the pipeline's own Qwen2.5-VL), e.g. :class:`OpenAIChat`.
    """

    think: bool = False
    reflect: bool = True
    max_tries: int = DEFAULT_MAX_TRIES
    seed: int | None = None
    max_new_tokens: int = REPLY_TOKENS
    greedy: bool = False
    judge: ChatModel | None = field(default=None, compare=False)

    def __post_init__(self):
        validate.integer("max_tries", self.max_tries, 1, MAX_TRIES)
        validate.integer("max_new_tokens", self.max_new_tokens, 1, MAX_REPLY_TOKENS)
        if self.seed is not None:
            validate.integer("seed", self.seed, 0, validate.MAX_SEED)

    @property
    def active(self) -> bool:
        """Whether the edit thinks or reflects at all."""
        return self.think or self.reflect


PLAIN = ReasoningOptions(think=False, reflect=False)  # an edit without thinking or reflection


def supports_reasoning(version: str) -> bool:
    """Whether models of ``version`` can think and reflect (the v1.2 lines, whose Qwen2.5-VL was trained for it)."""
    return get_version(version).recipe == RECIPE_V1P2


def _refuse(version: str, what: str) -> InvalidValueError:
    return InvalidValueError(f"thinking and reflection need a v1.2 model (its Qwen2.5-VL was trained for them); "
                             f"this model is {version} (asked for: {what})")


def resolve_options(version: str, options: ReasoningOptions | None) -> ReasoningOptions:
    """``options``, or the defaults of ``version`` when None (v1.2: the official call's, reflection over at most 3
    rounds without thinking; other versions: :data:`PLAIN`); thinking or reflection with another version raises
    :class:`InvalidValueError`."""
    if options is None:
        return ReasoningOptions() if supports_reasoning(version) else PLAIN
    if options.active and not supports_reasoning(version):
        raise _refuse(version, "thinking" if options.think else "reflection")
    return options


def options_for(version: str, think: bool | None = None, reflect: bool | None = None, max_tries: int | None = None,
                max_new_tokens: int | None = None, greedy: bool = False, judge: ChatModel | None = None,
                seed: int | None = None) -> ReasoningOptions:
    """The reasoning of an edit with a ``version`` model from a surface's choices (``None``: not chosen) over the
    version's defaults. Choosing thinking, reflection, rounds, a reply cap, greedy decoding or a judge for a model of
    another version raises :class:`InvalidValueError` naming them."""
    if not supports_reasoning(version):
        chosen = [name for name, value in (("thinking", think), ("reflection", reflect), ("max_tries", max_tries),
                                           ("max_new_tokens", max_new_tokens), ("greedy", greedy), ("judge", judge))
                  if value]
        if chosen:
            raise _refuse(version, " and ".join(chosen))
        return PLAIN
    return ReasoningOptions(think=bool(think), reflect=True if reflect is None else reflect,
                            max_tries=DEFAULT_MAX_TRIES if max_tries is None else max_tries, seed=seed,
                            max_new_tokens=REPLY_TOKENS if max_new_tokens is None else max_new_tokens, greedy=greedy,
                            judge=judge)


@dataclass
class ReasoningRound:
    """One edit of the loop: what it edited (``source``: "original" or "previous", the last round's result) with
    which ``instruction``, the edited ``image`` and, with reflection, its :class:`Judgement` and ``score``
    (:func:`score_product`)."""

    index: int
    source: str
    instruction: str
    image: Image.Image
    judgement: Judgement | None = None
    score: float | None = None

    @property
    def decision(self) -> str | None:
        """"success", "others", "refine", "failed", or "invalid" (a reflection :func:`is_decision` refuses); None
        without reflection."""
        if self.judgement is None:
            return None
        text = self.judgement.reflection
        if not is_decision(text):
            return "invalid"
        return {SUCCESS_TAG: "success", OTHERS_TAG: "others", REFLECTION_TAG: "refine", FAILED_TAG: "failed"}[
            next(tag for tag in DECISION_TAGS if tag in text)]

    def to_dict(self) -> dict[str, Any]:
        record = {"index": self.index, "source": self.source, "instruction": self.instruction,
                  "size": list(self.image.size), "decision": self.decision, "score": self.score}
        if self.judgement is not None:
            success, refined = parse_decision(self.judgement.reflection)
            record.update(reflection=self.judgement.reflection, success=success, refined_instruction=refined,
                          description=self.judgement.description, consistency=self.judgement.consistency,
                          edit_scores=self.judgement.edit_scores, quality_scores=self.judgement.quality_scores)
        return record


@dataclass
class ReasoningTrace:
    """Everything one reasoning edit did: the ``instruction`` as given, its rewrite (``rewritten``, with
    thinking), every round, which one was ``chosen``, the options and seed, and every model call."""

    instruction: str
    rewritten: str | None
    rounds: list[ReasoningRound]
    chosen: int
    think: bool
    reflect: bool
    max_tries: int
    seed: int
    calls: list[ModelCall]

    @property
    def image(self) -> Image.Image:
        """The chosen round's image: the result of the edit."""
        return self.rounds[self.chosen].image

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no images: each round gives its size), the calls as (stage, reply)."""
        return {"instruction": self.instruction, "rewritten": self.rewritten, "think": self.think,
                "reflect": self.reflect, "max_tries": self.max_tries, "seed": self.seed, "chosen": self.chosen,
                "rounds": [item.to_dict() for item in self.rounds],
                "calls": [{"stage": call.stage, "reply": call.reply} for call in self.calls]}

    def summary(self) -> str:
        """A few human-readable lines: the rewrite, each round's decision and score, the choice."""
        lines = [f"thinking: {self.rewritten!r}"] if self.rewritten is not None else []
        for item in self.rounds:
            line = f"round {item.index + 1} ({item.source} image, {item.instruction.strip()!r})"
            if item.judgement is not None:
                line += f": {item.decision}, score {item.score}; {item.judgement.reflection}"
            lines.append(line)
        lines.append(f"chosen: round {self.chosen + 1} of {len(self.rounds)} ({len(self.calls)} model calls)")
        return "\n".join(lines)


def choose_round(rounds: list[ReasoningRound]) -> int:
    """The index of the round to return: the largest score, ties to a round whose reflection says ``<#Success>``
    over one that does not, else to the later round; rounds without a score never win (0 when none has one)."""
    best, best_score, best_success = 0, -1, False
    for index, item in enumerate(rounds):
        if item.score is None:
            continue
        success = item.judgement is not None and SUCCESS_TAG in item.judgement.reflection
        if item.score > best_score:
            best, best_score, best_success = index, item.score, success
        elif item.score == best_score and (success or not best_success):
            best, best_success = index, success or best_success
    return best


def run(edit: Callable[[Image.Image, str], Image.Image], image: Image.Image, instruction: str,
        options: ReasoningOptions, model: ChatModel, seed: int) -> ReasoningTrace:
    """Edit ``image`` following ``instruction`` with thinking and/or reflection as ``options`` say.

    ``edit(source, instruction) -> image`` makes one edit (the pipeline's, sharing one generator across rounds as
    the official pipeline does); ``model`` thinks and, unless ``options.judge`` is given, reflects; ``seed`` is
    recorded in the trace.
    """
    judge = options.judge or model
    calls: list[ModelCall] = []
    rewritten = think(model, image, instruction, calls) if options.think else None
    prompt = instruction if rewritten is None else rewritten
    source, source_kind, edit_prompt = image, "original", prompt
    rounds: list[ReasoningRound] = []
    for index in range(options.max_tries):
        edited = edit(source, edit_prompt)
        item = ReasoningRound(index, source_kind, edit_prompt, edited)
        rounds.append(item)
        if not options.reflect:
            break
        item.judgement = reflect(judge, image, edited, prompt, calls)
        item.score = score_product({"score1": item.judgement.edit_scores, "score2": item.judgement.quality_scores})
        success, refined = parse_decision(item.judgement.reflection)
        if success:
            break
        if refined is not None:
            source, source_kind, edit_prompt = edited, "previous", refined
        else:
            source, source_kind, edit_prompt = image, "original", prompt
    chosen = choose_round(rounds) if options.reflect else 0
    return ReasoningTrace(instruction, rewritten, rounds, chosen, options.think, options.reflect, options.max_tries,
                          seed, calls)


def reasoning_seed(options: ReasoningOptions, generator: torch.Generator | None) -> int:
    """The seed of the reasoning model's sampling: ``options.seed``, else the edit generator's seed, else random."""
    if options.seed is not None:
        return options.seed
    if generator is not None:
        return generator.initial_seed() % (validate.MAX_SEED + 1)
    return random.randint(0, 2**53 - 1)
