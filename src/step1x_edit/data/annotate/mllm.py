"""MLLM annotation and verification of triplets, as pipeline stages.

:class:`MLLMAnnotator` runs a multi-round conversation per triplet, each round seeing the previous replies:
(1) describe the source and the target, (2) list the differences, (3) write the instruction in English and
Chinese in the style of per-task in-context exemplars. :class:`MLLMVerifier` scores each triplet 0–10 with a
reason; the score and reason are stored, low scores become reject reasons, and a call that fails for good is
recorded on the sample (never dropped, never scored 0).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...validate import integer, number
from ..limits import MAX_CONCURRENCY, MAX_WORKERS
from ..records import decode_png, stable_hash, stable_int
from ..stages import Record, Resources, Stage
from .client import AnnotationError, ChatClient, ChatEndpoint, image_part

PROMPT_VERSION = "1"

SYSTEM_PROMPT = (
    "You annotate image-editing data. Image 1 is the original image, image 2 is the edited image. "
    "Be precise and literal; describe only what is visible."
)
ROUND_DESCRIBE = (
    "Describe image 1 and then image 2 in detail: objects, their colors, materials, positions, any text, people, "
    "the background, and the overall style and lighting."
)
ROUND_DIFFERENCES = (
    "Using your descriptions, list every difference between image 1 and image 2: what changed, where, and how. "
    "Then say what stayed the same."
)
ROUND_INSTRUCTION = (
    "Write the single editing instruction that turns image 1 into image 2, as a user would type it: one short "
    "imperative sentence that names the object and the change. Match the style of these examples for the task "
    "'{task}':\n{examples}\nReply with JSON only: "
    '{{"instruction_en": "<English instruction>", "instruction_zh": "<the same instruction in Chinese>"}}'
)
VERIFY_PROMPT = (
    "Instruction: {instruction}\nImage 1 is the original and image 2 the result of applying the instruction. "
    "Score from 0 to 10 how well image 2 follows the instruction while keeping everything else in image 1 "
    'unchanged. Reply with JSON only: {{"score": <number 0-10>, "reason": "<one sentence>"}}'
)


def default_exemplars() -> dict[str, list[str]]:
    """Per-task English and Chinese instruction examples, drawn from the synthetic world's templates."""
    from ..synthetic.generators import PORTRAIT_PHRASES, POSE_PHRASES, TASKS
    from ..synthetic.language import TEMPLATES
    from ..tasks.style import STYLES
    from ..tasks.tone import TONE_OPS

    values = {
        "obj": "red circle",
        "new": "a blue star",
        "where": "in the top left corner",
        "bg": "a sandy beach",
        "color": "green",
        "material": "wooden",
        "old": "OPEN",
    }
    values_zh = {
        "obj": "红色圆形",
        "new": "一个蓝色五角星",
        "where": "左上角",
        "bg": "沙滩",
        "color": "绿色",
        "material": "木头",
        "old": "OPEN",
    }
    examples: dict[str, list[str]] = {}
    for task in TASKS:
        if task in TEMPLATES:
            en, zh = TEMPLATES[task]
            fill_en = dict(values, new="CLOSED") if task == "text_modification" else values
            fill_zh = dict(values_zh, new="CLOSED") if task == "text_modification" else values_zh
            examples[task] = [t.format(**fill_en) for t in en[:3]] + [t.format(**fill_zh) for t in zh[:2]]
    examples["motion_change"] = (
        POSE_PHRASES["arms_up"][0][:2] + ["Move the red circle to the left."] + POSE_PHRASES["arms_up"][1][:1]
    )
    examples["portrait_editing"] = (
        PORTRAIT_PHRASES["smile"][0][:2]
        + PORTRAIT_PHRASES["add_glasses"][0][:1]
        + PORTRAIT_PHRASES["smile"][1][:1]
    )
    examples["style_transfer"] = [p for _, en, zh in STYLES.values() for p in (en[0], zh[0])]
    examples["tone_transformation"] = [p for _, en, zh in list(TONE_OPS.values())[:4] for p in (en[0], zh[0])]
    return examples


def _instruction_reply(text: str) -> dict[str, str]:
    from .client import parse_json_reply

    value = parse_json_reply(text)
    en, zh = value.get("instruction_en"), value.get("instruction_zh")
    if not isinstance(en, str) or not en.strip() or not isinstance(zh, str) or not zh.strip():
        raise ValueError("reply lacks non-empty 'instruction_en' and 'instruction_zh'")
    return {"instruction_en": en.strip(), "instruction_zh": zh.strip()}


def _verify_reply(text: str) -> dict[str, Any]:
    from .client import parse_json_reply

    value = parse_json_reply(text)
    score = value.get("score")
    if isinstance(score, str):
        score = float(score)
    if not isinstance(score, (int, float)) or not 0 <= score <= 10:
        raise ValueError(f"score must be a number in [0, 10], got {value.get('score')!r}")
    return {"score": float(score), "reason": str(value.get("reason", "")).strip()}


def _meta(record: Record) -> dict[str, Any]:
    return json.loads(record.get("meta") or "{}")


