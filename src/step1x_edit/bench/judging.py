"""Judge a results directory with VIEScore and append one JSON record a line to a scores file.

For every benchmark sample the judge is asked twice: semantic consistency (source + edit, SC prompt) and
perceptual quality (edit, PQ prompt). Each question is retried with exponential backoff when the call fails
(including a timeout or a response that is not a chat completion), the judge refuses, or the reply holds no valid
answer (unreadable, no score, a score of the wrong type or outside 0-10); after the last attempt the sample is
recorded with ``status: "failed"``, every raw reply and the reason each attempt failed - never a 0 and never a
guess. A sample whose edited image is missing is recorded with ``status: "missing_image"``. Both statuses are
excluded from the means and counted by :mod:`step1x_edit.bench.stats`.

The scores file is resumable: a rerun asks only the samples without a finished record. Samples recorded as
``missing_image`` are looked for again on every run; ``failed`` ones are asked again only with ``retry_failed``. Each record carries the judge id and endpoint, the
prompt hashes and the image preparation, so files judged differently are never silently mixed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from ..chat import backoff_delay
from ..errors import DataFormatError
from ..validate import integer, number
from .dataset import GEditSample
from .judges.base import Judge, JudgeCallError, JudgeRefusal, UnusableReply
from .layout import find_edited_image
from .stats import read_scores
from .viescore import (
    DEFAULT_IMAGE_PREP,
    ImagePrep,
    parse_scores,
    pq_prompt,
    prepare_images,
    prompt_hashes,
    sc_prompt,
    source_column,
)

MAX_ATTEMPTS = 100
MAX_DELAY = 3600


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` calls at most per question (1 to ``MAX_ATTEMPTS``); the wait before retry ``n`` is
    ``initial_delay * 2**n``, capped at ``max_delay``, with up to 50% random jitter (so parallel workers do not retry
    in lockstep). Delays are seconds from 0 to ``MAX_DELAY``."""

    attempts: int = 5
    initial_delay: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self):
        integer("attempts", self.attempts, 1, MAX_ATTEMPTS)
        number("initial_delay", self.initial_delay, 0.0, MAX_DELAY)
        number("max_delay", self.max_delay, 0.0, MAX_DELAY)

    def delay(self, retry: int, retry_after: float = 0.0) -> float:
        return backoff_delay(retry, self.initial_delay, self.max_delay, retry_after=retry_after, jitter=True)


@dataclass(frozen=True)
class JudgingSummary:
    """What one judging run did: ``asked`` samples (by resulting status) and ``skipped`` ones already on file."""

    asked: dict[str, int]
    skipped: int
    scores_path: Path


def ask(
    judge: Judge,
    prompt: str,
    images: list[Image.Image],
    policy: RetryPolicy,
    parse: Callable[[str], Any] = parse_scores,
) -> tuple[Any, list[dict]]:
    """Ask one question with retries; return the parsed answer (``None`` if every attempt failed) and the log of
    attempts, each ``{"reply": str | None, "error": str | None}``. ``parse`` raises
    :class:`~.judges.base.UnusableReply` for a reply without a valid answer."""
    attempts: list[dict] = []
    retry_after = 0.0
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.delay(attempt - 1, retry_after))
        retry_after = 0.0
        try:
            reply = judge.complete(prompt, images)
        except JudgeRefusal as refusal:
            attempts.append({"reply": refusal.reply, "error": str(refusal)})
            continue
        except JudgeCallError as error:
            attempts.append({"reply": None, "error": str(error)})
            retry_after = error.retry_after
            continue
        if not isinstance(reply, str):  # a judge outside this package that broke the interface
            attempts.append({"reply": None, "error": f"the judge returned {type(reply).__name__}, not text"})
            continue
        try:
            answer = parse(reply)
        except UnusableReply as error:
            attempts.append({"reply": reply, "error": str(error)})
            continue
        attempts.append({"reply": reply, "error": None})
        return answer, attempts
    return None, attempts


