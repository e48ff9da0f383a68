"""Pairwise judging (beyond the official protocol): which of two models edited the same sample better.

Pointwise VIEScore agrees poorly with human preference; side-by-side judging agrees much better. For every
sample and every pair of models the judge sees the source and both edits and names the better edit, once in
each order (A/B, then B/A) to cancel position bias. Each order is a game won, lost or tied (half a win); the
games give win rates per pair and a Bradley-Terry strength per model, reported on the Elo scale
(400 * log10 odds, mean 1000).

The prompt is this package's own (``PAIRWISE_PROMPT``); its hash is recorded with every judgement like the
official prompts'. A reply that names no winner is retried like any failed call; failed judgements (after
retries) are recorded with their raw replies and the reasons, and left out. A judgements file is checked line by
line as it is read (:func:`read_pairwise`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from ..errors import DataFormatError, InvalidValueError
from .dataset import GEditSample
from .judges.base import Judge, UnusableReply
from .judging import RetryPolicy, append_record, ask, run_concurrently, terminate_last_line
from .layout import find_edited_image
from .stats import read_records
from .viescore import brief, resize_to_area

PAIRWISE_PROMPT = """You are a professional digital artist. You will compare two AI-edited versions of the same image.
All the input images are AI-generated. All human in the images are AI-generated too. so you need not worry about the privacy confidentials.

Three images will be provided: the first is the original image, the second is edit A and the third is edit B.
Both edits were made by following the same editing instruction.
Decide which edit is better overall: it follows the instruction more faithfully, changes nothing that was not asked for, and looks more natural and free of artifacts.
Answer "tie" only if neither edit is better.

You will have to give your output in this way (Keep your reasoning concise and short.):
{
"winner" : "A" or "B" or "tie",
"reasoning" : "..."
}

Editing instruction: <instruction>
"""
PAIRWISE_PROMPT_SHA256 = hashlib.sha256(PAIRWISE_PROMPT.encode("utf-8")).hexdigest()
_WINNER = re.compile(r'"?winner"?\s*[:=]\s*"?\s*(A|B|tie)\b', re.IGNORECASE)
WINNERS: tuple[str, ...] = ("A", "B", "tie")
STATUSES: tuple[str, ...] = ("ok", "failed")


def parse_winner(reply: str | None) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from a pairwise reply; raises :class:`~.judges.base.UnusableReply` when it
    names no winner."""
    if not isinstance(reply, str) or not reply.strip():
        raise UnusableReply("empty reply")
    start, end = reply.find("{"), reply.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(reply[start : end + 1].replace("\n", " "))
        except (ValueError, RecursionError):  # over-long integers and deep nesting too
            data = None
        winner = data.get("winner") if isinstance(data, dict) else None
        if isinstance(winner, str) and winner.strip().lower() in ("a", "b", "tie"):
            return winner.strip().upper() if winner.strip().lower() != "tie" else "tie"
    match = _WINNER.search(reply)
    if match:
        return match.group(1).upper() if match.group(1).lower() != "tie" else "tie"
    raise UnusableReply("no winner (A, B or tie) in the reply")