class MLLMAnnotator:
    """Batch function: rewrites ``instruction_en`` / ``instruction_zh`` from a multi-round conversation.
    The previous instructions and the intermediate rounds are kept in ``meta["annotation"]``."""

    def __init__(
        self, client: ChatClient, exemplars: Mapping[str, Sequence[str]] | None = None, concurrency: int = 4
    ):
        self.client = client
        self.exemplars = dict(exemplars) if exemplars is not None else default_exemplars()
        self.concurrency = concurrency

    def annotate(self, record: Record) -> Record:
        record = dict(record)
        meta = _meta(record)
        images = [
            image_part(decode_png(record["source_image"])),
            image_part(decode_png(record["target_image"])),
        ]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [*images, {"type": "text", "text": ROUND_DESCRIBE}]},
        ]
        rounds: list[str] = []
        seed = stable_int(record["sample_id"], "mllm_annotate") % 2**31
        try:
            for prompt in (ROUND_DIFFERENCES, None):
                reply = self.client.complete(messages, seed=seed)
                rounds.append(reply)
                messages.append({"role": "assistant", "content": reply})
                if prompt is not None:
                    messages.append({"role": "user", "content": prompt})
            examples = (
                "\n".join(f"- {example}" for example in self.exemplars.get(record["task"], [])) or "- (none)"
            )
            messages.append(
                {"role": "user", "content": ROUND_INSTRUCTION.format(task=record["task"], examples=examples)}
            )
            result = self.client.complete(messages, parse=_instruction_reply, seed=seed)
        except AnnotationError as error:
            meta["annotation"] = {
                "status": "failed",
                "error": str(error),
                "rounds": rounds,
                "model": self.client.endpoint.model,
            }
            record["meta"] = json.dumps(meta, sort_keys=True, ensure_ascii=False)
            record["score_reasons"] = {
                **(record.get("score_reasons") or {}),
                "annotation": f"failed: {error}",
            }
            return record
        meta["annotation"] = {
            "status": "ok",
            "model": self.client.endpoint.model,
            "rounds": rounds,
            "previous": {
                "instruction_en": record.get("instruction_en"),
                "instruction_zh": record.get("instruction_zh"),
            },
        }
        record.update(result)
        record["meta"] = json.dumps(meta, sort_keys=True, ensure_ascii=False)
        return record

    def __call__(self, batch: list[Record]) -> list[Record]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self.annotate, batch))


class MLLMVerifier:
    """Batch function: stores ``scores["mllm_verify"]`` and its reason; adds a reject reason below ``min_score``
    or when verification failed for good."""

    def __init__(
        self, client: ChatClient, min_score: float = 6.0, language: str = "en", concurrency: int = 4
    ):
        self.client = client
        self.min_score = min_score
        self.language = language
        self.concurrency = concurrency

    def verify(self, record: Record) -> Record:
        record = dict(record)
        scores = dict(record.get("scores") or {})
        reasons = dict(record.get("score_reasons") or {})
        rejects = list(record.get("reject_reasons") or [])
        instruction = record.get(f"instruction_{self.language}") or record.get("instruction_en") or ""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    image_part(decode_png(record["source_image"])),
                    image_part(decode_png(record["target_image"])),
                    {"type": "text", "text": VERIFY_PROMPT.format(instruction=instruction)},
                ],
            },
        ]
        try:
            result = self.client.complete(
                messages, parse=_verify_reply, seed=stable_int(record["sample_id"], "mllm_verify") % 2**31
            )
        except AnnotationError as error:
            reasons["mllm_verify"] = f"failed: {error}"
            rejects.append(f"mllm_verify_failed: {error}")
        else:
            scores["mllm_verify"] = result["score"]
            reasons["mllm_verify"] = result["reason"]
            if result["score"] < self.min_score:
                rejects.append(
                    f"mllm_score_low: {result['score']:g} < {self.min_score:g}: {result['reason']}"
                )
        record.update(scores=scores, score_reasons=reasons, reject_reasons=rejects)
        return record

    def __call__(self, batch: list[Record]) -> list[Record]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self.verify, batch))


def _build_annotator(endpoint: ChatEndpoint, exemplars, concurrency: int) -> MLLMAnnotator:
    return MLLMAnnotator(ChatClient(endpoint), exemplars, concurrency)


def _build_verifier(
    endpoint: ChatEndpoint, min_score: float, language: str, concurrency: int
) -> MLLMVerifier:
    return MLLMVerifier(ChatClient(endpoint), min_score, language, concurrency)


def annotate_stage(
    endpoint: ChatEndpoint,
    exemplars: Mapping[str, Sequence[str]] | None = None,
    concurrency: int = 4,
    actors: int = 1,
) -> Stage:
    """A model stage running :class:`MLLMAnnotator` (``concurrency`` requests in flight per worker)."""
    integer("concurrency", concurrency, 1, MAX_CONCURRENCY)
    integer("actors", actors, 1, MAX_WORKERS)
    exemplars = dict(exemplars) if exemplars is not None else None
    config = {
        **endpoint.fingerprint(),
        "prompt_version": PROMPT_VERSION,
        "exemplars": stable_hash(exemplars if exemplars is not None else default_exemplars()),
    }
    return Stage(
        "mllm_annotate",
        functools.partial(_build_annotator, endpoint, exemplars, concurrency),
        Resources(cpus=0.5, model=True, concurrency=actors),
        PROMPT_VERSION,
        config,
        batch_size=max(8, concurrency),
    )


def verify_stage(
    endpoint: ChatEndpoint,
    min_score: float = 6.0,
    language: str = "en",
    concurrency: int = 4,
    actors: int = 1,
) -> Stage:
    """A model stage running :class:`MLLMVerifier`."""
    number("min_score", min_score, 0, 10)
    integer("concurrency", concurrency, 1, MAX_CONCURRENCY)
    integer("actors", actors, 1, MAX_WORKERS)
    config = {
        **endpoint.fingerprint(),
        "prompt_version": PROMPT_VERSION,
        "min_score": min_score,
        "language": language,
    }
    return Stage(
        "mllm_verify",
        functools.partial(_build_verifier, endpoint, min_score, language, concurrency),
        Resources(cpus=0.5, model=True, concurrency=actors),
        PROMPT_VERSION,
        config,
        batch_size=max(8, concurrency),
    )