def judge_sample(
    judge: Judge,
    sample: GEditSample,
    edited_path: Path | None,
    image_prep: ImagePrep = DEFAULT_IMAGE_PREP,
    policy: RetryPolicy | None = None,
) -> dict:
    """The scores-file record of one sample (see the module docstring for its statuses)."""
    policy = policy or RetryPolicy()
    record = {
        "key": sample.key,
        "task_type": sample.task_type,
        "instruction_language": sample.language,
        "intersection_exist": sample.intersection_exist,
        "instruction": sample.instruction,
        "edited_image": None if edited_path is None else str(edited_path),
        "sc_scores": None,
        "pq_scores": None,
        "status": "missing_image",
        "attempts": {"sc": [], "pq": []},
        "judge": dict(judge.info),
        "prompt_sha256": prompt_hashes(),
        "image_prep": image_prep,
        "judged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if edited_path is None:
        return record
    try:
        with Image.open(edited_path) as edited:
            source, edit = prepare_images(edited, sample.source_image(source_column(image_prep)), image_prep)
    except OSError as error:  # includes PIL's UnidentifiedImageError and truncated files
        raise DataFormatError(f"edited image {edited_path} cannot be read ({error}); regenerate or remove it") from error
    sc, record["attempts"]["sc"] = ask(judge, sc_prompt(sample.instruction), [source, edit], policy)
    pq, record["attempts"]["pq"] = ask(judge, pq_prompt(), [edit], policy)
    record.update(sc_scores=sc, pq_scores=pq, status="ok" if sc is not None and pq is not None else "failed")
    return record


def _is_done(record: dict, retry_failed: bool) -> bool:
    status = record.get("status", "ok")
    return status == "ok" or (status == "failed" and not retry_failed)


def _check_same_judge(previous: list[dict], judge: Judge, image_prep: str, path: Path) -> None:
    for record in previous:
        theirs = (record.get("judge", {}).get("model"), record.get("prompt_sha256"), record.get("image_prep"))
        ours = (judge.info["model"], prompt_hashes(), image_prep)
        if "judge" in record and theirs != ours:
            raise DataFormatError(
                f"{path} holds judgements by {theirs[0]} (image prep {theirs[2]}); refusing to add judgements by "
                f"{ours[0]} (image prep {ours[2]}) - write them to another scores file"
            )


def judge_results(
    samples: list[GEditSample],
    results_dir: str | os.PathLike,
    judge: Judge,
    scores_path: str | os.PathLike,
    image_prep: ImagePrep = DEFAULT_IMAGE_PREP,
    policy: RetryPolicy | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> JudgingSummary:
    """Judge the edits under ``results_dir`` (a ``RESULTS/<name>`` directory) for ``samples``, appending records
    to ``scores_path``; samples already judged there are skipped (see the module docstring)."""
    scores_path = Path(scores_path)
    previous = read_scores(scores_path) if scores_path.exists() else []
    _check_same_judge(previous, judge, image_prep, scores_path)
    done = {(r["key"], r["instruction_language"]) for r in previous if _is_done(r, retry_failed)}
    pending = [s for s in samples if (s.key, s.language) not in done]
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    terminate_last_line(scores_path)
    asked: Counter[str] = Counter()
    lock = threading.Lock()

    def run(sample: GEditSample) -> None:
        record = judge_sample(judge, sample, find_edited_image(results_dir, sample), image_prep, policy)
        record["model"] = Path(results_dir).name
        with lock:
            append_record(scores_path, record)
            asked[record["status"]] += 1

    run_concurrently(run, pending, judge.max_concurrency, "judging", progress)
    return JudgingSummary(asked=dict(asked), skipped=len(samples) - len(pending), scores_path=scores_path)


def run_concurrently(function: Callable[[Any], None], items: list, workers: int, desc: str, progress: bool) -> None:
    """Call ``function`` on every item with ``workers`` threads; on any error or Ctrl-C, cancel what has not
    started (records already written stay, so the run resumes from there) and re-raise."""
    from tqdm.auto import tqdm

    stop = threading.Event()

    def guarded(item) -> None:
        if stop.is_set():
            return
        try:
            function(item)
        except BaseException:
            stop.set()  # jobs that have not started yet do nothing
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = [pool.submit(guarded, item) for item in items]
    try:
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` to a JSON-lines file as one line of UTF-8. Text is kept readable (not ``\\u`` escaped),
    except a lone surrogate - from a hostile reply or a file name that is not UTF-8 - which is written as its JSON
    escape instead of failing the write."""
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    with path.open("ab") as handle:
        handle.write(line.encode("utf-8", "backslashreplace"))


def terminate_last_line(path: Path) -> None:
    """Drop a final line cut short by an interrupted run, so new records start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
