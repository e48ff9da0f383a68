"""VIEScore as GEdit-Bench uses it: the two judge prompts, image preparation, reply parsing, per-sample scores.

Everything here is a pure function, shared by every judge. The prompts are the hash-checked protocol files
(``gedit_sc_prompt.txt``, ``gedit_pq_prompt.txt``); the only change made to them is substituting the raw
instruction for ``<instruction>`` in the semantic-consistency prompt, as the official scorer does.

Reply parsing follows the official parser for well-formed and repairable replies:

1. text between exactly two ``||V^=^V||`` delimiters, else the span from the first ``{`` to the last ``}``,
   parsed as JSON with newlines removed, after a repair pass that quotes bare keys and drops trailing commas;
   a scalar ``score`` is wrapped in a list;
2. without braces, a bare ``[a, b]`` list or a bare integer 0-10.

Unlike the official scorer, a reply that still cannot be read (or is a refusal) is never replaced by a random
number, and a score must be what the prompts ask for: a number from 0 to 10 (not a string, a bool, NaN or
1e308), one or two of them. :func:`parse_scores` raises :class:`~.judges.base.UnusableReply` saying why, and the
caller retries, then records a failure. :func:`checked_scores` is the same check for scores read from a file.
"""

from __future__ import annotations

import json
import math
import re
from typing import Literal

from PIL import Image

from ..errors import InvalidValueError
from ..protocol import protocol_sha256, protocol_text
from ..validate import number
from .judges.base import UnusableReply

SC_PROMPT_FILE = "gedit_sc_prompt.txt"
PQ_PROMPT_FILE = "gedit_pq_prompt.txt"

# Image preparation before judging. "upstream" is the maintained official scorer (run_gedit_score.py):
# source = input_image_raw, source and edit each resized to about 512x512 area keeping their aspect ratio.
# "snapshot" is the v1.0 scorer (test_gedit_score.py): source = input_image, edit resized to the source size.
ImagePrep = Literal["upstream", "snapshot"]
IMAGE_PREPS: tuple[str, ...] = ("upstream", "snapshot")
DEFAULT_IMAGE_PREP: ImagePrep = "upstream"
JUDGE_AREA = 512 * 512

_DELIMITER = "||V^=^V||"
SCORE_RANGE = (0, 10)
MAX_SUB_SCORES = 2  # each prompt asks for [score1, score2]; a scalar is wrapped in a list, as officially


def sc_prompt(instruction: str) -> str:
    """The semantic-consistency prompt (two images: source, edit) with ``instruction`` substituted."""
    return protocol_text(SC_PROMPT_FILE).replace("<instruction>", instruction)


def pq_prompt() -> str:
    """The perceptual-quality prompt (one image: the edit)."""
    return protocol_text(PQ_PROMPT_FILE)


def prompt_hashes() -> dict[str, str]:
    """SHA-256 of both prompt templates, recorded with every judgement."""
    return {"sc": protocol_sha256(SC_PROMPT_FILE), "pq": protocol_sha256(PQ_PROMPT_FILE)}


def resize_to_area(image: Image.Image, area: int = JUDGE_AREA) -> Image.Image:
    """Resize to about ``area`` pixels keeping the aspect ratio: w = int(sqrt(area * r)), h = int(w / r)."""
    ratio = image.width / image.height
    width = int(math.sqrt(area * ratio))
    height = int(width / ratio)
    return image.resize((width, height))


def source_column(prep: ImagePrep) -> str:
    """The dataset image each scorer version compares against: ``input_image_raw`` (upstream) or ``input_image``."""
    if prep not in IMAGE_PREPS:
        raise ValueError(f"unknown image preparation {prep!r}; choose one of {IMAGE_PREPS}")
    return "input_image_raw" if prep == "upstream" else "input_image"


def prepare_images(edited: Image.Image, source: Image.Image, prep: ImagePrep) -> tuple[Image.Image, Image.Image]:
    """Return the (source, edited) pair shown to the judge, following one of the two official scorers; ``source``
    is the dataset image named by :func:`source_column`."""
    edited, source = edited.convert("RGB"), source.convert("RGB")
    if prep == "snapshot":
        return source, edited.resize(source.size)
    if prep == "upstream":
        return resize_to_area(source), resize_to_area(edited)
    raise ValueError(f"unknown image preparation {prep!r}; choose one of {IMAGE_PREPS}")


def _repair_json(text: str) -> str:
    text = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', text)  # quote bare keys
    text = text.replace("'", '"')
    return re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas


def _load_json(text: str) -> object:
    text = text.replace("\n", " ")
    for candidate in (text, _repair_json(text)):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):  # over-long integers and deep nesting are refused too
            continue
    raise UnusableReply(f"the reply's JSON cannot be read: {brief(text)}")


def brief(value: object, limit: int = 60) -> str:
    """A short printable form of ``value`` (a score or field read from a reply or a file) for error messages."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_scores(name: str, scores: object) -> list[int | float]:
    """``scores`` as a list of one or two VIEScore scores, each a finite number from 0 to 10 (an integral float
    becomes an int); raises :class:`~step1x_edit.errors.InvalidValueError` naming ``name`` otherwise (a string,
    a bool, NaN, 11, an empty or longer list)."""
    if not isinstance(scores, list) or not 1 <= len(scores) <= MAX_SUB_SCORES:
        raise InvalidValueError(f"{name} must be a list of 1 to {MAX_SUB_SCORES} scores, got {brief(scores)}")
    values = []
    for index, score in enumerate(scores):
        try:
            value = number(f"{name}[{index}]", score, *SCORE_RANGE)
        except InvalidValueError:
            raise InvalidValueError(
                f"{name}[{index}] must be a number from {SCORE_RANGE[0]} to {SCORE_RANGE[1]}, got {brief(score)}"
            ) from None
        values.append(int(value) if value.is_integer() else value)
    return values


def _reply_scores(scores: object) -> list[int | float]:
    if not isinstance(scores, list):  # a scalar score, wrapped as the official parser does
        scores = [scores]
    try:
        return checked_scores("score", scores)
    except InvalidValueError as error:
        raise UnusableReply(str(error)) from None


def parse_scores(reply: str | None) -> list[int | float]:
    """The list of scores in a judge ``reply``; raises :class:`~.judges.base.UnusableReply` saying why when it
    holds none that is valid (never a guess)."""
    if not isinstance(reply, str) or not reply.strip():
        raise UnusableReply("empty reply")
    if reply.count(_DELIMITER) == 2:
        reply = reply.split(_DELIMITER)[1]
    start, end = reply.find("{"), reply.rfind("}")
    if start != -1 and end > start:
        data = _load_json(reply[start : end + 1])
        if not isinstance(data, dict) or "score" not in data:
            raise UnusableReply('the reply\'s JSON has no "score"')
        return _reply_scores(data["score"])
    bare_list = re.fullmatch(r"\s*\[\s*([^\[\]]*)\]\s*", reply)
    if bare_list:
        return _reply_scores(_load_json(bare_list.group(0)))
    bare_int = re.fullmatch(r"\s*(\d{1,2})\s*", reply)
    if bare_int:
        return _reply_scores(int(bare_int.group(1)))
    raise UnusableReply("no score in the reply")


def sample_scores(sc_scores: list[float], pq_scores: list[float]) -> tuple[float, float, float]:
    """Per-sample (SC, PQ, O): SC and PQ are the minimum of their sub-scores, O = sqrt(SC * PQ)."""
    sc, pq = min(sc_scores), min(pq_scores)
    return sc, pq, math.sqrt(sc * pq)
