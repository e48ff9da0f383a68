"""VIEScore as GEdit-Bench uses it: the two judge prompts, image preparation, reply parsing, per-sample scores.

Everything here is a pure function, shared by every judge. The prompts are the hash-checked protocol files
(``gedit_sc_prompt.txt``, ``gedit_pq_prompt.txt``); the only change made to them is substituting the raw
instruction for ``<instruction>`` in the semantic-consistency prompt, as the official scorer does.

Reply parsing follows the official parser for well-formed and repairable replies:

1. text between exactly two ``||V^=^V||`` delimiters, else the span from the first ``{`` to the last ``}``,
   parsed as JSON with newlines removed, after a repair pass that quotes bare keys and drops trailing commas;
   a scalar ``score`` is wrapped in a list;
2. without braces, a bare ``[a, b]`` list or a bare integer 0-10.

Unlike the official scorer, a reply that still cannot be read (or is a refusal, or holds a score outside
0-10) is never replaced by a random number: :func:`parse_scores` returns ``None`` and the caller records a
failure.
"""

from __future__ import annotations

import json
import math
import re
from typing import Literal

from PIL import Image

from ..protocol import protocol_sha256, protocol_text

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
_SCORE_RANGE = (0, 10)


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


def _load_json(text: str) -> object | None:
    text = text.replace("\n", " ")
    for candidate in (text, _repair_json(text)):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def _valid(scores: object) -> list[float] | None:
    if isinstance(scores, bool) or isinstance(scores, (int, float)):
        scores = [scores]
    if not isinstance(scores, list) or not scores:
        return None
    values = []
    for score in scores:
        if isinstance(score, str):
            try:
                score = float(score)
            except ValueError:
                return None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            return None
        if not _SCORE_RANGE[0] <= score <= _SCORE_RANGE[1]:
            return None
        values.append(int(score) if float(score).is_integer() else float(score))
    return values


def parse_scores(reply: str | None) -> list[float] | None:
    """The list of scores in a judge ``reply``, or ``None`` if it cannot be read (never a guess)."""
    if not reply:
        return None
    if reply.count(_DELIMITER) == 2:
        reply = reply.split(_DELIMITER)[1]
    start, end = reply.find("{"), reply.rfind("}")
    if start != -1 and end > start:
        data = _load_json(reply[start : end + 1])
        if not isinstance(data, dict) or "score" not in data:
            return None
        return _valid(data["score"])
    bare_list = re.fullmatch(r"\s*\[\s*([^\[\]]*)\]\s*", reply)
    if bare_list:
        return _valid(_load_json(bare_list.group(0)))
    bare_int = re.fullmatch(r"\s*(\d{1,2})\s*", reply)
    if bare_int:
        return _valid(int(bare_int.group(1)))
    return None


def sample_scores(sc_scores: list[float], pq_scores: list[float]) -> tuple[float, float, float]:
    """Per-sample (SC, PQ, O): SC and PQ are the minimum of their sub-scores, O = sqrt(SC * PQ)."""
    sc, pq = min(sc_scores), min(pq_scores)
    return sc, pq, math.sqrt(sc * pq)