def judge_pair(
    judge: Judge, sample: GEditSample, edits: dict[str, Path], first: str, second: str, policy: RetryPolicy
) -> dict:
    """Judge ``first`` against ``second`` on ``sample`` in both orders; the record scores ``first``."""
    source = resize_to_area(sample.source_image("input_image_raw"))
    images = {}
    for name in (first, second):
        try:
            with Image.open(edits[name]) as edited:
                images[name] = resize_to_area(edited.convert("RGB"))
        except OSError as error:  # includes PIL's UnidentifiedImageError and truncated files
            raise DataFormatError(f"edited image {edits[name]} cannot be read ({error}); regenerate or remove it") from error
    prompt = PAIRWISE_PROMPT.replace("<instruction>", sample.instruction)
    games = []
    for a, b in ((first, second), (second, first)):
        winner, attempts = ask(judge, prompt, [source, images[a], images[b]], policy, parse=parse_winner)
        games.append({"a": a, "b": b, "winner": winner, "attempts": attempts})
    record = {
        "key": sample.key,
        "task_type": sample.task_type,
        "instruction_language": sample.language,
        "models": [first, second],
        "games": games,
        "status": "ok" if all(g["winner"] is not None for g in games) else "failed",
        "judge": dict(judge.info),
        "prompt_sha256": PAIRWISE_PROMPT_SHA256,
        "judged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record


def judge_pairwise(
    samples: list[GEditSample],
    results_dirs: dict[str, str | os.PathLike],
    judge: Judge,
    out_path: str | os.PathLike,
    policy: RetryPolicy | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Judge every pair of models in ``results_dirs`` (name -> ``RESULTS/<name>``) on every sample both edited,
    appending records to ``out_path`` and skipping (sample, pair) already there (failed ones too, unless
    ``retry_failed``). Returns counts by status."""
    if len(results_dirs) < 2:
        raise DataFormatError("pairwise judging needs the results of at least two models")
    policy = policy or RetryPolicy()
    out_path = Path(out_path)
    done = {
        (r["key"], r["instruction_language"], tuple(r["models"]))
        for r in read_pairwise(out_path)
        if r["status"] == "ok" or not retry_failed
    }
    jobs = []
    for sample in samples:
        edits = {name: find_edited_image(path, sample) for name, path in results_dirs.items()}
        for first, second in itertools.combinations(sorted(results_dirs), 2):
            if edits[first] and edits[second] and (sample.key, sample.language, (first, second)) not in done:
                jobs.append((sample, edits, first, second))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    terminate_last_line(out_path)
    lock = threading.Lock()
    statuses: Counter[str] = Counter()

    def run(job) -> None:
        record = judge_pair(judge, *job, policy)
        with lock:
            append_record(out_path, record)
            statuses[record["status"]] += 1

    run_concurrently(run, jobs, judge.max_concurrency, "pairwise", progress)
    return dict(statuses)


def read_pairwise(path: str | os.PathLike) -> list[dict]:
    """Pairwise records of ``path`` (empty if it does not exist); the last record of a (sample, pair) wins. A line
    that is not a well-formed record raises :class:`DataFormatError` naming the line and the field; a final line
    cut short by an interrupted run is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    latest = {}
    for record in read_records(path, _check_pairwise, "pairwise file"):
        latest[(record["key"], record["instruction_language"], tuple(record["models"]))] = record
    return list(latest.values())


def _check_pairwise(record: object) -> None:
    """Raise :class:`InvalidValueError` naming the field unless ``record`` is a well-formed pairwise record."""
    if not isinstance(record, dict):
        raise InvalidValueError(f"the line holds a JSON {type(record).__name__}, not an object")
    for field in ("key", "instruction_language"):
        if not isinstance(record.get(field), str):
            raise InvalidValueError(f"{field} must be a string, got {brief(record.get(field))}")
    models = record.get("models")
    if not isinstance(models, list) or len(models) != 2 or not all(isinstance(m, str) for m in models):
        raise InvalidValueError(f"models must be a list of two names, got {brief(models)}")
    if record.get("status") not in STATUSES:
        raise InvalidValueError(f"status must be one of {', '.join(STATUSES)}, got {brief(record.get('status'))}")
    games = record.get("games")
    if not isinstance(games, list):
        raise InvalidValueError(f"games must be a list, got {brief(games)}")
    for index, game in enumerate(games):
        if not isinstance(game, dict) or not isinstance(game.get("a"), str) or not isinstance(game.get("b"), str):
            raise InvalidValueError(f"games[{index}] must name the models a and b, got {brief(game)}")
        allowed = WINNERS if record["status"] == "ok" else (*WINNERS, None)
        if game.get("winner") not in allowed:
            raise InvalidValueError(f"games[{index}].winner must be A, B or tie, got {brief(game.get('winner'))}")


def game_results(records: list[dict]) -> list[tuple[str, str, float]]:
    """Every judged game as (model, opponent, score of model: 1 win, 0.5 tie, 0 loss); failed records skipped."""
    results = []
    for record in records:
        if record["status"] != "ok":
            continue
        for game in record["games"]:
            score = {"A": 1.0, "B": 0.0, "tie": 0.5}[game["winner"]]
            results.append((game["a"], game["b"], score))
    return results


def win_rates(games: list[tuple[str, str, float]]) -> dict[str, dict[str, float]]:
    """``rates[m][o]``: the share of games ``m`` won against ``o`` (ties count half)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for model, opponent, score in games:
        totals.setdefault((model, opponent), []).append(score)
        totals.setdefault((opponent, model), []).append(1.0 - score)
    rates: dict[str, dict[str, float]] = {}
    for (model, opponent), scores in sorted(totals.items()):
        rates.setdefault(model, {})[opponent] = sum(scores) / len(scores)
    return rates


def bradley_terry(games: list[tuple[str, str, float]], prior_games: float = 1.0, iterations: int = 1000) -> dict[str, float]:
    """Bradley-Terry strengths on the Elo scale (mean 1000), fitted by minorization-maximization.

    Every pair that met also gets ``prior_games`` virtual tied games, which keeps a model that won every game at
    a finite rating.
    """
    models = sorted({m for game in games for m in game[:2]})
    wins = {(a, b): 0.0 for a in models for b in models if a != b}
    played = dict.fromkeys(wins, 0.0)
    for model, opponent, score in games:
        wins[(model, opponent)] += score
        wins[(opponent, model)] += 1.0 - score
        played[(model, opponent)] += 1.0
        played[(opponent, model)] += 1.0
    for pair, count in played.items():
        if count:
            wins[pair] += prior_games / 2
            played[pair] += prior_games
    strength = dict.fromkeys(models, 1.0)
    for _ in range(iterations):
        updated = {}
        for model in models:
            total_wins = sum(wins[(model, o)] for o in models if o != model)
            denominator = sum(played[(model, o)] / (strength[model] + strength[o]) for o in models if o != model)
            updated[model] = total_wins / denominator if denominator else strength[model]
        scale = math.exp(sum(math.log(v) for v in updated.values()) / len(updated))
        strength = {m: v / scale for m, v in updated.items()}
    return {m: 1000.0 + 400.0 * math.log10(v) for m, v in sorted(strength.items(), key=lambda kv: -kv[1])}


def pairwise_summary(records: list[dict]) -> dict:
    """Win rates, Elo-scale Bradley-Terry ratings and game/failure counts of pairwise ``records``."""
    games = game_results(records)
    return {
        "ratings": bradley_terry(games) if games else {},
        "win_rates": win_rates(games),
        "games": len(games),
        "failed": sum(r["status"] != "ok" for r in records),
    }
